"""``video-seg-eval``: accuracy (mIoU) and temporal consistency (TC) of a checkpoint on a folder.

Library use (the demo and training call this)::

    from video_seg_ros.tools.evaluate import evaluate_folder
    report = evaluate_folder("espnet_city.pt", "frames/", labels="gtFine/",
                             label_format="trainids")

Frames are listed and grouped into sequences by :func:`video_seg_ros.frames.list_frames`; two
frames form a TC pair only when they are in the same sequence and their frame numbers differ by
at most ``max_frame_gap`` (1 = truly consecutive). The engine's temporal state is reset at every
sequence start and at every gap.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from video_seg_ros.checkpoint import Checkpoint, CheckpointError
from video_seg_ros.engine import UPSAMPLE_MODES, DeviceError, SegmentationEngine
from video_seg_ros.frames import (IMAGE_EXTENSIONS, group_sequences, index_label_files, list_frames,
                                  read_label, read_rgb)
from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.labels import LABEL_FORMATS, overlay
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency


def evaluate_folder(checkpoint: str | Path | Checkpoint | SegmentationEngine | None,
                    images: str | Path,
                    labels: str | Path | None = None,
                    label_format: str = "trainids",
                    device: str = "auto",
                    upsample: str = "auto",
                    limit: int | None = None,
                    flow_preset: str = "ultrafast",
                    flow_width: int | None = 1024,
                    occlusion: bool = False,
                    max_frame_gap: int = 1,
                    tc: bool = True,
                    save_overlays: str | Path | None = None,
                    save_labels: str | Path | None = None,
                    progress: bool = True,
                    command: str | None = None) -> dict:
    """Segment every frame under ``images`` and measure accuracy and temporal consistency.

    Args:
        checkpoint: a checkpoint path (``None``/"default" = embedded model), a loaded
            :class:`Checkpoint`, or a ready :class:`SegmentationEngine` (``device`` and
            ``upsample`` are then unused).
        images: folder of frames (searched recursively; see :mod:`video_seg_ros.frames`).
        labels: optional folder of label images, matched to frames by file-name key.
        label_format: how the label files store classes (one of ``labels.LABEL_FORMATS``).
        device, upsample: engine settings (see :class:`SegmentationEngine`).
        limit: evaluate only the first ``limit`` frames (in sorted order).
        flow_preset, flow_width, occlusion: TC flow settings (see
            :class:`video_seg_ros.metrics.TemporalConsistency`).
        max_frame_gap: largest frame-number step still counted as consecutive.
        tc: measure temporal consistency at all.
        save_overlays: folder for colourised overlays (``<key>_overlay.png``; labelled frames get
            the ground truth drawn below the prediction).
        save_labels: folder for the predicted class maps (``<key>_pred_labelTrainIds.png``,
            uint8 class ids, 255 = unlabelled), e.g. to recompute TC with other flow settings.
        progress: show a tqdm progress bar.
        command: the command line to record in the report.

    Returns:
        The report as a JSON-serialisable dict (see :func:`main` for the fields).

    Raises:
        FileNotFoundError, ValueError, CheckpointError, DeviceError with a message saying what
        to fix.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"unknown label format {label_format!r}; choose one of {LABEL_FORMATS}")
    if max_frame_gap < 1:
        raise ValueError("max_frame_gap must be >= 1")
    # Folders first: a typo should not cost a model load.
    records = list_frames(images)
    if not records:
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) under {images}")
    if limit is not None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        records = records[:limit]
    label_index = index_label_files(labels, label_format) if labels is not None else {}
    engine = checkpoint if isinstance(checkpoint, SegmentationEngine) else SegmentationEngine(
        checkpoint, device=device, upsample=upsample)
    overlay_dir = Path(save_overlays) if save_overlays else None
    labels_out = Path(save_labels) if save_labels else None
    for folder in (overlay_dir, labels_out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    class_names = engine.class_names
    accuracy = ConfusionMatrix(len(class_names), class_names)
    consistency = TemporalConsistency(len(class_names), flow_preset, flow_width, occlusion,
                                      class_names) if tc else None
    model_ms: list[float] = []
    per_frame: list[dict] = []
    sequences: dict[str, dict] = {}
    resized_predictions = 0

    bar = tqdm(total=len(records), desc="evaluating", unit="frame", disable=not progress)
    for name, frames in group_sequences(records).items():
        engine.reset()
        tc_at_start = consistency.matrix.copy() if consistency is not None else None
        pairs_at_start = consistency.pairs if consistency is not None else 0
        previous = None  # (record, frame, labels) of the frame before, while consecutive
        for record in frames:
            frame = read_rgb(record.path)
            if previous is not None and not _consecutive(previous[0], record, previous[1], frame,
                                                         max_frame_gap):
                engine.reset()  # a temporal model must not carry state across a gap
                previous = None
            result = engine.segment(frame, channel_order="rgb")
            model_ms.append(result.model_ms)
            entry = {"key": record.key, "sequence": name, "frame": record.frame,
                     "model_ms": round(result.model_ms, 2)}

            ground_truth = None
            label_path = label_index.get(record.key)
            if label_path is not None:
                ground_truth = read_label(label_path, label_format)
                prediction = result.labels
                if ground_truth.shape != prediction.shape:
                    # Labels stored at another resolution: compare at the label's.
                    prediction = cv2.resize(prediction, ground_truth.shape[::-1],
                                            interpolation=cv2.INTER_NEAREST)
                    resized_predictions += 1
                try:
                    frame_matrix = ConfusionMatrix(len(class_names)).update(prediction, ground_truth)
                except ValueError as error:
                    raise ValueError(f"{label_path}: {error}") from error
                accuracy += frame_matrix
                entry["label"] = str(label_path)
                entry["pixel_accuracy"] = _round(frame_matrix.pixel_accuracy)
                entry["miou"] = _round(frame_matrix.miou)

            if consistency is not None and previous is not None:
                entry["tc_from_previous"] = _round(
                    consistency.update(previous[1], frame, previous[2], result.labels))
            per_frame.append(entry)

            if overlay_dir is not None:
                _write_overlay(overlay_dir / f"{record.key}_overlay.png", frame, result.labels,
                               ground_truth, engine.palette_table)
            if labels_out is not None:
                cv2.imwrite(str(labels_out / f"{record.key}_pred_labelTrainIds.png"), result.labels)
            previous = (record, frame, result.labels)
            bar.update(1)
        summary = {"frames": len(frames)}
        if consistency is not None:
            sequence_matrix = consistency.matrix.copy()
            sequence_matrix.matrix -= tc_at_start.matrix
            summary["tc_pairs"] = consistency.pairs - pairs_at_start
            summary["tc"] = _round(sequence_matrix.miou)
        sequences[name] = summary
    bar.close()

    labelled = sum(1 for entry in per_frame if "label" in entry)
    report = {
        "checkpoint": _describe_checkpoint(checkpoint, engine),
        "model": engine.model_name,
        "label_set": engine.checkpoint.label_set,
        "device": str(engine.device),
        "upsample": engine.upsample,
        "images": str(images),
        "labels": None if labels is None else str(labels),
        "label_format": label_format if labels is not None else None,
        "frames": len(per_frame),
        "labelled_frames": labelled,
        "miou": _round(accuracy.miou),
        "pixel_accuracy": _round(accuracy.pixel_accuracy),
        "per_class_iou": {k: _round(v) for k, v in accuracy.per_class_iou().items()} if labelled else {},
        "tc": _round(consistency.tc) if consistency is not None else None,
        "tc_pairs": consistency.pairs if consistency is not None else 0,
        # Share of compared pixels whose class survives the warp: unlike TC, not dominated by
        # rare classes that flicker on a few pixels.
        "tc_pixel_agreement": _round(consistency.matrix.pixel_accuracy) if consistency is not None else None,
        "tc_per_class": ({k: _round(v) for k, v in consistency.per_class().items()}
                         if consistency is not None and consistency.pairs else {}),
        "tc_settings": {"flow": "opencv-dis", "preset": flow_preset, "flow_width": flow_width,
                        "occlusion_mask": occlusion, "max_frame_gap": max_frame_gap,
                        "label_warp": "nearest"} if consistency is not None else None,
        "ms_per_frame": _round(statistics.median(model_ms), 2),
        "flow_ms_per_pair": (_round(statistics.median(consistency.flow_ms), 2)
                             if consistency is not None and consistency.flow_ms else None),
        "sequences": sequences,
        "notes": [],
        "per_frame": per_frame,
        "command": command,
    }
    if labels is not None and not labelled:
        report["notes"].append(f"no label file under {labels} matched a frame key; check --labels")
    if resized_predictions:
        report["notes"].append(f"{resized_predictions} label image(s) differ in size from their frame; "
                               "predictions were resized (nearest) to the label size")
    if consistency is not None and not consistency.pairs:
        report["notes"].append(f"no consecutive frames (frame-number step <= {max_frame_gap}) "
                               "within a sequence, so no TC; see --max-frame-gap")
    return report


def _describe_checkpoint(checkpoint, engine) -> str:
    if isinstance(checkpoint, (str, Path)):
        return str(checkpoint)
    if checkpoint is None:
        return "default"
    source = engine.checkpoint.source or {}
    return str(source.get("path") or source.get("weights") or engine.model_name)


def _consecutive(previous_record, record, previous_frame, frame, max_frame_gap) -> bool:
    step = record.frame - previous_record.frame
    return 0 < step <= max_frame_gap and previous_frame.shape == frame.shape


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def _write_overlay(path: Path, frame: np.ndarray, labels: np.ndarray, ground_truth: np.ndarray | None,
                   palette_table: np.ndarray) -> None:
    picture = overlay(frame, labels, palette_table)
    if ground_truth is not None:
        if ground_truth.shape != labels.shape:
            ground_truth = cv2.resize(ground_truth, labels.shape[::-1], interpolation=cv2.INTER_NEAREST)
        picture = np.concatenate([picture, overlay(frame, ground_truth, palette_table)], axis=0)
    # PNG keeps class boundaries crisp; level 1 compresses fast enough for 2048x1024 frames.
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])


