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

It prints a summary (frames, lost frames, fps, latency, TC, mIoU) and writes into ``--output``:
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
                                read_messages)
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_path
from video_seg_ros.engine import UPSAMPLE_MODES
from video_seg_ros.frames import index_label_files, read_label
from video_seg_ros.labels import LABEL_FORMATS, overlay, palette_lookup_table
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency
from video_seg_ros.processes import LoggedProcess, install_stop_handlers, restore_handlers
from video_seg_ros.ros.dds import config_candidates, config_path, ros_process_environment
from video_seg_ros.ros.pipeline import percentile
from video_seg_ros.tools.make_bag import FrameSource, SourceFrame, open_source, write_bag
from video_seg_ros.tools.arguments import parse_size

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


def config_file(name: str) -> Path:
    """A file of the package's config/ folder (installed share/ or source checkout)."""
    path = config_path(name)
    if path is None:
        raise DemoError(f"config/{name} not found (looked in {', '.join(map(str, config_candidates(name)))})")
    return path


def synthetic_input(out_dir: Path, frames: int, size: tuple[int, int], rate: float) -> DemoInput:
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
    write_bag(source, bag, rate=rate, overwrite=True)
    return DemoInput(bag, labels, f"synthetic sequence (seed {DEMO_SEED}), {frames} frames {size[0]}x{size[1]}")


def folder_input(out_dir: Path, images: Path, rate: float, max_frames: int | None,
                 resize: tuple[int, int] | None) -> DemoInput:
    bag = out_dir / "input_bag"
    source = open_source(images, None, max_frames)
    print(f"[demo] writing {source.description} into {bag}", flush=True)
    write_bag(source, bag, rate=rate, resize=resize, overwrite=True)
    return DemoInput(bag, {}, source.description)


