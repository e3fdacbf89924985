"""The one evaluator: accuracy (mIoU) and temporal consistency (TC) of predictions on frame sequences.

``video-seg-eval``, the demo's scoring and ``Trainer.validate`` all go through :class:`Evaluator`,
so they pair frames, resize, accumulate and report the same way:

- **Pairs for TC**: a frame and the frame fed before it form a pair when both belong to the same
  sequence, their frame numbers differ by 1..``max_frame_gap`` and they have the same size. A frame
  that is not paired starts a new run; :func:`evaluate` resets the engine's temporal state there
  (a temporal model, or the engine's temporal fusion, must not carry state across a cut or a gap).
- **Accuracy**: predictions are compared with labels at the label's resolution (a prediction of
  another size is resized nearest-neighbour first); intersections and unions are summed over all
  labelled frames (:class:`~video_seg_ros.metrics.ConfusionMatrix`).
- **TC**: ETC's definition with DIS flow and a nearest-neighbour label warp, summed over all
  pairs (:class:`~video_seg_ros.metrics.TemporalConsistency`); settings in :class:`EvaluationOptions`.
- **One unit**: every figure is a fraction 0..1 in Python and in JSON; :func:`percent` formats one
  for printing.

Example::

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.evaluation import EvaluationOptions, FrameFolder, evaluate_folder

    folder = FrameFolder("frames/", labels="gtFine/", label_format="trainids")
    report = evaluate_folder(SegmentationEngine("espnet_city.pt"), folder,
                             EvaluationOptions(max_frame_gap=1))
    print(report["miou"], report["tc"])
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.frames import (IMAGE_EXTENSIONS, FrameRecord, UnreadableImageError, group_sequences,
                                  index_label_files, list_frames, read_label, read_rgb)
from video_seg_ros.labels import LABEL_FORMATS, overlay
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency


@dataclass(frozen=True)
class EvaluationOptions:
    """How TC is measured (accuracy has no settings).

    Args:
        tc: measure temporal consistency at all.
        max_frame_gap: largest frame-number step between two frames of a sequence that still
            counts as consecutive (1 = truly consecutive; CamVid's labelled frames are 30 apart).
        flow_preset: OpenCV DIS preset (``ultrafast``, ``fast``, ``medium``).
        flow_width: frames wider than this are downscaled for the flow (labels are still warped
            at full resolution); None = full resolution.
        occlusion: leave out pixels that fail the forward-backward flow check.
    """

    tc: bool = True
    max_frame_gap: int = 1
    flow_preset: str = "ultrafast"
    flow_width: int | None = 1024
    occlusion: bool = False

    def __post_init__(self):
        if self.max_frame_gap < 1:
            raise ValueError(f"max_frame_gap must be >= 1, got {self.max_frame_gap}")
        if self.flow_preset not in DIS_PRESETS:
            raise ValueError(f"unknown flow preset {self.flow_preset!r}; choose one of {sorted(DIS_PRESETS)}")
        if self.flow_width is not None and self.flow_width < 16:
            raise ValueError(f"flow_width must be at least 16 pixels or None, got {self.flow_width}")

    def tc_settings(self) -> dict | None:
        """What a report records next to a TC figure (None when TC is off)."""
        if not self.tc:
            return None
        return {"flow": "opencv-dis", "preset": self.flow_preset, "flow_width": self.flow_width,
                "occlusion_mask": self.occlusion, "max_frame_gap": self.max_frame_gap,
                "label_warp": "nearest"}


@dataclass
class EvalFrame:
    """One frame to evaluate.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        key: name of the frame (file stem or bag key), used in per-frame rows and output files.
        sequence: the sequence it belongs to; frames of different sequences never pair.
        number: frame number within the sequence (pairs need a step of 1..max_frame_gap).
        label: optional (H, W) uint8 train ids (255 = unlabelled), at any resolution.
        label_path: where ``label`` came from, for messages and the report.
    """

    rgb: np.ndarray
    key: str
    sequence: str = ""
    number: int = 0
    label: np.ndarray | None = None
    label_path: str | None = None


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction printed as a percentage ("n/a" for None): the only place figures become %."""
    return "n/a" if value is None else f"{100.0 * value:.{digits}f} %"


class Evaluator:
    """Accumulates accuracy and TC over frames fed in temporal order (see the module docstring).

    Args:
        class_names: the label set's class names (their count fixes the class ids).
        options: TC settings.
    """

    def __init__(self, class_names: list[str], options: EvaluationOptions | None = None):
        self.options = options or EvaluationOptions()
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        self.accuracy = ConfusionMatrix(num_classes, self.class_names)
        self.consistency = (TemporalConsistency(num_classes, self.options.flow_preset,
                                                self.options.flow_width, self.options.occlusion,
                                                self.class_names) if self.options.tc else None)
        self.per_frame: list[dict] = []
        self.sequences: dict[str, dict] = {}
        self.resized_predictions = 0
        self.model_ms: list[float] = []
        self.keyframes = 0   # frames on which the network ran (engine's temporal clock) ...
        self.clocked = 0     # ... out of the frames that said whether it did
        self._previous: tuple[EvalFrame, np.ndarray] | None = None
        self._sequence_tc: dict[str, ConfusionMatrix] = {}

    # ---- the pairing rule -------------------------------------------------------------------
    def continues(self, frame: EvalFrame) -> bool:
        """Whether ``frame`` pairs with the frame fed before it (same sequence, frame-number step
        1..max_frame_gap, same size). A frame that does not starts a new run."""
        if self._previous is None:
            return False
        previous = self._previous[0]
        step = frame.number - previous.number
        return (frame.sequence == previous.sequence and 0 < step <= self.options.max_frame_gap
                and frame.rgb.shape == previous.rgb.shape)

    def break_run(self) -> None:
        """Forget the previous frame: the next one will not pair with it (e.g. a frame was lost)."""
        self._previous = None

    # ---- feeding ----------------------------------------------------------------------------
    def add(self, frame: EvalFrame, prediction: np.ndarray, model_ms: float | None = None,
            keyframe: bool | None = None) -> dict:
        """Score one frame's (H, W) uint8 prediction; returns its per-frame row (fractions).
        ``keyframe``: whether the network ran on this frame (the engine's temporal clock).

        Raises:
            ValueError: the label holds ids outside the label set (message names the label file).
        """
        paired = self.continues(frame)
        row: dict = {"key": frame.key, "sequence": frame.sequence, "frame": frame.number}
        if model_ms is not None:
            self.model_ms.append(model_ms)
            row["model_ms"] = round(model_ms, 2)
        if keyframe is not None:
            self.clocked += 1
            self.keyframes += bool(keyframe)
            row["keyframe"] = bool(keyframe)
        summary = self.sequences.setdefault(frame.sequence, {"frames": 0})
        summary["frames"] += 1
        if frame.label is not None:
            scored = prediction
            if frame.label.shape != prediction.shape:
                # Labels stored at another resolution: compare at the label's.
                scored = cv2.resize(prediction, frame.label.shape[::-1], interpolation=cv2.INTER_NEAREST)
                self.resized_predictions += 1
            try:
                frame_matrix = ConfusionMatrix(len(self.class_names)).update(scored, frame.label)
            except ValueError as error:
                raise ValueError(f"{frame.label_path or frame.key}: {error}") from error
            self.accuracy += frame_matrix
            if frame.label_path is not None:
                row["label"] = frame.label_path
            row["pixel_accuracy"] = _round(frame_matrix.pixel_accuracy)
            row["miou"] = _round(frame_matrix.miou)
        if self.consistency is not None and paired:
            before = self.consistency.matrix.copy()
            previous_frame, previous_prediction = self._previous
            row["tc_from_previous"] = _round(self.consistency.update(
                previous_frame.rgb, frame.rgb, previous_prediction, prediction))
            pair = self.consistency.matrix.copy()
            pair.matrix -= before.matrix
            if frame.sequence in self._sequence_tc:
                self._sequence_tc[frame.sequence] += pair
            else:
                self._sequence_tc[frame.sequence] = pair
            summary["tc_pairs"] = summary.get("tc_pairs", 0) + 1
        self.per_frame.append(row)
        self._previous = (frame, prediction)
        return row

    # ---- results ----------------------------------------------------------------------------
    @property
    def miou(self) -> float | None:
        return self.accuracy.miou

    @property
    def pixel_accuracy(self) -> float | None:
        return self.accuracy.pixel_accuracy

    @property
    def tc(self) -> float | None:
        return self.consistency.tc if self.consistency is not None else None

    @property
    def tc_pairs(self) -> int:
        return self.consistency.pairs if self.consistency is not None else 0

    @property
    def labelled_frames(self) -> int:
        return sum(1 for row in self.per_frame if "pixel_accuracy" in row)

    def summary(self) -> dict:
        """The figures as a JSON-serialisable dict (fractions 0..1; None where undefined)."""
        labelled = self.labelled_frames
        consistency = self.consistency
        sequences = {}
        for name, value in self.sequences.items():
            entry = {"frames": value["frames"]}
            if consistency is not None:
                entry["tc_pairs"] = value.get("tc_pairs", 0)
                matrix = self._sequence_tc.get(name)
                entry["tc"] = _round(matrix.miou) if matrix is not None else None
            sequences[name] = entry
        return {
            "frames": len(self.per_frame),
            "labelled_frames": labelled,
            "miou": _round(self.miou),
            "pixel_accuracy": _round(self.pixel_accuracy),
            "per_class_iou": ({k: _round(v) for k, v in self.accuracy.per_class_iou().items()}
                              if labelled else {}),
            "tc": _round(self.tc),
            "tc_pairs": self.tc_pairs,
            # Share of compared pixels whose class survives the warp: unlike TC, not dominated by
            # rare classes that flicker on a few pixels.
            "tc_pixel_agreement": _round(consistency.matrix.pixel_accuracy) if consistency is not None else None,
            "tc_per_class": ({k: _round(v) for k, v in consistency.per_class().items()}
                             if consistency is not None and consistency.pairs else {}),
            "tc_settings": self.options.tc_settings(),
            "ms_per_frame": _round(statistics.median(self.model_ms), 2) if self.model_ms else None,
            "keyframe_share": _round(self.keyframes / self.clocked) if self.clocked else None,
            "flow_ms_per_pair": (_round(statistics.median(consistency.flow_ms), 2)
                                 if consistency is not None and consistency.flow_ms else None),
            "sequences": sequences,
            "notes": self.notes(),
        }

    def notes(self) -> list[str]:
        notes = []
        if self.resized_predictions:
            notes.append(f"{self.resized_predictions} label image(s) differ in size from their frame; "
                         "predictions were resized (nearest) to the label size")
        if self.consistency is not None and not self.consistency.pairs:
            notes.append(f"no consecutive frames (frame-number step <= max_frame_gap "
                         f"{self.options.max_frame_gap}) within a sequence, so no TC")
        return notes


def evaluate(engine, frames: Iterable[EvalFrame], options: EvaluationOptions | None = None,
             on_frame: Callable[[EvalFrame, object, dict], None] | None = None) -> Evaluator:
    """Segment ``frames`` (in temporal order) with ``engine`` and score them.

    The engine's temporal state (model memory, fused probabilities, keyframe clock) is reset
    wherever a frame does not pair with the one before it.

    Args:
        engine: a :class:`~video_seg_ros.engine.SegmentationEngine`.
        frames: :class:`EvalFrame` items, in temporal order within each sequence.
        options: TC settings.
        on_frame: called as ``on_frame(frame, result, row)`` after each frame (overlays, files).

    Returns:
        The filled :class:`Evaluator` (read ``.miou``, ``.tc``, ``.summary()``).
    """
    evaluator = Evaluator(engine.class_names, options)
    for frame in frames:
        if not evaluator.continues(frame):
            engine.reset()
        result = engine.segment(frame.rgb, channel_order="rgb")
        row = evaluator.add(frame, result.labels, result.model_ms, getattr(result, "keyframe", None))
        if on_frame is not None:
            on_frame(frame, result, row)
    return evaluator


# ---- folders of frames ------------------------------------------------------------------------
class FrameFolder:
    """The frames under ``images`` (and their label files under ``labels``), as :class:`EvalFrame`.

    Listing happens here, reading while iterating, so a wrong folder fails before a model loads.
    Frames are grouped into sequences and ordered by :func:`video_seg_ros.frames.list_frames`;
    labels are matched by file-name key (:func:`video_seg_ros.frames.index_label_files`).

    Args:
        images: folder of frames, searched recursively.
        labels: optional folder of label images.
        label_format: one of :data:`video_seg_ros.labels.LABEL_FORMATS`.
        limit: only the first ``limit`` frames (in sorted order).
        skip_unreadable: a frame (or label) file that cannot be decoded is recorded in
            :attr:`skipped` and left out; otherwise :class:`UnreadableImageError` stops the run.
    """

    def __init__(self, images: str | Path, labels: str | Path | None = None, label_format: str = "trainids",
                 limit: int | None = None, skip_unreadable: bool = False):
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {label_format!r}; choose one of {LABEL_FORMATS}")
        self.images = Path(images)
        self.labels = None if labels is None else Path(labels)
        self.label_format = label_format
        self.skip_unreadable = skip_unreadable
        records = list_frames(self.images)
        if not records:
            raise FileNotFoundError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) under {self.images}")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be >= 1, got {limit}")
            records = records[:limit]
        self.records: list[FrameRecord] = records
        self.label_index = index_label_files(self.labels, label_format) if self.labels is not None else {}
        self.skipped: list[dict] = []

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EvalFrame]:
        for name, records in group_sequences(self.records).items():
            for record in records:
                label_path = self.label_index.get(record.key)
                try:
                    rgb = read_rgb(record.path)
                    label = read_label(label_path, self.label_format) if label_path is not None else None
                except UnreadableImageError as error:
                    if not self.skip_unreadable:
                        raise
                    self.skipped.append({"key": record.key, "file": str(record.path), "error": str(error)})
                    continue
                yield EvalFrame(rgb, record.key, name, record.frame, label,
                                None if label_path is None else str(label_path))


