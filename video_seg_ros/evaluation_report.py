"""The evaluation report: per-frame files (overlays, predicted labels), the report dict of a
video-seg-eval run and its Markdown summary. The figures themselves are
:mod:`video_seg_ros.evaluation` (:func:`~video_seg_ros.evaluation.evaluate`).

Example::

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.evaluation import EvaluationOptions
    from video_seg_ros.evaluation_report import evaluate_folder, format_markdown
    from video_seg_ros.streams import FolderStream

    frames = FolderStream("frames/", labels="gtFine/", label_format="trainids")
    report = evaluate_folder(SegmentationEngine("espnet_city.pt"), frames,
                             EvaluationOptions(max_frame_gap=1))
    print(format_markdown(report))
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.evaluation import EvaluationOptions, evaluate, percent
from video_seg_ros.labels import overlay
from video_seg_ros.streams import Frame, FrameStream, open_stream


def write_overlay(
    path: Path,
    frame: np.ndarray,
    labels: np.ndarray,
    ground_truth: np.ndarray | None,
    palette_table: np.ndarray,
) -> None:
    """``labels`` over ``frame`` as a PNG; with ``ground_truth`` drawn the same way below it."""
    picture = overlay(frame, labels, palette_table)
    if ground_truth is not None:
        if ground_truth.shape != labels.shape:
            ground_truth = cv2.resize(
                ground_truth, labels.shape[::-1], interpolation=cv2.INTER_NEAREST
            )
        picture = np.concatenate([picture, overlay(frame, ground_truth, palette_table)], axis=0)
    # PNG keeps class boundaries crisp; level 1 compresses fast enough for 2048x1024 frames.
    cv2.imwrite(
        str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )


def evaluate_folder(
    engine,
    images: str | Path | FrameStream,
    options: EvaluationOptions | None = None,
    *,
    save_overlays: str | Path | None = None,
    save_labels: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Segment every frame of a stream and measure accuracy and TC; returns the report dict.

    Args:
        engine: a ready :class:`~video_seg_ros.engine.SegmentationEngine`.
        images: a :class:`~video_seg_ros.streams.FrameStream` (usually a
            :class:`~video_seg_ros.streams.FolderStream`), or a path for
            :func:`~video_seg_ros.streams.open_stream` (no labels, all frames).
        options: TC settings.
        save_overlays: folder for ``<key>_overlay.png`` (labelled frames: ground truth below).
        save_labels: folder for the predicted class maps ``<key>_pred_labelTrainIds.png``.
        progress: show a progress bar.
        command: the command line to record in the report.
        checkpoint: how to name the checkpoint in the report (default: the engine's source).

    Returns:
        The report (JSON-serialisable; every figure a fraction 0..1): the fields of
        :meth:`Evaluator.summary` plus checkpoint, model, label set, device, backend, precision
        (with requested_precision, precision_reason, precision_agreement, precision_fallback, cpu),
        upsample, images, labels, label_format, skipped, per_frame and command.
    """
    from tqdm import tqdm

    folder = images if isinstance(images, FrameStream) else open_stream(images)
    options = options or EvaluationOptions()
    overlay_dir = Path(save_overlays) if save_overlays else None
    labels_out = Path(save_labels) if save_labels else None
    for directory in (overlay_dir, labels_out):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(folder), desc="evaluating", unit="frame", disable=not progress)

    def on_frame(frame: Frame, result, row: dict) -> None:
        if overlay_dir is not None:
            write_overlay(
                overlay_dir / f"{frame.key}_overlay.png",
                frame.rgb,
                result.labels,
                frame.label,
                engine.palette_table,
            )
        if labels_out is not None:
            cv2.imwrite(str(labels_out / f"{frame.key}_pred_labelTrainIds.png"), result.labels)
        bar.update(1)

    try:
        evaluator = evaluate(engine, folder, options, on_frame)
    finally:
        bar.close()
    summary = evaluator.summary()
    notes = summary.pop("notes")
    if folder.labels is not None and not summary["labelled_frames"]:
        notes.insert(
            0,
            f"no label file under {folder.labels} matched a frame key (labels are matched "
            "by file name)",
        )
    skipped = getattr(folder, "skipped", [])
    if skipped:
        notes.append(f"{len(skipped)} unreadable frame(s) skipped")
    source = engine.checkpoint.source or {}
    report = {
        "checkpoint": checkpoint
        or str(source.get("path") or source.get("weights_file") or engine.model_name),
        "model": engine.model_name,
        "label_set": engine.checkpoint.label_set,
        "device": str(engine.device),
        "backend": engine.backend,
        "precision": engine.precision,
        "backend_fallback_reason": engine.fallback_reason,
        **{
            key: value
            for key, value in engine.describe().items()
            if key
            in (
                "requested_precision",
                "precision_reason",
                "precision_agreement",
                "precision_fallback",
                "cpu",
            )
        },
        "upsample": engine.upsample,
        "temporal": engine.temporal.to_dict() if hasattr(engine, "temporal") else None,
        "images": str(folder.path),
        "labels": None if folder.labels is None else str(folder.labels),
        "label_format": getattr(folder, "label_format", None)
        if folder.labels is not None
        else None,
        **summary,
        "skipped": skipped,
        "notes": notes,
        "per_frame": evaluator.per_frame,
        "command": command,
    }
    return report