def load_labels(keys: list[str], labels_root: Path, label_format: str,
                size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Label maps for the frames that have one (resized nearest-neighbour to the bag's frame size)."""
    index = index_label_files(labels_root, label_format)
    labels = {}
    for key in keys:
        if key in index:
            label = read_label(index[key], label_format)
            if size is not None and (label.shape[1], label.shape[0]) != size:
                label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
            labels[key] = label
    return labels


# ---- processes ------------------------------------------------------------------------------------
def node_parameters(out_dir: Path, checkpoint: str, device: str, upsample: str, frames: int) -> Path:
    """config/video_seg.yaml with the replay settings: reliable input, a queue that drops nothing.

    The node's queue holds at most 100 frames; a longer bag loses none as long as the node keeps
    up with ``--replay-hz`` on average.
    """
    params = yaml.safe_load(config_file("video_seg.yaml").read_text())
    values = params["/**"]["ros__parameters"]
    values.update({"checkpoint": checkpoint, "device": device, "upsample": upsample,
                   "input_qos": "reliable", "frame_queue_size": min(max(frames, 1), MAX_NODE_QUEUE),
                   "publish_color": False, "publish_overlay": False, "consistency_metric": True,
                   "consistency_stride": 1})
    path = out_dir / "node_params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def frame_rate(bag: Path, topic: str) -> float | None:
    """Recording rate of ``topic`` in Hz from the median stamp interval (sequence gaps do not count)."""
    stamps = [f["stamp_ns"] for f in frame_keys(bag)] or [m.timestamp_ns for m in read_messages(bag, [topic])]
    intervals = np.diff(stamps)
    intervals = intervals[intervals > 0]
    return 1e9 / float(np.median(intervals)) if intervals.size else None


def run_pipeline(demo_input: DemoInput, out_dir: Path, params: Path, replay_hz: float,
                 domain_id: int, startup_timeout: float) -> dict:
    """Start recorder, node and player; wait for the recording; stop everything; return the logs."""
    info = bag_info(demo_input.bag)
    topic = default_image_topic(demo_input.bag)
    frames = info["topics"][topic]["count"]
    bag_hz = frame_rate(demo_input.bag, topic) or replay_hz
    rate_factor = replay_hz / bag_hz
    env = ros_process_environment(domain_id)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    recorded = out_dir / "recorded_bag"
    ready = logs / "recorder.ready"
    progress = logs / "recorder.progress"
    for marker in (ready, progress):
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
            "--topic", "/diagnostics", "--bag", str(recorded), "--overwrite", "--count", str(frames),
            # Generous: on a busy CPU frames queue in the node; the idle timeout ends a stalled run.
            "--wait", str(startup_timeout),
            "--timeout", str(startup_timeout + playback_s + 60 + frames * MAX_SECONDS_PER_FRAME),
            "--idle-timeout", str(max(30.0, 20.0 / replay_hz)), "--ready-file", str(ready),
            "--progress-file", str(progress),
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
            "--rate", f"{rate_factor:.6f}", "--wait-for-subscribers", "30",
            "--log", str(logs / "player.json")], logs / "player.log", env)
        processes.append(player)
        print(f"[demo] replaying {frames} frames at {replay_hz:g} Hz ({playback_s:.0f} s)", flush=True)
        with tqdm(total=frames, unit="frame", desc="segmented") as bar:
            # The recorder stops itself (count, idle or total timeout).
            while recorder.alive() and node.alive():
                bar.n = _read_count(progress)
                bar.refresh()
                time.sleep(0.25)
            bar.n = _read_count(progress)
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
          tc_width: int) -> dict:
    """Latency, losses, mIoU and TC from the recorded labels; writes overlay.mp4 and the TC plot."""
    recorded = run["recorded_bag"]
    publish_by_stamp = {m["stamp_ns"]: m["publish_ns"] for m in run["player"]["messages"]}
    keys = {f["stamp_ns"]: f for f in frame_keys(demo_input.bag)}
    labels_topic = f"/{NODE_NAME}/labels"
    predictions = {image.stamp_ns: (image.pixels, image.timestamp_ns)
                   for image in read_images(recorded, labels_topic)}
    latencies = [(rx - publish_by_stamp[s]) / 1e6 for s, (_, rx) in predictions.items() if s in publish_by_stamp]
    published = len(publish_by_stamp)
    lost = len(set(publish_by_stamp) - set(predictions))
    receive = sorted(rx for _, rx in predictions.values())
    output_fps = (len(receive) - 1) / ((receive[-1] - receive[0]) / 1e9) if len(receive) > 1 else None

    num_classes = len(checkpoint.class_names)
    palette = palette_lookup_table(checkpoint.palette)
    accuracy = ConfusionMatrix(num_classes, list(checkpoint.class_names))
    consistency = TemporalConsistency(num_classes, flow_width=tc_width)
    per_frame: list[dict] = []
    previous = None  # (sequence, rgb, labels)
    writer, video_path = None, out_dir / "overlay.mp4"
    fps = run["bag_hz"]
    images = read_images(demo_input.bag, run["topic"])  # one frame in memory at a time
    for index, image in enumerate(tqdm(images, total=published, unit="frame", desc="score")):
        meta = keys.get(image.stamp_ns, {"key": str(index), "sequence": ""})
        rgb = image.rgb()
        prediction = predictions.get(image.stamp_ns)
        row = {"index": index, "stamp_ns": image.stamp_ns, "key": meta["key"], "sequence": meta["sequence"],
               "received": prediction is not None, "tc": None, "pixel_accuracy": None}
        if prediction is None:
            previous = None
            per_frame.append(row)
            continue
        labels = prediction[0]
        if meta["key"] in demo_input.labels:
            target = demo_input.labels[meta["key"]]
            frame_matrix = ConfusionMatrix(num_classes).update(labels, target)
            accuracy += frame_matrix
            row["pixel_accuracy"] = frame_matrix.pixel_accuracy
        if previous is not None and previous[0] == meta["sequence"]:
            row["tc"] = consistency.update(previous[1], rgb, previous[2], labels)
        previous = (meta["sequence"], rgb, labels)
        per_frame.append(row)
        writer = _write_video_frame(writer, video_path, overlay(rgb, labels, palette), row, fps, video_width)
    if writer is not None:
        writer.release()
    plot_path = _plot_tc(per_frame, consistency.tc, out_dir / "tc_over_time.png")
    diagnostics = last_diagnostics(recorded)
    return {
        "frames_published": published, "frames_segmented": len(predictions), "frames_lost": lost,
        "output_fps": output_fps,
        "latency_ms": {"mean": float(np.mean(latencies)) if latencies else None,
                       "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "max": max(latencies) if latencies else None},
        "node_model_ms_p50": _float(diagnostics.get("model_p50_ms")),
        "node_device": diagnostics.get("device"),
        "node_dropped": _int(diagnostics.get("dropped")), "node_rejected": _int(diagnostics.get("rejected")),
        "tc": consistency.tc, "tc_pairs": consistency.pairs,
        "miou": accuracy.miou if accuracy.total else None,
        "pixel_accuracy": accuracy.pixel_accuracy if accuracy.total else None,
        "labelled_frames": sum(1 for r in per_frame if r["pixel_accuracy"] is not None),
        "per_class_iou": accuracy.per_class_iou() if accuracy.total else None,
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
        f"replay      {summary['replay_hz']:g} Hz through {NODE_NAME} "
        "(bag -> video-seg-play -> node -> video-seg-record)",
        f"frames      {s['frames_segmented']}/{s['frames_published']} segmented, {s['frames_lost']} lost",
        f"fps         output {_fmt(s['output_fps'], 2)} fps (replayed at {summary['replay_hz']:g} Hz); "
        f"model {_fmt(s['node_model_ms_p50'], 1, ' ms')} p50 per frame in the node",
        f"latency     publish -> labels received: p50 {_fmt(lat['p50'], 1, ' ms')}, "
        f"p95 {_fmt(lat['p95'], 1, ' ms')}, max {_fmt(lat['max'], 1, ' ms')}",
        f"TC          {_fmt(s['tc'])} over {s['tc_pairs']} consecutive pairs",
        f"mIoU        {_fmt(s['miou'])} (pixel accuracy {_fmt(s['pixel_accuracy'])}) over "
        f"{s['labelled_frames']} labelled frames",
        f"outputs     {summary['output']}: summary.json, summary.md, overlay.mp4, tc_over_time.png",
        f"took        {summary['wall_s']:.0f} s",
    ]


def write_markdown(summary: dict, path: Path) -> None:
    s = summary["results"]
    rows = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in (s["per_class_iou"] or {}).items())
    text = ["# video_seg_ros demo", "", "```", *summary_lines(summary), "```", "",
            f"Command: `{summary['command']}`", "", "![TC over time](tc_over_time.png)", ""]
    if rows:
        text += ["| class | IoU |", "|---|---|", rows, ""]
    path.write_text("\n".join(text))