# ---- recordings (the demo) ----------------------------------------------------------------------
def bag_frames(bag: str | Path, topic: str,
               labels: dict[str, np.ndarray] | None = None) -> Iterator[tuple[int, EvalFrame]]:
    """``(stamp_ns, EvalFrame)`` for every image of ``topic`` in ``bag``, in recording order.

    Sequence, key and frame number come from the frame list that ``video-seg-make-bag`` stores
    in the bag (the number is parsed from the key as for image files); a bag without it gives
    every frame its index as key and number, in one sequence. ``labels`` maps frame keys to
    (H, W) train ids.
    """
    from video_seg_ros.bags import frame_keys, read_images
    from video_seg_ros.frames import parse_frame_name

    keys = {entry["stamp_ns"]: entry for entry in frame_keys(bag)}
    labels = labels or {}
    for index, image in enumerate(read_images(bag, topic)):
        entry = keys.get(image.stamp_ns)
        if entry is None:
            key, sequence, number = str(index), "", index
        else:
            key, sequence = entry["key"], entry["sequence"]
            number = parse_frame_name(Path(key + ".png")).frame
        yield image.stamp_ns, EvalFrame(image.rgb(), key, sequence, number, labels.get(key))


def evaluate_recording(frames: Iterable[tuple[int, EvalFrame]], predictions: dict[int, np.ndarray],
                       class_names: list[str], options: EvaluationOptions | None = None,
                       on_frame: Callable[[EvalFrame, np.ndarray | None, dict], None] | None = None
                       ) -> Evaluator:
    """Score predictions made elsewhere (e.g. recorded from the node), keyed by frame stamp.

    ``frames`` are ``(stamp_ns, EvalFrame)`` as :func:`bag_frames` yields them. A frame without a
    prediction (lost on the way) is not scored and does not pair with its neighbours; it still
    reaches ``on_frame(frame, None, row)`` so that callers can mark it.
    """
    evaluator = Evaluator(class_names, options)
    for stamp_ns, frame in frames:
        prediction = predictions.get(stamp_ns)
        if prediction is None:
            evaluator.break_run()
            row = {"key": frame.key, "sequence": frame.sequence, "frame": frame.number}
        else:
            row = evaluator.add(frame, prediction)
        if on_frame is not None:
            on_frame(frame, prediction, row)
    return evaluator