def format_markdown(report: dict) -> str:
    """A short human-readable summary of an :func:`evaluate_folder` report (what the CLI
    prints)."""
    lines = [
        f"## Evaluation of {report['model']} ({report['checkpoint']})",
        "",
        "| frames | labelled | mIoU | pixel accuracy | TC | TC pairs | TC pixel agreement "
        "| ms/frame (median) | device |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {report['frames']} | {report['labelled_frames']} | {percent(report['miou'])} | "
        f"{percent(report['pixel_accuracy'])} | {percent(report['tc'])} | {report['tc_pairs']} | "
        f"{percent(report['tc_pixel_agreement'])} | {report['ms_per_frame']} | "
        f"{report['device']} |",
        "",
        f"Ran on {report['device']}, backend {report['backend']}, precision {report['precision']} "
        f"({report.get('precision_reason') or 'no reason recorded'}); "
        f"CPU {report.get('cpu') or 'unknown'}.",
    ]
    if report["per_class_iou"]:
        lines += ["", "| class | IoU | TC |", "|---|---|---|"]
        for name, value in report["per_class_iou"].items():
            lines.append(
                f"| {name} | {percent(value)} | {percent(report['tc_per_class'].get(name))} |"
            )
    elif report["tc_per_class"]:
        lines += ["", "| class | TC |", "|---|---|"]
        for name, value in report["tc_per_class"].items():
            lines.append(f"| {name} | {percent(value)} |")
    temporal = report.get("temporal") or {}
    if temporal.get("mode", "off") != "off":
        share = percent(report["keyframe_share"], 1)
        lines += [
            "",
            f"Temporal {temporal['mode']} (fusion weight {temporal['fusion_weight']:g}, keyframe "
            f"max interval {temporal['max_interval']}): network on {share} of the frames.",
        ]
    if len(report["sequences"]) > 1 and report["tc_pairs"]:
        lines += ["", "| sequence | frames | TC pairs | TC |", "|---|---|---|---|"]
        for name, sequence in report["sequences"].items():
            lines.append(
                f"| {name} | {sequence['frames']} | {sequence.get('tc_pairs', 0)} | "
                f"{percent(sequence.get('tc'))} |"
            )
    lines += [
        f"- skipped {entry['file']}: {entry['error']}" for entry in report.get("skipped", [])
    ]
    lines += [f"- note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


__all__ = ["evaluate_folder", "format_markdown", "write_overlay"]