# ---- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video-seg-demo", description=__doc__,
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
    parser.add_argument("--frames", type=int, default=None,
                        help=f"synthetic sample: number of frames (default {SAMPLE_FRAMES}); with "
                             "--images: at most this many frames (default all)")
    parser.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                        help="synthetic sample: frame size (default 512x256)")
    parser.add_argument("--resize", type=parse_size, default=None, metavar="WxH",
                        help="--images: resize frames to W x H before replay")
    parser.add_argument("--rate", type=float, default=17.0,
                        help="recording rate of the frames in Hz (stamps in the bag; default 17, "
                             "Cityscapes)")
    parser.add_argument("--replay-hz", type=float, default=5.0,
                        help="frames per second the player sends to the node (default 5)")
    parser.add_argument("--device", default="auto",
                        help="node device: auto (default: CUDA if present, else CPU), cpu or cuda[:N]")
    parser.add_argument("--upsample", choices=UPSAMPLE_MODES, default="auto",
                        help="node upsampling mode (default auto: logits on CUDA, labels on a CPU)")
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"),
                        help="output folder (default outputs/demo; replaced files are overwritten)")
    parser.add_argument("--video-width", type=int, default=1024,
                        help="frames wider than this are downscaled in overlay.mp4 (default 1024)")
    parser.add_argument("--tc-width", type=int, default=1024,
                        help="optical flow for TC is computed at most this wide (default 1024)")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for the node to load its model (default 120)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of the pipeline (default: random in 100..199, so it does "
                             "not disturb other ROS processes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM stop the child processes before exiting (see run_pipeline's finally).
    previous = install_stop_handlers()
    try:
        return _run(argv)
    finally:
        restore_handlers(previous)


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    out_dir = args.output
    try:
        if args.replay_hz <= 0 or args.rate <= 0:
            raise DemoError("--replay-hz and --rate must be positive")
        if args.labels is not None and args.images is None and args.bag is None:
            raise DemoError("--labels needs --images or --bag (the synthetic sample has its own labels)")
        checkpoint_path = str(resolve_checkpoint_path(args.checkpoint))
        checkpoint = load_checkpoint(checkpoint_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.bag is not None:
            demo_input = DemoInput(args.bag, {}, f"bag {args.bag}")
        elif args.images is not None:
            demo_input = folder_input(out_dir, args.images, args.rate, args.frames, args.resize)
        else:
            demo_input = synthetic_input(out_dir, args.frames or SAMPLE_FRAMES, args.size, args.rate)
        info = bag_info(demo_input.bag)
        if args.labels is not None:
            keys = [f["key"] for f in frame_keys(demo_input.bag)]
            if not keys:
                raise DemoError(f"{demo_input.bag} does not record which file each frame came from "
                                "(make it with video-seg-make-bag), so --labels cannot be matched")
            topic = default_image_topic(demo_input.bag)
            first = next(read_images(demo_input.bag, topic))
            demo_input.labels = load_labels(keys, args.labels, args.label_format,
                                            (first.pixels.shape[1], first.pixels.shape[0]))
            print(f"[demo] {len(demo_input.labels)} of {len(keys)} frames have labels "
                  f"({info['topics'].get(topic, {}).get('count')} in the bag)")
        frames = info["message_count"]
        params = node_parameters(out_dir, checkpoint_path, args.device, args.upsample, frames)
        domain_id = args.domain_id if args.domain_id is not None else random.SystemRandom().randint(100, 199)
        run = run_pipeline(demo_input, out_dir, params, args.replay_hz, domain_id, args.startup_timeout)
        results = score(demo_input, run, out_dir, checkpoint, args.video_width, args.tc_width)
    except (DemoError, BagError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"video-seg-demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("video-seg-demo: interrupted", file=sys.stderr)
        return 130
    summary = {
        "command": " ".join(["video-seg-demo", *(sys.argv[1:] if argv is None else argv)]),
        "input": demo_input.description, "checkpoint": checkpoint_path, "model": checkpoint.model_name,
        "device": results["node_device"] or args.device, "replay_hz": args.replay_hz,
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
