"""Scoring and reports of video-seg-demo: figures from the recorded bag (frames, losses, latency
split, TC, mIoU), ``overlay.mp4``, ``tc_over_time.png``, the printed summary and ``summary.md``.

Accuracy and TC come from :func:`video_seg_ros.evaluation.evaluate_recording`, the evaluator
video-seg-eval and training use, so the figures are comparable with theirs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from video_seg_ros.bags import BagError, read_images, read_messages
from video_seg_ros.evaluation import EvaluationOptions, evaluate_recording, percent
from video_seg_ros.streams import BagStream
from video_seg_ros.labels import overlay, palette_lookup_table
from video_seg_ros.stats import percentile
from video_seg_ros.tools.demo_pipeline import NODE_NAME, DemoError, DemoInput


# ---- scoring ------------------------------------------------------------------------------------
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


def latency_split(
    publish_ns: dict[int, int], receive_ns: dict[int, int]
) -> dict[str, list[float]]:
    """Per received frame (ms): ``end_to_end`` = labels received - frame published; ``queue_wait``
    = how long the frame waited for the frames before it; ``latency`` = the rest, i.e. transport,
    decoding and the model once the node could take the frame.

    The node segments one frame at a time in arrival order, so a frame published before the
    previous frame's labels came out waited until then: queue wait = max(0, previous labels
    received - published). When the replay outruns the model the queue wait grows with every
    frame, while the latency stays the node's own time per frame.
    """
    frames = sorted(
        (publish_ns[stamp], received)
        for stamp, received in receive_ns.items()
        if stamp in publish_ns
    )
    split: dict[str, list[float]] = {"latency": [], "queue_wait": [], "end_to_end": []}
    previous_out = None
    for published, received in frames:
        wait = 0 if previous_out is None else max(0, min(previous_out, received) - published)
        split["end_to_end"].append((received - published) / 1e6)
        split["queue_wait"].append(wait / 1e6)
        split["latency"].append((received - published - wait) / 1e6)
        previous_out = received if previous_out is None else max(previous_out, received)
    return split


def distribution(values: list[float]) -> dict:
    """mean, p50, p95 and max of ``values`` (None each when empty)."""
    return {
        "mean": float(np.mean(values)) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def score(
    demo_input: DemoInput,
    run: dict,
    out_dir: Path,
    checkpoint,
    video_width: int,
    options: EvaluationOptions,
    progress: bool = True,
) -> dict:
    """Latency, losses, mIoU and TC of the recorded labels; writes overlay.mp4 and the TC plot."""
    recorded = run["recorded_bag"]
    publish_by_stamp = {m["stamp_ns"]: m["publish_ns"] for m in run["player"]["messages"]}
    labels_topic = f"/{NODE_NAME}/labels"
    predictions, receive_ns = {}, {}
    for image in read_images(recorded, labels_topic):
        predictions[image.stamp_ns] = image.pixels
        receive_ns[image.stamp_ns] = image.timestamp_ns
    split = latency_split(publish_by_stamp, receive_ns)
    published = len(publish_by_stamp)
    lost = len(set(publish_by_stamp) - set(predictions))
    receive = sorted(receive_ns.values())
    output_fps = (
        (len(receive) - 1) / ((receive[-1] - receive[0]) / 1e9) if len(receive) > 1 else None
    )

    palette = palette_lookup_table(checkpoint.palette)
    per_frame: list[dict] = []
    writer, video_path = None, out_dir / "overlay.mp4"
    fps = run["bag_hz"]
    bar = tqdm(total=published, unit="frame", desc="score", disable=not progress)

    def on_frame(frame, prediction, row):
        nonlocal writer
        entry = {
            "index": len(per_frame),
            "key": frame.key,
            "sequence": frame.sequence,
            "received": prediction is not None,
            "tc": row.get("tc_from_previous"),
            "pixel_accuracy": row.get("pixel_accuracy"),
        }
        per_frame.append(entry)
        if prediction is not None:
            writer = _write_video_frame(
                writer,
                video_path,
                overlay(frame.rgb, prediction, palette),
                entry,
                fps,
                video_width,
            )
        bar.update(1)

    try:
        # One frame in memory at a time.
        evaluator = evaluate_recording(
            BagStream(demo_input.bag, run["topic"], labels=demo_input.labels),
            predictions,
            list(checkpoint.class_names),
            options,
            on_frame,
        )
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    plot_path = _plot_tc(per_frame, evaluator.tc, out_dir / "tc_over_time.png")
    diagnostics = last_diagnostics(recorded)
    figures = evaluator.summary()
    labelled = figures["labelled_frames"]
    return {
        "frames_published": published,
        "frames_segmented": len(predictions),
        "frames_lost": lost,
        "output_fps": output_fps,
        # latency without the wait behind earlier frames, the wait, and both together
        "latency_ms": distribution(split["latency"]),
        "queue_wait_ms": distribution(split["queue_wait"]),
        "end_to_end_ms": distribution(split["end_to_end"]),
        "node_model_ms_p50": _float(diagnostics.get("model_p50_ms")),
        "node_device": diagnostics.get("device"),
        **{
            f"node_{key}": diagnostics.get(key) or None
            for key in (
                "backend",
                "precision",
                "precision_reason",
                "precision_fallback",
                "backend_fallback",
            )
        },
        "node_dropped": _int(diagnostics.get("dropped")),
        "node_rejected": _int(diagnostics.get("rejected")),
        "tc": figures["tc"],
        "tc_pairs": figures["tc_pairs"],
        "tc_settings": figures["tc_settings"],
        "miou": figures["miou"],
        "pixel_accuracy": figures["pixel_accuracy"],
        "labelled_frames": labelled,
        "per_class_iou": figures["per_class_iou"] if labelled else None,
        "per_frame": per_frame,
        "files": {
            "video": str(video_path) if writer is not None else None,
            "tc_plot": str(plot_path),
        },
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
        rgb = cv2.resize(
            rgb,
            (max_width, round(rgb.shape[0] * max_width / rgb.shape[1])),
            interpolation=cv2.INTER_AREA,
        )
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    text = f"frame {row['index']}  {row['key']}"
    if row["tc"] is not None:
        text += f"   TC {row['tc']:.3f}"
    scale = max(0.4, bgr.shape[1] / 1400)
    bar_height = int(28 * scale / 0.5)
    bgr[:bar_height] = (bgr[:bar_height] * 0.35).astype(
        np.uint8
    )  # dark band keeps the text legible
    cv2.putText(
        bgr,
        text,
        (8, int(bar_height * 0.7)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    if writer is None:
        writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0])
        )
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
        axis.axhline(
            tc,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"all pairs, dataset-level IoU: {tc:.3f}",
        )
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


# ---- reports ------------------------------------------------------------------------------------
def _fmt(value, digits=3, unit=""):
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _percentiles(figures: dict) -> str:
    return (
        f"p50 {_fmt(figures['p50'], 1, ' ms')}, p95 {_fmt(figures['p95'], 1, ' ms')}, "
        f"max {_fmt(figures['max'], 1, ' ms')}"
    )


def summary_lines(summary: dict) -> list[str]:
    s = summary["results"]
    return [
        f"input       {summary['input']}",
        f"model       {summary['model']} ({summary['checkpoint']}) on {summary['device']}",
        f"runs        backend {summary.get('backend')}, precision {summary.get('precision')} "
        f"({summary.get('precision_reason')}); CPU {summary.get('cpu')}",
        f"replay      {summary['replay_hz']:g} Hz through {NODE_NAME} "
        "(bag -> video-seg-play -> node -> video-seg-record)",
        f"frames      {s['frames_segmented']}/{s['frames_published']} segmented, "
        f"{s['frames_lost']} lost",
        f"fps         output {_fmt(s['output_fps'], 2)} fps "
        f"(replayed at {summary['replay_hz']:g} Hz); "
        f"model {_fmt(s['node_model_ms_p50'], 1, ' ms')} p50 per frame in the node",
        "latency     publish -> labels received, less the queue wait: "
        + _percentiles(s["latency_ms"]),
        f"queue wait  behind earlier frames (replay faster than the node): "
        f"{_percentiles(s['queue_wait_ms'])}",
        f"end to end  publish -> labels received: {_percentiles(s['end_to_end_ms'])}",
        f"TC          {percent(s['tc'])} over {s['tc_pairs']} consecutive pairs",
        f"mIoU        {percent(s['miou'])} (pixel accuracy {percent(s['pixel_accuracy'])}) over "
        f"{s['labelled_frames']} labelled frames",
        f"outputs     {summary['output']}: "
        "summary.json, summary.md, overlay.mp4, tc_over_time.png",
        f"took        {summary['wall_s']:.0f} s",
    ]


def write_markdown(summary: dict, path: Path) -> None:
    s = summary["results"]
    rows = "\n".join(
        f"| {name} | {percent(value)} |" for name, value in (s["per_class_iou"] or {}).items()
    )
    text = [
        "# video_seg_ros demo",
        "",
        "```",
        *summary_lines(summary),
        "```",
        "",
        f"Command: `{summary['command']}`",
        "",
        "![TC over time](tc_over_time.png)",
        "",
    ]
    if rows:
        text += ["| class | IoU |", "|---|---|", rows, ""]
    path.write_text("\n".join(text))
