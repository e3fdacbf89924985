"""video-seg-demo: replay a video sequence through video_seg_node as ROS runs it, and score the result.

The pipeline is the real one, in separate processes talking over ROS 2 topics::

    frames -> bag (video-seg-make-bag) -> video-seg-play -> video_seg_node -> video-seg-record
                                                                             -> scoring (this process)

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
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from video_seg_ros.bags import (BagError, bag_info, default_image_topic, frame_keys, read_images,
                                read_messages, topic_rate_hz, write_bag)
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_path
from video_seg_ros.config_files import config_file
from video_seg_ros.evaluation import EvaluationOptions, bag_frames, evaluate_recording, percent
from video_seg_ros.frames import index_label_files, read_label
from video_seg_ros.labels import LABEL_FORMATS, overlay, palette_lookup_table
from video_seg_ros.processes import LoggedProcess, install_stop_handlers, restore_handlers
from video_seg_ros.runtime import EVALUATION_PRECISION, cpu_description
from video_seg_ros.ros.dds import ros_process_environment
from video_seg_ros.sources import FrameSource, SourceFrame, open_source
from video_seg_ros.stats import percentile
from video_seg_ros.tools.arguments import (EXIT_INTERRUPTED, add_deprecated_alias, add_engine_arguments,
                                           add_limit_argument, add_output_argument, add_quiet_argument,
                                           command_line, fail, non_negative_int, parse_arguments, usage_error,
                                           parse_size, positive_float)
from video_seg_ros.tools.arguments import add_temporal_arguments, temporal_from_arguments

NODE_NAME = "video_seg_node"
MAX_NODE_QUEUE = 100  # the node's frame_queue_size range
MAX_SECONDS_PER_FRAME = 15.0  # slowest node the demo waits for
SAMPLE_FRAMES = 120  # frames of the synthetic sample (7 s at 17 Hz)


class DemoError(RuntimeError):
    """The demo cannot run or a process failed; the message says what to look at."""


# ---- inputs ---------------------------------------------------------------------------------------
@dataclass
class DemoInput:
    bag: Path
    labels: dict[str, np.ndarray]   # frame key -> (H, W) train ids (may be empty)
    description: str


def synthetic_input(out_dir: Path, frames: int, size: tuple[int, int], rate: float,
                    progress: bool = True) -> DemoInput:
    from video_seg_ros.synthetic import DEMO_SEED, demo_sequence, frame_stem
    from video_seg_ros.synthetic.generator import sequence_name

    labels: dict[str, np.ndarray] = {}

    def generate():
        for frame in demo_sequence(num_frames=frames, width=size[0], height=size[1], fps=rate):
            key = frame_stem(DEMO_SEED, frame.index)
            labels[key] = frame.labels
            yield SourceFrame(frame.rgb, sequence_name(DEMO_SEED), key)

    source = FrameSource(generate(), frames, rate, "synthetic demo sequence")
    bag = out_dir / "input_bag"
    print(f"[demo] generating the sample sequence (seed {DEMO_SEED}, {frames} frames "
          f"{size[0]}x{size[1]}) into {bag}", flush=True)
    write_bag(source, bag, rate=rate, overwrite=True, progress=progress)
    return DemoInput(bag, labels, f"synthetic sequence (seed {DEMO_SEED}), {frames} frames {size[0]}x{size[1]}")


def folder_input(out_dir: Path, images: Path, rate: float, limit: int | None,
                 resize: tuple[int, int] | None, progress: bool = True) -> DemoInput:
    bag = out_dir / "input_bag"
    source = open_source(images, None, limit)
    print(f"[demo] writing {source.description} into {bag}", flush=True)
    write_bag(source, bag, rate=rate, resize=resize, overwrite=True, progress=progress)
    return DemoInput(bag, {}, source.description)


def load_labels(keys: list[str], labels_root: Path, label_format: str) -> dict[str, np.ndarray]:
    """Label maps for the frames that have one, at their own resolution (the evaluator compares
    predictions at the label's size, as video-seg-eval does)."""
    index = index_label_files(labels_root, label_format)
    return {key: read_label(index[key], label_format) for key in keys if key in index}


# ---- processes ------------------------------------------------------------------------------------
def node_parameters(out_dir: Path, checkpoint: str, device: str, upsample: str, frames: int,
                    backend: str = "auto", precision: str = "auto",
                    temporal: dict | None = None) -> Path:
    """config/video_seg.yaml with the replay settings: reliable input, a queue that drops nothing.
    ``temporal``: node parameters of the temporal fusion (``temporal_mode``, ...) to set as well.

    The node's queue holds at most 100 frames; a longer bag loses none as long as the node keeps
    up with ``--replay-hz`` on average.
    """
    params = yaml.safe_load(config_file("video_seg.yaml").read_text())
    values = params["/**"]["ros__parameters"]
    values.update({"checkpoint": checkpoint, "device": device, "upsample": upsample,
                   "backend": backend, "precision": precision,
                   "input_qos": "reliable", "frame_queue_size": min(max(frames, 1), MAX_NODE_QUEUE),
                   "publish_color": False, "publish_overlay": False, "consistency_metric": True,
                   "consistency_stride": 1})
    values.update(temporal or {})
    path = out_dir / "node_params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_pipeline(demo_input: DemoInput, out_dir: Path, params: Path, replay_hz: float,
                 domain_id: int, startup_timeout: float, progress: bool = True) -> dict:
    """Start recorder, node and player; wait for the recording; stop everything; return the logs."""
    info = bag_info(demo_input.bag)
    topic = default_image_topic(demo_input.bag)
    frames = info["topics"][topic]["count"]
    bag_hz = topic_rate_hz(demo_input.bag, topic) or replay_hz
    rate_factor = replay_hz / bag_hz
    env = ros_process_environment(domain_id)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    recorded = out_dir / "recorded_bag"
    ready = logs / "recorder.ready"
    progress_file = logs / "recorder.progress"  # `progress` stays the caller's show-a-bar switch
    for marker in (ready, progress_file):
        marker.unlink(missing_ok=True)
    playback_s = info["duration_s"] / rate_factor
    python = sys.executable
    image_topic = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    node_args = ["--ros-args", "--params-file", str(params), "-r", f"image:={image_topic}"]
    if topic.endswith("/compressed"):
        node_args += ["-p", "use_compressed:=true"]
    processes: list[LoggedProcess] = []
    try:
        recorder = LoggedProcess([
            python, "-m", "video_seg_ros.tools.record", "--node", NODE_NAME, "--consistency",
            "--topic", "/diagnostics", "--output", str(recorded), "--overwrite", "--limit", str(frames),
            # Generous: on a busy CPU frames queue in the node; the idle timeout ends a stalled run.
            "--wait", str(startup_timeout),
            "--timeout", str(startup_timeout + playback_s + 60 + frames * MAX_SECONDS_PER_FRAME),
            "--idle-timeout", str(max(30.0, 20.0 / replay_hz)), "--ready-file", str(ready),
            "--progress-file", str(progress_file),
            "--report", str(logs / "recorder.json")], logs / "recorder.log", env)
        processes.append(recorder)
        node = LoggedProcess([python, "-m", "video_seg_ros.ros.node", *node_args], logs / "node.log", env)
        processes.append(node)
        print(f"[demo] starting {NODE_NAME} (ROS_DOMAIN_ID={domain_id}) and the recorder", flush=True)
        deadline = time.monotonic() + startup_timeout
        while not ready.exists():
            for process in (node, recorder):
                if not process.alive():
                    raise DemoError(f"{process.log_path.stem} exited with code {process.process.returncode} "
                                    f"during start-up; its log ({process.log_path}):\n{process.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"the node's outputs did not appear within {startup_timeout:g} s; "
                                f"node log:\n{node.tail()}")
            time.sleep(0.1)
        time.sleep(0.5)  # the node's publishers see the recorder's subscriptions too
        player = LoggedProcess([
            python, "-m", "video_seg_ros.tools.play_bag", str(demo_input.bag), "--topic", topic,
            "--speed", f"{rate_factor:.6f}", "--wait-for-subscribers", "30",
            "--log", str(logs / "player.json")], logs / "player.log", env)
        processes.append(player)
        print(f"[demo] replaying {frames} frames at {replay_hz:g} Hz ({playback_s:.0f} s)", flush=True)
        with tqdm(total=frames, unit="frame", desc="segmented", disable=not progress) as bar:
            # The recorder stops itself (count, idle or total timeout).
            while recorder.alive() and node.alive():
                bar.n = _read_count(progress_file)
                bar.refresh()
                time.sleep(0.25)
            bar.n = _read_count(progress_file)
            bar.refresh()
        if not node.alive():
            raise DemoError(f"{NODE_NAME} exited with code {node.process.returncode} during the replay; "
                            f"its log ({node.log_path}):\n{node.tail()}")
        player_code = player.wait(30)
        recorder_code = recorder.wait(30)
        node_code = node.stop()
        codes = {"player": player_code, "node": node_code, "recorder": recorder_code}
    finally:
        for process in processes:
            process.stop(signal.SIGTERM, timeout=5)
    for name, code in codes.items():
        if code != 0:
            raise DemoError(f"{name} exited with code {code}; see {logs / (name + '.log')}")
    return {"exit_codes": codes, "player": json.loads((logs / "player.json").read_text()),
            "recorder": json.loads((logs / "recorder.json").read_text()), "recorded_bag": recorded,
            "topic": topic, "rate_factor": rate_factor, "bag_hz": bag_hz}


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