def write_overlay(path: Path, frame: np.ndarray, labels: np.ndarray, ground_truth: np.ndarray | None,
                  palette_table: np.ndarray) -> None:
    """``labels`` over ``frame`` as a PNG; with ``ground_truth`` drawn the same way below it."""
    picture = overlay(frame, labels, palette_table)
    if ground_truth is not None:
        if ground_truth.shape != labels.shape:
            ground_truth = cv2.resize(ground_truth, labels.shape[::-1], interpolation=cv2.INTER_NEAREST)
        picture = np.concatenate([picture, overlay(frame, ground_truth, palette_table)], axis=0)
    # PNG keeps class boundaries crisp; level 1 compresses fast enough for 2048x1024 frames.
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])


def evaluate_folder(engine, images: str | Path | FrameFolder, options: EvaluationOptions | None = None, *,
                    save_overlays: str | Path | None = None, save_labels: str | Path | None = None,
                    progress: bool = True, command: str | None = None, checkpoint: str | None = None) -> dict:
    """Segment every frame of a folder and measure accuracy and TC; returns the report dict.

    Args:
        engine: a ready :class:`~video_seg_ros.engine.SegmentationEngine`.
        images: a :class:`FrameFolder`, or a folder path (no labels, all frames).
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

    folder = images if isinstance(images, FrameFolder) else FrameFolder(images)
    options = options or EvaluationOptions()
    overlay_dir = Path(save_overlays) if save_overlays else None
    labels_out = Path(save_labels) if save_labels else None
    for directory in (overlay_dir, labels_out):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(folder), desc="evaluating", unit="frame", disable=not progress)

    def on_frame(frame: EvalFrame, result, row: dict) -> None:
        if overlay_dir is not None:
            write_overlay(overlay_dir / f"{frame.key}_overlay.png", frame.rgb, result.labels, frame.label,
                          engine.palette_table)
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
        notes.insert(0, f"no label file under {folder.labels} matched a frame key (labels are matched "
                        "by file name)")
    if folder.skipped:
        notes.append(f"{len(folder.skipped)} unreadable frame(s) skipped")
    source = engine.checkpoint.source or {}
    report = {
        "checkpoint": checkpoint or str(source.get("path") or source.get("weights_file") or engine.model_name),
        "model": engine.model_name,
        "label_set": engine.checkpoint.label_set,
        "device": str(engine.device),
        "backend": engine.backend,
        "precision": engine.precision,
        "backend_fallback_reason": engine.fallback_reason,
        **{key: value for key, value in engine.describe().items()
           if key in ("requested_precision", "precision_reason", "precision_agreement", "precision_fallback", "cpu")},
        "upsample": engine.upsample,
        "temporal": engine.temporal.to_dict() if hasattr(engine, "temporal") else None,
        "images": str(folder.images),
        "labels": None if folder.labels is None else str(folder.labels),
        "label_format": folder.label_format if folder.labels is not None else None,
        **summary,
        "skipped": folder.skipped,
        "notes": notes,
        "per_frame": evaluator.per_frame,
        "command": command,
    }
    return report


def format_markdown(report: dict) -> str:
    """A short human-readable summary of an :func:`evaluate_folder` report (what the CLI prints)."""
    lines = [
        f"## Evaluation of {report['model']} ({report['checkpoint']})",
        "",
        "| frames | labelled | mIoU | pixel accuracy | TC | TC pairs | TC pixel agreement "
        "| ms/frame (median) | device |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {report['frames']} | {report['labelled_frames']} | {percent(report['miou'])} | "
        f"{percent(report['pixel_accuracy'])} | {percent(report['tc'])} | {report['tc_pairs']} | "
        f"{percent(report['tc_pixel_agreement'])} | {report['ms_per_frame']} | {report['device']} |",
        "",
        f"Ran on {report['device']}, backend {report['backend']}, precision {report['precision']} "
        f"({report.get('precision_reason') or 'no reason recorded'}); CPU {report.get('cpu') or 'unknown'}.",
    ]
    if report["per_class_iou"]:
        lines += ["", "| class | IoU | TC |", "|---|---|---|"]
        for name, value in report["per_class_iou"].items():
            lines.append(f"| {name} | {percent(value)} | {percent(report['tc_per_class'].get(name))} |")
    elif report["tc_per_class"]:
        lines += ["", "| class | TC |", "|---|---|"]
        for name, value in report["tc_per_class"].items():
            lines.append(f"| {name} | {percent(value)} |")
    temporal = report.get("temporal") or {}
    if temporal.get("mode", "off") != "off":
        share = percent(report["keyframe_share"], 1)
        lines += ["", f"Temporal {temporal['mode']} (fusion weight {temporal['fusion_weight']:g}, keyframe "
                      f"max interval {temporal['max_interval']}): network on {share} of the frames."]
    if len(report["sequences"]) > 1 and report["tc_pairs"]:
        lines += ["", "| sequence | frames | TC pairs | TC |", "|---|---|---|---|"]
        for name, sequence in report["sequences"].items():
            lines.append(f"| {name} | {sequence['frames']} | {sequence.get('tc_pairs', 0)} | "
                         f"{percent(sequence.get('tc'))} |")
    lines += [f"- skipped {entry['file']}: {entry['error']}" for entry in report.get("skipped", [])]
    lines += [f"- note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


__all__ = ["EvalFrame", "EvaluationOptions", "Evaluator", "FrameFolder", "bag_frames", "evaluate",
           "evaluate_folder", "evaluate_recording", "format_markdown", "percent", "write_overlay"]