def format_markdown(report: dict) -> str:
    """A short human-readable summary of a report (what the CLI prints)."""

    def percent(value):
        return "n/a" if value is None else f"{100.0 * value:.2f} %"

    lines = [
        f"## Evaluation of {report['model']} ({report['checkpoint']})",
        "",
        "| frames | labelled | mIoU | pixel accuracy | TC | TC pairs | TC pixel agreement "
        "| ms/frame (median) | device |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {report['frames']} | {report['labelled_frames']} | {percent(report['miou'])} | "
        f"{percent(report['pixel_accuracy'])} | {percent(report['tc'])} | {report['tc_pairs']} | "
        f"{percent(report['tc_pixel_agreement'])} | {report['ms_per_frame']} | {report['device']} |",
    ]
    if report["per_class_iou"]:
        lines += ["", "| class | IoU | TC |", "|---|---|---|"]
        for name, value in report["per_class_iou"].items():
            lines.append(f"| {name} | {percent(value)} | {percent(report['tc_per_class'].get(name))} |")
    elif report["tc_per_class"]:
        lines += ["", "| class | TC |", "|---|---|"]
        for name, value in report["tc_per_class"].items():
            lines.append(f"| {name} | {percent(value)} |")
    if len(report["sequences"]) > 1 and report["tc_pairs"]:
        lines += ["", "| sequence | frames | TC pairs | TC |", "|---|---|---|---|"]
        for name, sequence in report["sequences"].items():
            lines.append(f"| {name} | {sequence['frames']} | {sequence.get('tc_pairs', 0)} | "
                         f"{percent(sequence.get('tc'))} |")
    lines += [f"- note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-seg-eval",
        description="Evaluate a segmentation checkpoint on a folder of frames: accuracy (mIoU, "
                    "per-class IoU, pixel accuracy) against optional label images and ETC temporal "
                    "consistency (TC: mIoU between each prediction and the next one warped back with "
                    "DIS optical flow, nearest-neighbour label warp) over consecutive frames. Prints "
                    "a Markdown summary and writes a JSON report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint file in the project format (see video-seg-import); "
                             "'default' = the model embedded in the package")
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of frames, searched recursively; sorted file names give the "
                             "temporal order, file-name prefixes the sequences (Cityscapes "
                             "<city>_<seq>_<frame>_leftImg8bit, CamVid <seq>_<frame>, name_<number>)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="folder of label images matched to frames by name (e.g. Cityscapes "
                             "gtFine/); frames without a label are still used for TC")
    parser.add_argument("--label-format", choices=LABEL_FORMATS, default="trainids",
                        help="class encoding of the label images: trainids (0..N-1, 255 ignore), "
                             "cityscapes-labelids (official labelIds, mapped to trainIds), camvid "
                             "(0..10, 11 = unlabelled)")
    parser.add_argument("--out", type=Path, default=Path("eval_report.json"),
                        help="where to write the JSON report")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the printed Markdown summary to this file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--upsample", choices=UPSAMPLE_MODES, default="auto",
                        help="how predictions reach the frame size: 'logits' resizes class scores "
                             "bilinearly before the argmax (finer boundaries), 'labels' resizes the "
                             "class map nearest-neighbour (much cheaper on large frames; what the "
                             "ESPNet evaluation script does); 'auto' (default): logits on CUDA, "
                             "labels on the CPU")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only the first N frames (sorted order)")
    parser.add_argument("--flow-preset", choices=sorted(DIS_PRESETS), default="ultrafast",
                        help="OpenCV DIS optical-flow preset used for TC")
    parser.add_argument("--flow-width", type=int, default=1024,
                        help="compute the flow on frames downscaled to this width (labels are "
                             "still warped at full resolution); 0 = full resolution")
    parser.add_argument("--occlusion", action="store_true",
                        help="leave pixels that fail the forward-backward flow check out of TC")
    parser.add_argument("--max-frame-gap", type=int, default=1,
                        help="largest frame-number step between two frames of a sequence that "
                             "still counts as consecutive for TC (CamVid's labelled frames are 30 "
                             "apart: pass 30 to measure TC at 1 Hz there)")
    parser.add_argument("--no-tc", action="store_true", help="skip temporal consistency")
    parser.add_argument("--save-overlays", type=Path, default=None,
                        help="write colourised overlays <key>_overlay.png here (labelled frames: "
                             "prediction on top, ground truth below)")
    parser.add_argument("--save-labels", type=Path, default=None,
                        help="write the predicted class maps <key>_pred_labelTrainIds.png here "
                             "(uint8 ids, 255 = unlabelled)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["video-seg-eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = evaluate_folder(
            args.checkpoint, args.images, labels=args.labels, label_format=args.label_format,
            device=args.device, upsample=args.upsample, limit=args.limit,
            flow_preset=args.flow_preset, flow_width=args.flow_width or None, occlusion=args.occlusion,
            max_frame_gap=args.max_frame_gap, tc=not args.no_tc, save_overlays=args.save_overlays,
            save_labels=args.save_labels, progress=not args.quiet, command=command)
    except (CheckpointError, DeviceError, FileNotFoundError, ValueError) as error:
        print(f"video-seg-eval: error: {error}", file=sys.stderr)
        return 2
    summary = format_markdown(report)
    print(summary, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.out}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
