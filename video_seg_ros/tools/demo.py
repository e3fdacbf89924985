"""video-seg-demo: replay a video sequence through video_seg_node as ROS runs it, and score it.

The pipeline is the real one, in separate processes talking over ROS 2 topics::

    frames -> bag (video-seg-make-bag) -> video-seg-play -> video_seg_node -> video-seg-record
                                                          -> scoring (this process, demo_report.py)

The processes are started by ``demo_pipeline.run_pipeline`` (``launch/demo.launch.py`` starts
the same three with ``ros2 launch``).

By default the sample sequence is generated on the fly from a fixed seed (the synthetic street of
``video_seg_ros.synthetic.demo_sequence``, with exact labels) and segmented by the embedded default
model, so it runs on a fresh machine with nothing but the repository. Real data::

    video-seg-demo --checkpoint espnet_city.pt --images ../shared/data/cityscapes_sequences \\
        --labels ../shared/data/cityscapes_sequences --label-format cityscapes-labelids
    video-seg-demo --checkpoint espnet_city.pt --bag bags/cityscapes --replay-hz 5

It prints a summary (frames, lost frames, fps, latency, TC, mIoU) and writes into ``-o/--output``:
``summary.json``, ``summary.md``, ``overlay.mp4`` (labels over the frames), ``tc_over_time.png``
(per-frame temporal consistency), the input and recorded bags and the processes' logs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from video_seg_ros.bags import BagError, bag_info, default_image_topic, frame_keys, write_bag
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_path
from video_seg_ros.evaluation import EvaluationOptions
from video_seg_ros.frames import index_label_files, read_label
from video_seg_ros.labels import LABEL_FORMATS
from video_seg_ros.processes import install_stop_handlers, restore_handlers
from video_seg_ros.runtime import EVALUATION_PRECISION, cpu_description
from video_seg_ros.tools import arguments as cli
from video_seg_ros.tools.arguments import EXIT_INTERRUPTED, fail, parse_arguments, usage_error
from video_seg_ros.tools.demo_pipeline import NODE_NAME, DemoError, DemoInput, run_pipeline
from video_seg_ros.tools.demo_pipeline import replay_parameters, write_node_parameters
from video_seg_ros.tools.demo_report import score, summary_lines, write_markdown

# Names other modules and tests import from here.
__all__ = ["NODE_NAME", "DemoError", "DemoInput", "load_labels", "main", "prepare_input", "score"]

PROG = "video-seg-demo"
SAMPLE_FRAMES = 120  # frames of the synthetic sample (7 s at 17 Hz)
DEFAULT_SAMPLE_SIZE = (512, 256)


# ---- input --------------------------------------------------------------------------------------
def prepare_input(args: argparse.Namespace, out_dir: Path, progress: bool = True) -> DemoInput:
    """The bag to replay, with the labels of its frames: ``--bag`` as it is, ``--images`` or the
    synthetic sample written into ``out_dir/input_bag``; ``--labels`` matched by frame key.

    The one place that reads frames (video_seg_ros.streams).
    """
    from video_seg_ros.streams import SyntheticStream, TappedStream, open_stream
    from video_seg_ros.synthetic import DEMO_SEED

    bag = out_dir / "input_bag"
    if args.bag is not None:
        demo_input = DemoInput(args.bag, {}, f"bag {args.bag}")
    elif args.images is not None:
        stream = open_stream(args.images, limit=args.limit or None)
        print(f"[demo] writing {stream.description} into {bag}", flush=True)
        write_bag(stream, bag, rate=args.rate, resize=args.size, overwrite=True, progress=progress)
        demo_input = DemoInput(bag, {}, stream.description)
    else:
        frames, size = args.limit or SAMPLE_FRAMES, args.size or DEFAULT_SAMPLE_SIZE
        sample = SyntheticStream(None, frames, size, args.rate)
        labels = {}
        print(
            f"[demo] generating the sample sequence (seed {DEMO_SEED}, {frames} frames "
            f"{size[0]}x{size[1]}) into {bag}",
            flush=True,
        )
        # The labels are kept as the frames pass into the bag: rendering twice would double the
        # sample's start-up time.
        tapped = TappedStream(sample, lambda frame: labels.__setitem__(frame.key, frame.label))
        write_bag(tapped, bag, rate=args.rate, overwrite=True, progress=progress)
        demo_input = DemoInput(bag, labels, sample.description)
    if args.labels is not None:
        keys = [f["key"] for f in frame_keys(demo_input.bag)]
        if not keys:
            raise DemoError(
                f"{demo_input.bag} does not record which file each frame came from "
                "(make it with video-seg-make-bag), so its frames cannot be matched "
                "with label files"
            )
        topic = default_image_topic(demo_input.bag)
        demo_input.labels = load_labels(keys, args.labels, args.label_format)
        count = bag_info(demo_input.bag)["topics"].get(topic, {}).get("count")
        labelled = len(demo_input.labels)
        print(f"[demo] {labelled} of {len(keys)} frames have labels ({count} in the bag)")
    return demo_input


def load_labels(keys: list[str], labels_root: Path, label_format: str) -> dict:
    """Label maps for the frames that have one, at their own resolution (the evaluator compares
    predictions at the label's size, as video-seg-eval does)."""
    index = index_label_files(labels_root, label_format)
    return {key: read_label(index[key], label_format) for key in keys if key in index}


# ---- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        default="default",
        help="checkpoint file for the node ('default' = the embedded model)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--images",
        type=Path,
        default=None,
        help="replay this folder of frames instead of the synthetic sample "
        "(Cityscapes sequence layout or any sorted image folder)",
    )
    source.add_argument(
        "--bag",
        type=Path,
        default=None,
        help="replay this rosbag2 (one image topic; made by video-seg-make-bag for "
        "frame keys that --labels can match)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="folder of label images for --images/--bag frames (matched by file name)",
    )
    parser.add_argument(
        "--label-format",
        choices=LABEL_FORMATS,
        default="trainids",
        help="pixel meaning of --labels images (default trainids)",
    )
    cli.add_limit_argument(
        parser,
        f"at most N frames: the synthetic sample's length (default {SAMPLE_FRAMES}), "
        "or the first N frames of --images (default all)",
        old=("--frames",),
    )
    parser.add_argument(
        "--size",
        type=cli.parse_size,
        default=None,
        metavar="WxH",
        help="frame size: of the synthetic sample (default 512x256), or --images "
        "frames are resized to it (default: as they are)",
    )
    cli.add_deprecated_alias(
        parser, "--resize", "--size", "size", type=cli.parse_size, metavar="WxH"
    )
    parser.add_argument(
        "--rate",
        type=cli.positive_float,
        default=17.0,
        help="recording rate of the frames in Hz (stamps in the bag; default 17, Cityscapes)",
    )
    parser.add_argument(
        "--replay-hz",
        type=cli.positive_float,
        default=5.0,
        help="frames per second the player sends to the node (default 5)",
    )
    cli.add_engine_arguments(parser, "node", precision=EVALUATION_PRECISION)
    cli.add_temporal_arguments(parser)
    cli.add_output_argument(
        parser,
        "output folder (default outputs/demo; replaced files are overwritten)",
        default=Path("outputs/demo"),
    )
    parser.add_argument(
        "--video-width",
        type=cli.non_negative_int,
        default=1024,
        help="frames wider than this are downscaled in overlay.mp4 (default 1024)",
    )
    parser.add_argument(
        "--tc-width",
        type=cli.non_negative_int,
        default=1024,
        help="optical flow for TC is computed at most this wide; 0 = full "
        "resolution (default 1024, as video-seg-eval's --flow-width)",
    )
    parser.add_argument(
        "--max-frame-gap",
        type=int,
        default=1,
        help="largest frame-number step that still counts as consecutive for TC "
        "(default 1, as video-seg-eval)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=cli.positive_float,
        default=120.0,
        help="seconds to wait for the node to load its model (default 120)",
    )
    parser.add_argument(
        "--domain-id",
        type=int,
        default=None,
        help="ROS_DOMAIN_ID of the pipeline (default: random in 100..199, so it does "
        "not disturb other ROS processes)",
    )
    cli.add_quiet_argument(parser, "no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM stop the child processes before exiting (see run_pipeline's finally).
    previous = install_stop_handlers()
    try:
        return _run(argv)
    finally:
        restore_handlers(previous)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.labels is not None and args.images is None and args.bag is None:
        return usage_error(
            parser, "--labels needs --images or --bag (the synthetic sample has its own labels)"
        )
    if args.max_frame_gap < 1:
        return usage_error(parser, "--max-frame-gap must be at least 1")
    temporal = cli.temporal_from_arguments(parser, args)
    # The node's parameter names for the same settings (video_seg_ros/ros/parameters.py).
    temporal_parameters = {
        "temporal_mode": temporal.mode,
        "fusion_weight": temporal.fusion_weight,
        "keyframe_max_interval": temporal.max_interval,
    }
    started = time.monotonic()
    out_dir = args.output
    progress = not args.quiet
    try:
        options = EvaluationOptions(
            max_frame_gap=args.max_frame_gap, flow_width=args.tc_width or None
        )
        checkpoint_path = str(resolve_checkpoint_path(args.checkpoint))
        checkpoint = load_checkpoint(checkpoint_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        demo_input = prepare_input(args, out_dir, progress)
        frames = bag_info(demo_input.bag)["message_count"]
        params = write_node_parameters(
            out_dir,
            replay_parameters(
                checkpoint_path,
                args.device,
                args.upsample,
                frames,
                args.backend,
                args.precision,
                temporal=temporal_parameters,
            ),
        )
        domain_id = (
            args.domain_id
            if args.domain_id is not None
            else random.SystemRandom().randint(100, 199)
        )
        run = run_pipeline(
            demo_input, out_dir, params, args.replay_hz, domain_id, args.startup_timeout, progress
        )
        results = score(demo_input, run, out_dir, checkpoint, args.video_width, options, progress)
    except (DemoError, BagError, CheckpointError, FileNotFoundError, ValueError) as error:
        return fail(PROG, error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = {
        "command": cli.command_line(PROG, argv),
        "input": demo_input.description,
        "checkpoint": checkpoint_path,
        "model": checkpoint.model_name,
        "device": results["node_device"] or args.device,
        "backend": results["node_backend"],
        "precision": results["node_precision"],
        "precision_reason": results["node_precision_reason"],
        "cpu": cpu_description(),
        "replay_hz": args.replay_hz,
        "temporal": temporal_parameters,
        "domain_id": domain_id,
        "exit_codes": run["exit_codes"],
        "output": str(out_dir),
        "results": results,
        "wall_s": time.monotonic() - started,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    write_markdown(summary, out_dir / "summary.md")
    print("\n".join(["", "== video_seg_ros demo ==", *summary_lines(summary)]), flush=True)
    return 0 if results["frames_segmented"] else 1


if __name__ == "__main__":
    sys.exit(main())
