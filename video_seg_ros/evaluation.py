"""The one evaluator: accuracy (mIoU) and temporal consistency (TC) of predictions on frame
sequences.

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
  pairs (:class:`~video_seg_ros.metrics.TemporalConsistency`); settings in
  :class:`EvaluationOptions`.
- **One unit**: every figure is a fraction 0..1 in Python and in JSON; :func:`percent` formats one
  for printing.

Frames come from :mod:`video_seg_ros.streams` (folders, bags, videos, the synthetic street); the
report around the figures (files, overlays, Markdown) is :mod:`video_seg_ros.evaluation_report`.

Example::

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.evaluation import EvaluationOptions, evaluate
    from video_seg_ros.streams import open_stream

    frames = open_stream("frames/", labels="gtFine/", label_format="trainids")
    evaluator = evaluate(SegmentationEngine("espnet_city.pt"), frames, EvaluationOptions())
    print(evaluator.miou, evaluator.tc)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency
from video_seg_ros.streams import Frame


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
            raise ValueError(
                f"unknown flow preset {self.flow_preset!r}; choose one of {sorted(DIS_PRESETS)}"
            )
        if self.flow_width is not None and self.flow_width < 16:
            raise ValueError(
                f"flow_width must be at least 16 pixels or None, got {self.flow_width}"
            )

    def tc_settings(self) -> dict | None:
        """What a report records next to a TC figure (None when TC is off)."""
        if not self.tc:
            return None
        return {
            "flow": "opencv-dis",
            "preset": self.flow_preset,
            "flow_width": self.flow_width,
            "occlusion_mask": self.occlusion,
            "max_frame_gap": self.max_frame_gap,
            "label_warp": "nearest",
        }


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
        self.consistency = (
            TemporalConsistency(
                num_classes,
                self.options.flow_preset,
                self.options.flow_width,
                self.options.occlusion,
                self.class_names,
            )
            if self.options.tc
            else None
        )
        self.per_frame: list[dict] = []
        self.sequences: dict[str, dict] = {}
        self.resized_predictions = 0
        self.model_ms: list[float] = []
        self.keyframes = 0  # frames on which the network ran (engine's temporal clock) ...
        self.clocked = 0  # ... out of the frames that said whether it did
        self._previous: tuple[Frame, np.ndarray] | None = None
        self._sequence_tc: dict[str, ConfusionMatrix] = {}

    # ---- the pairing rule -------------------------------------------------------------------
    def continues(self, frame: Frame) -> bool:
        """Whether ``frame`` pairs with the frame fed before it (same sequence, frame-number step
        1..max_frame_gap, same size). A frame that does not starts a new run."""
        if self._previous is None:
            return False
        previous = self._previous[0]
        step = frame.number - previous.number
        return (
            frame.sequence == previous.sequence
            and 0 < step <= self.options.max_frame_gap
            and frame.rgb.shape == previous.rgb.shape
        )

    def break_run(self) -> None:
        """Forget the previous frame: the next one will not pair with it (e.g. a frame was
        lost)."""
        self._previous = None

    # ---- feeding ----------------------------------------------------------------------------
    def add(
        self,
        frame: Frame,
        prediction: np.ndarray,
        model_ms: float | None = None,
        keyframe: bool | None = None,
    ) -> dict:
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
                scored = cv2.resize(
                    prediction, frame.label.shape[::-1], interpolation=cv2.INTER_NEAREST
                )
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
            row["tc_from_previous"] = _round(
                self.consistency.update(
                    previous_frame.rgb, frame.rgb, previous_prediction, prediction
                )
            )
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
            "per_class_iou": (
                {k: _round(v) for k, v in self.accuracy.per_class_iou().items()}
                if labelled
                else {}
            ),
            "tc": _round(self.tc),
            "tc_pairs": self.tc_pairs,
            # Share of compared pixels whose class survives the warp: unlike TC, not dominated by
            # rare classes that flicker on a few pixels.
            "tc_pixel_agreement": _round(consistency.matrix.pixel_accuracy)
            if consistency is not None
            else None,
            "tc_per_class": (
                {k: _round(v) for k, v in consistency.per_class().items()}
                if consistency is not None and consistency.pairs
                else {}
            ),
            "tc_settings": self.options.tc_settings(),
            "ms_per_frame": _round(statistics.median(self.model_ms), 2) if self.model_ms else None,
            "keyframe_share": _round(self.keyframes / self.clocked) if self.clocked else None,
            "flow_ms_per_pair": (
                _round(statistics.median(consistency.flow_ms), 2)
                if consistency is not None and consistency.flow_ms
                else None
            ),
            "sequences": sequences,
            "notes": self.notes(),
        }

    def notes(self) -> list[str]:
        notes = []
        if self.resized_predictions:
            notes.append(
                f"{self.resized_predictions} label image(s) differ in size from their frame; "
                "predictions were resized (nearest) to the label size"
            )
        if self.consistency is not None and not self.consistency.pairs:
            notes.append(
                f"no consecutive frames (frame-number step <= max_frame_gap "
                f"{self.options.max_frame_gap}) within a sequence, so no TC"
            )
        return notes


def evaluate(
    engine,
    frames: Iterable[Frame],
    options: EvaluationOptions | None = None,
    on_frame: Callable[[Frame, object, dict], None] | None = None,
) -> Evaluator:
    """Segment ``frames`` (in temporal order) with ``engine`` and score them.

    The engine's temporal state (model memory, fused probabilities, keyframe clock) is reset
    wherever a frame does not pair with the one before it.

    Args:
        engine: a :class:`~video_seg_ros.engine.SegmentationEngine`.
        frames: :class:`~video_seg_ros.streams.Frame` items (e.g. a stream), in temporal
            order within each sequence.
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
        row = evaluator.add(
            frame, result.labels, result.model_ms, getattr(result, "keyframe", None)
        )
        if on_frame is not None:
            on_frame(frame, result, row)
    return evaluator


def evaluate_recording(
    frames: Iterable[Frame],
    predictions: dict[int, np.ndarray],
    class_names: list[str],
    options: EvaluationOptions | None = None,
    on_frame: Callable[[Frame, np.ndarray | None, dict], None] | None = None,
) -> Evaluator:
    """Score predictions made elsewhere (e.g. recorded from the node), keyed by frame stamp.

    ``frames``: :class:`~video_seg_ros.streams.Frame` items with ``stamp_ns`` (a
    :class:`~video_seg_ros.streams.BagStream`). A frame without a prediction (lost on the way)
    is not scored and does not pair with its neighbours; it still reaches
    ``on_frame(frame, None, row)`` so that callers can mark it.
    """
    evaluator = Evaluator(class_names, options)
    for frame in frames:
        prediction = predictions.get(frame.stamp_ns)
        if prediction is None:
            evaluator.break_run()
            row = {"key": frame.key, "sequence": frame.sequence, "frame": frame.number}
        else:
            row = evaluator.add(frame, prediction)
        if on_frame is not None:
            on_frame(frame, prediction, row)
    return evaluator


__all__ = [
    "EvaluationOptions",
    "Evaluator",
    "evaluate",
    "evaluate_recording",
    "percent",
]