# ---- scoring --------------------------------------------------------------------------------------
def last_diagnostics(recorded: Path) -> dict[str, str]:
    """Key/values of the node's last segmentation status on /diagnostics."""
    values: dict[str, str] = {}
    try:
        for message in read_messages(recorded, ["/diagnostics"]):
            for status in message.decode().status:
                if "segmentation" in status.name:
                    values = {kv.key: kv.value for kv in status.values}
    except BagError:
        pass
    return values


def score(demo_input: DemoInput, run: dict, out_dir: Path, checkpoint, video_width: int,
          options: EvaluationOptions, progress: bool = True) -> dict:
    """Latency, losses, mIoU and TC from the recorded labels; writes overlay.mp4 and the TC plot.

    Accuracy and TC come from :func:`video_seg_ros.evaluation.evaluate_recording`, the evaluator
    video-seg-eval and training use, so the figures are comparable with theirs.
    """
    recorded = run["recorded_bag"]
    publish_by_stamp = {m["stamp_ns"]: m["publish_ns"] for m in run["player"]["messages"]}
    labels_topic = f"/{NODE_NAME}/labels"
    predictions, receive_ns = {}, {}
    for image in read_images(recorded, labels_topic):
        predictions[image.stamp_ns] = image.pixels
        receive_ns[image.stamp_ns] = image.timestamp_ns
    latencies = [(rx - publish_by_stamp[s]) / 1e6 for s, rx in receive_ns.items() if s in publish_by_stamp]
    published = len(publish_by_stamp)
    lost = len(set(publish_by_stamp) - set(predictions))
    receive = sorted(receive_ns.values())
    output_fps = (len(receive) - 1) / ((receive[-1] - receive[0]) / 1e9) if len(receive) > 1 else None

    palette = palette_lookup_table(checkpoint.palette)
    per_frame: list[dict] = []
    writer, video_path = None, out_dir / "overlay.mp4"
    fps = run["bag_hz"]
    bar = tqdm(total=published, unit="frame", desc="score", disable=not progress)

    def on_frame(frame, prediction, row):
        nonlocal writer
        entry = {"index": len(per_frame), "key": frame.key, "sequence": frame.sequence,
                 "received": prediction is not None, "tc": row.get("tc_from_previous"),
                 "pixel_accuracy": row.get("pixel_accuracy")}
        per_frame.append(entry)
        if prediction is not None:
            writer = _write_video_frame(writer, video_path, overlay(frame.rgb, prediction, palette), entry,
                                        fps, video_width)
        bar.update(1)

    try:
        # One frame in memory at a time.
        evaluator = evaluate_recording(bag_frames(demo_input.bag, run["topic"], demo_input.labels), predictions,
                                       list(checkpoint.class_names), options, on_frame)
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    plot_path = _plot_tc(per_frame, evaluator.tc, out_dir / "tc_over_time.png")
    diagnostics = last_diagnostics(recorded)
    figures = evaluator.summary()
    labelled = figures["labelled_frames"]
    return {
        "frames_published": published, "frames_segmented": len(predictions), "frames_lost": lost,
        "output_fps": output_fps,
        "latency_ms": {"mean": float(np.mean(latencies)) if latencies else None,
                       "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "max": max(latencies) if latencies else None},
        "node_model_ms_p50": _float(diagnostics.get("model_p50_ms")),
        "node_device": diagnostics.get("device"),
        **{f"node_{key}": diagnostics.get(key) or None for key in (
            "backend", "precision", "precision_reason", "precision_fallback", "backend_fallback")},
        "node_dropped": _int(diagnostics.get("dropped")), "node_rejected": _int(diagnostics.get("rejected")),
        "tc": figures["tc"], "tc_pairs": figures["tc_pairs"], "tc_settings": figures["tc_settings"],
        "miou": figures["miou"], "pixel_accuracy": figures["pixel_accuracy"],
        "labelled_frames": labelled,
        "per_class_iou": figures["per_class_iou"] if labelled else None,
        "per_frame": per_frame,
        "files": {"video": str(video_path) if writer is not None else None, "tc_plot": str(plot_path)},
    }


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _write_video_frame(writer, path: Path, rgb: np.ndarray, row: dict, fps: float, max_width: int):
    if rgb.shape[1] > max_width:
        rgb = cv2.resize(rgb, (max_width, round(rgb.shape[0] * max_width / rgb.shape[1])),
                         interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    text = f"frame {row['index']}  {row['key']}"
    if row["tc"] is not None:
        text += f"   TC {row['tc']:.3f}"
    scale = max(0.4, bgr.shape[1] / 1400)
    bar_height = int(28 * scale / 0.5)
    bgr[:bar_height] = (bgr[:bar_height] * 0.35).astype(np.uint8)  # dark band keeps the text legible
    cv2.putText(bgr, text, (8, int(bar_height * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    if writer is None:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0]))
        if not writer.isOpened():
            raise DemoError(f"OpenCV cannot write {path} (no mp4v encoder in this OpenCV build)")
    writer.write(bgr)
    return writer


def _plot_tc(per_frame: list[dict], tc: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 3.2), dpi=110)
    index = [r["index"] for r in per_frame if r["tc"] is not None]
    values = [r["tc"] for r in per_frame if r["tc"] is not None]
    axis.plot(index, values, marker=".", linewidth=1, label="TC of frame t-1 -> t")
    if tc is not None:
        axis.axhline(tc, color="tab:red", linestyle="--", linewidth=1,
                     label=f"all pairs, dataset-level IoU: {tc:.3f}")
    for i in range(1, len(per_frame)):
        if per_frame[i]["sequence"] != per_frame[i - 1]["sequence"]:
            axis.axvline(i - 0.5, color="grey", linewidth=0.8)
    lost = [r["index"] for r in per_frame if not r["received"]]
    if lost:
        axis.plot(lost, [0.0] * len(lost), "x", color="black", label="lost frame")
    axis.set_xlabel("frame")
    axis.set_ylabel("TC (mIoU vs. warped t+1)")
    axis.set_ylim(0.0, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("Per-frame temporal consistency of the node's labels (DIS flow)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# ---- reports --------------------------------------------------------------------------------------
def _fmt(value, digits=3, unit=""):
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def summary_lines(summary: dict) -> list[str]:
    s = summary["results"]
    lat = s["latency_ms"]
    return [
        f"input       {summary['input']}",
        f"model       {summary['model']} ({summary['checkpoint']}) on {summary['device']}",
        f"runs        backend {summary.get('backend')}, precision {summary.get('precision')} "
        f"({summary.get('precision_reason')}); CPU {summary.get('cpu')}",
        f"replay      {summary['replay_hz']:g} Hz through {NODE_NAME} "
        "(bag -> video-seg-play -> node -> video-seg-record)",
        f"frames      {s['frames_segmented']}/{s['frames_published']} segmented, {s['frames_lost']} lost",
        f"fps         output {_fmt(s['output_fps'], 2)} fps (replayed at {summary['replay_hz']:g} Hz); "
        f"model {_fmt(s['node_model_ms_p50'], 1, ' ms')} p50 per frame in the node",
        f"latency     publish -> labels received: p50 {_fmt(lat['p50'], 1, ' ms')}, "
        f"p95 {_fmt(lat['p95'], 1, ' ms')}, max {_fmt(lat['max'], 1, ' ms')}",
        f"TC          {percent(s['tc'])} over {s['tc_pairs']} consecutive pairs",
        f"mIoU        {percent(s['miou'])} (pixel accuracy {percent(s['pixel_accuracy'])}) over "
        f"{s['labelled_frames']} labelled frames",
        f"outputs     {summary['output']}: summary.json, summary.md, overlay.mp4, tc_over_time.png",
        f"took        {summary['wall_s']:.0f} s",
    ]


def write_markdown(summary: dict, path: Path) -> None:
    s = summary["results"]
    rows = "\n".join(f"| {name} | {percent(value)} |" for name, value in (s["per_class_iou"] or {}).items())
    text = ["# video_seg_ros demo", "", "```", *summary_lines(summary), "```", "",
            f"Command: `{summary['command']}`", "", "![TC over time](tc_over_time.png)", ""]
    if rows:
        text += ["| class | IoU |", "|---|---|", rows, ""]
    path.write_text("\n".join(text))


# ---- command line ---------------------------------------------------------------------------------
PROG = "video-seg-demo"
DEFAULT_SAMPLE_SIZE = (512, 256)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint file for the node ('default' = the embedded model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, default=None,
                        help="replay this folder of frames instead of the synthetic sample "
                             "(Cityscapes sequence layout or any sorted image folder)")
    source.add_argument("--bag", type=Path, default=None,
                        help="replay this rosbag2 (one image topic; made by video-seg-make-bag for "
                             "frame keys that --labels can match)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="folder of label images for --images/--bag frames (matched by file name)")
    parser.add_argument("--label-format", choices=LABEL_FORMATS, default="trainids",
                        help="pixel meaning of --labels images (default trainids)")
    add_limit_argument(parser, f"at most N frames: the synthetic sample's length (default {SAMPLE_FRAMES}), "
                               "or the first N frames of --images (default all)", old=("--frames",))
    parser.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                        help="frame size: of the synthetic sample (default 512x256), or --images "
                             "frames are resized to it (default: as they are)")
    add_deprecated_alias(parser, "--resize", "--size", "size", type=parse_size, metavar="WxH")
    parser.add_argument("--rate", type=positive_float, default=17.0,
                        help="recording rate of the frames in Hz (stamps in the bag; default 17, "
                             "Cityscapes)")
    parser.add_argument("--replay-hz", type=positive_float, default=5.0,
                        help="frames per second the player sends to the node (default 5)")
    add_engine_arguments(parser, "node", precision=EVALUATION_PRECISION)
    add_temporal_arguments(parser)
    add_output_argument(parser, "output folder (default outputs/demo; replaced files are overwritten)",
                        default=Path("outputs/demo"))
    parser.add_argument("--video-width", type=non_negative_int, default=1024,
                        help="frames wider than this are downscaled in overlay.mp4 (default 1024)")
    parser.add_argument("--tc-width", type=non_negative_int, default=1024,
                        help="optical flow for TC is computed at most this wide; 0 = full "
                             "resolution (default 1024, as video-seg-eval's --flow-width)")
    parser.add_argument("--max-frame-gap", type=int, default=1,
                        help="largest frame-number step that still counts as consecutive for TC "
                             "(default 1, as video-seg-eval)")
    parser.add_argument("--startup-timeout", type=positive_float, default=120.0,
                        help="seconds to wait for the node to load its model (default 120)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of the pipeline (default: random in 100..199, so it does "
                             "not disturb other ROS processes)")
    add_quiet_argument(parser, "no progress bars")
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
        return usage_error(parser, "--labels needs --images or --bag (the synthetic sample has its own labels)")
    if args.max_frame_gap < 1:
        return usage_error(parser, "--max-frame-gap must be at least 1")
    temporal = temporal_from_arguments(parser, args)
    # The node's parameter names for the same settings (video_seg_ros/ros/parameters.py).
    temporal_parameters = {"temporal_mode": temporal.mode, "fusion_weight": temporal.fusion_weight,
                           "keyframe_max_interval": temporal.max_interval}
    started = time.monotonic()
    out_dir = args.output
    progress = not args.quiet
    try:
        options = EvaluationOptions(max_frame_gap=args.max_frame_gap, flow_width=args.tc_width or None)
        checkpoint_path = str(resolve_checkpoint_path(args.checkpoint))
        checkpoint = load_checkpoint(checkpoint_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.bag is not None:
            demo_input = DemoInput(args.bag, {}, f"bag {args.bag}")
        elif args.images is not None:
            demo_input = folder_input(out_dir, args.images, args.rate, args.limit, args.size, progress)
        else:
            demo_input = synthetic_input(out_dir, args.limit or SAMPLE_FRAMES, args.size or DEFAULT_SAMPLE_SIZE,
                                         args.rate, progress)
        info = bag_info(demo_input.bag)
        if args.labels is not None:
            keys = [f["key"] for f in frame_keys(demo_input.bag)]
            if not keys:
                raise DemoError(f"{demo_input.bag} does not record which file each frame came from "
                                "(make it with video-seg-make-bag), so its frames cannot be matched "
                                "with label files")
            topic = default_image_topic(demo_input.bag)
            demo_input.labels = load_labels(keys, args.labels, args.label_format)
            print(f"[demo] {len(demo_input.labels)} of {len(keys)} frames have labels "
                  f"({info['topics'].get(topic, {}).get('count')} in the bag)")
        frames = info["message_count"]
        params = node_parameters(out_dir, checkpoint_path, args.device, args.upsample, frames,
                                 args.backend, args.precision, temporal=temporal_parameters)
        domain_id = args.domain_id if args.domain_id is not None else random.SystemRandom().randint(100, 199)
        run = run_pipeline(demo_input, out_dir, params, args.replay_hz, domain_id, args.startup_timeout,
                           progress)
        results = score(demo_input, run, out_dir, checkpoint, args.video_width, options, progress)
    except (DemoError, BagError, CheckpointError, FileNotFoundError, ValueError) as error:
        return fail(PROG, error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = {
        "command": command_line(PROG, argv),
        "input": demo_input.description, "checkpoint": checkpoint_path, "model": checkpoint.model_name,
        "device": results["node_device"] or args.device, "backend": results["node_backend"],
        "precision": results["node_precision"], "precision_reason": results["node_precision_reason"],
        "cpu": cpu_description(), "replay_hz": args.replay_hz,
        "temporal": temporal_parameters,
        "domain_id": domain_id,
        "exit_codes": run["exit_codes"], "output": str(out_dir), "results": results,
        "wall_s": time.monotonic() - started,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    write_markdown(summary, out_dir / "summary.md")
    print("\n".join(["", "== video_seg_ros demo ==", *summary_lines(summary)]), flush=True)
    return 0 if results["frames_segmented"] else 1


if __name__ == "__main__":
    sys.exit(main())
