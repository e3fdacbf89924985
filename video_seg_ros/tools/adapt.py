"""``video-seg-adapt``: adapt a checkpoint to your own drive without labels (video self-training).

Examples::

    video-seg-adapt --checkpoint espnet_p2_q8.pt bags/my_drive -o runs/adapt/my_drive
    video-seg-adapt --checkpoint espnet_p2_q8.pt bags/two_cameras --topic /front/image_raw \
        -o adapted.pt
    video-seg-adapt --checkpoint espnet_p2_q8.pt frames/ -o runs/adapt/frames --steps 400 \
        --crop 512x256
    video-seg-adapt --checkpoint espnet_p2_q8.pt bags/my_drive -o runs/adapt/my_drive --resume

The input model is the frozen teacher; the student starts from it and trains with ETC's temporal
loss, pixel-wise distillation and cross-entropy on the teacher's confident pixels. The last
``--holdout`` of the drive is never trained on; the report compares TC and agreement with the
teacher there, before and after. See video_seg_ros/adaptation.py and docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

from video_seg_ros.tools.arguments import (
    EXIT_INTERRUPTED,
    add_limit_argument,
    add_output_argument,
    add_quiet_argument,
    command_line,
    fail,
    parse_arguments,
    parse_size,
    positive_int,
)

PROG = "video-seg-adapt"


def build_parser() -> argparse.ArgumentParser:
    from video_seg_ros.labels import LABEL_SETS
    from video_seg_ros.runtime import TORCH_PRECISIONS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a segmentation checkpoint on a drive of your own camera without "
        "labels: the input model is the frozen teacher, the student starts from it and learns "
        "ETC's temporal consistency, distillation and the teacher's confident pseudo-labels. "
        "The last part of the drive is held out and scored before/after (TC as "
        "video-seg-eval measures it, and agreement with the teacher). Writes the adapted "
        "checkpoint (project format), a JSON + Markdown report and a plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", help="a rosbag2 folder (mcap or sqlite3) or a folder of frames")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint to adapt (project format, e.g. from video-seg-import or video-seg-train)",
    )
    add_output_argument(
        parser,
        "output folder (adapted.pt, report.json/.md/.png, work/), or a checkpoint "
        "path ending in .pt (the report and work folder go beside it)",
        required=True,
    )
    parser.add_argument(
        "--topic",
        default=None,
        help="image topic of the bag (sensor_msgs/Image or CompressedImage); needed only "
        "when the bag has several",
    )
    add_limit_argument(parser, "use only the first N frames of the drive")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="resize frames to WxH (default: the checkpoint's input size); the adapted "
        "checkpoint runs at this size",
    )
    parser.add_argument(
        "--crop",
        type=parse_size,
        default=None,
        help="train on random WxH crops (cheaper steps); default: whole frames",
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of the drive held out at its end (contiguous; never trained on)",
    )
    parser.add_argument("--steps", type=positive_int, default=200, help="training steps")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="frame pairs per step")
    parser.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (poly decay)")
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="teacher max-softmax probability from which a pixel becomes a pseudo-label",
    )
    parser.add_argument(
        "--targets",
        choices=("teacher", "fused"),
        default="teacher",
        help="teacher: the input model's per-frame outputs (KL + confident pixels); fused: "
        "cross-entropy on the confident pixels of its temporally fused labels over the drive "
        "instead (the KL stays unless --distill-weight 0)",
    )
    parser.add_argument(
        "--temporal-weight", type=float, default=0.4, help="weight of ETC's temporal loss"
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=1.0,
        help="weight of the pixel-wise KL to the teacher",
    )
    parser.add_argument(
        "--pseudo-label-weight",
        type=float,
        default=1.0,
        help="weight of the cross-entropy on the teacher's confident pixels (per-frame or fused)",
    )
    # Measured on aachen_000002 (docs/training.md): with batch statistics of 2 crops adapting, the
    # held-out mIoU fell 1.2 points and TC 4.8; with them fixed, +0.1 mIoU and -0.6 TC.
    parser.add_argument(
        "--adapt-bn",
        dest="freeze_bn",
        action="store_false",
        help="let BatchNorm statistics adapt to the camera (default: fixed, which "
        "kept accuracy on the measured drive; small batches make them noisy)",
    )
    parser.add_argument(
        "--freeze-bn",
        dest="freeze_bn",
        action="store_true",
        help="keep BatchNorm statistics fixed (the default; kept for old scripts)",
    )
    parser.add_argument(
        "--label-set",
        choices=sorted(LABEL_SETS),
        default=None,
        help="refuse a checkpoint of another label set",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (sampling, crops, flips)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--precision",
        choices=TORCH_PRECISIONS,
        default="auto",
        help="training and scoring precision (auto: fp16 on CUDA, bf16 on a CPU with "
        "native bf16, else fp32)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the same output (same drive and settings)",
    )
    add_quiet_argument(parser, "no progress bars or per-epoch lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    command = command_line(PROG, argv)
    from video_seg_ros.adaptation import AdaptationSettings, adapt
    from video_seg_ros.adaptation_report import format_markdown
    from video_seg_ros.bags import BagError
    from video_seg_ros.checkpoint import CheckpointError
    from video_seg_ros.engine import DeviceError

    settings = AdaptationSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        confidence=args.confidence,
        holdout=args.holdout,
        limit=args.limit,
        size=args.size,
        crop=args.crop,
        topic=args.topic,
        label_set=args.label_set,
        temporal_weight=args.temporal_weight,
        distill_weight=args.distill_weight,
        pseudo_label_weight=args.pseudo_label_weight,
        freeze_bn=args.freeze_bn,
        targets=args.targets,
    )
    # --quiet: the trainer's per-epoch lines go nowhere (errors still reach stderr).
    quiet = contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext()
    try:
        with quiet:
            report = adapt(
                args.checkpoint,
                args.source,
                args.output,
                settings,
                resume=args.resume,
                progress=not args.quiet,
                command=command,
            )
    except (BagError, CheckpointError, DeviceError, FileNotFoundError, ValueError) as error:
        # ValueError covers AdaptationError, ConfigError, PrecisionError and DatasetError.
        return fail(PROG, error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_markdown(report), end="")
    print(f"adapted checkpoint: {report['output_checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
