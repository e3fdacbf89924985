"""Segmentation metrics: confusion-matrix mIoU and ETC's temporal consistency (TC). No ROS here.

Accuracy
    :class:`ConfusionMatrix` accumulates (target, prediction) pixel counts over any number of
    frames, so mIoU is computed from dataset-level intersections and unions (the Cityscapes and
    ETC convention), not averaged per frame. A class whose union is empty (absent from every
    target *and* every prediction seen so far) has no defined IoU and is left out of the mean, as
    cityscapesScripts and ETC's ``np.nanmean`` do. A prediction of "no class" (id 255, e.g. the
    background channel of the ESPNet Cityscapes checkpoints) where the target has a class counts
    as a miss for that class.

Temporal consistency (Liu et al., "Efficient Semantic Video Segmentation with Per-frame
Inference", ECCV 2020)
    TC = mIoU between the prediction of frame t and the prediction of frame t+1 warped back onto
    frame t with optical flow, with intersections and unions accumulated over all consecutive
    pairs. We use OpenCV DIS flow (:class:`video_seg_ros.flow.DisFlow`) and warp label ids with
    nearest-neighbour sampling (:func:`video_seg_ros.flow.warp_labels`); the original code warps
    ids bilinearly and casts, which invents ids at class boundaries. Pixels whose source leaves
    the image, pixels either map calls unlabelled and (optionally) pixels the forward-backward
    check declares occluded are left out. IoU is symmetric in its two arguments, so which map
    plays "target" does not change TC.

:class:`OnlineConsistency` is the cheap per-frame variant the ROS node runs: it keeps only the
previous frame (grey, downscaled) and its labels, and measures the pair at a reduced width; it
reuses a flow computed elsewhere for the same pair (the engine's temporal fusion) when given one.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from video_seg_ros.flow import (
    DisFlow,
    occlusion_mask,
    reduced_size,
    resize_flow,
    to_gray,
    warp_labels,
)
from video_seg_ros.labels import IGNORE_ID


class ConfusionMatrix:
    """Pixel counts ``matrix[target, prediction]`` over ``num_classes`` classes.

    The matrix has one extra column, index ``num_classes``, for predictions outside the classes
    (255 or any id >= ``num_classes``): they are misses for the target class and belong to no
    prediction class.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def copy(self) -> "ConfusionMatrix":
        other = ConfusionMatrix(self.num_classes, self.class_names)
        other.matrix[:] = self.matrix
        return other

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add confusion matrices with different class counts")
        self.matrix += other.matrix
        return self

    def update(
        self,
        prediction: np.ndarray,
        target: np.ndarray,
        ignore: int = IGNORE_ID,
        valid: np.ndarray | None = None,
    ) -> "ConfusionMatrix":
        """Add one frame.

        Args:
            prediction: (H, W) integer class ids.
            target: (H, W) integer class ids; ``ignore`` pixels are not counted.
            ignore: the target's "unlabelled" id.
            valid: optional (H, W) bool mask; only True pixels are counted.

        Raises:
            ValueError: shapes differ, or the target holds an id that is neither a class nor
                ``ignore`` (usually a wrong label format).
        """
        prediction = np.asarray(prediction)
        target = np.asarray(target)
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {prediction.shape} and target {target.shape} differ in shape"
            )
        keep = target != ignore
        if valid is not None:
            if valid.shape != target.shape:
                raise ValueError(
                    f"valid mask {valid.shape} and target {target.shape} differ in shape"
                )
            keep &= valid
        target_ids = target[keep].astype(np.int64)
        if target_ids.size == 0:
            return self
        if target_ids.min() < 0 or target_ids.max() >= self.num_classes:
            bad = target_ids[(target_ids < 0) | (target_ids >= self.num_classes)][0]
            raise ValueError(
                f"target contains id {bad}, but there are {self.num_classes} classes (0.."
                f"{self.num_classes - 1}) plus ignore id {ignore}; check the label format "
                "(e.g. cityscapes-labelids for *_labelIds.png files)"
            )
        predicted_ids = prediction[keep].astype(np.int64)
        outside = (predicted_ids < 0) | (predicted_ids >= self.num_classes)
        predicted_ids[outside] = self.num_classes
        width = self.num_classes + 1
        counts = np.bincount(
            target_ids * width + predicted_ids, minlength=self.num_classes * width
        )
        self.matrix += counts.reshape(self.num_classes, width)
        return self

    # ---- results ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Counted pixels."""
        return int(self.matrix.sum())

    def intersections(self) -> np.ndarray:
        return np.diagonal(self.matrix[:, : self.num_classes]).astype(np.int64)

    def unions(self) -> np.ndarray:
        target_counts = self.matrix.sum(axis=1)
        predicted_counts = self.matrix[:, : self.num_classes].sum(axis=0)
        return target_counts + predicted_counts - self.intersections()

    def iou(self) -> np.ndarray:
        """(num_classes,) float64 IoU per class; NaN where the union is empty."""
        unions = self.unions()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(unions > 0, self.intersections() / np.maximum(unions, 1), np.nan)

    @property
    def miou(self) -> float | None:
        """Mean IoU over the classes with a non-empty union; None when nothing was counted."""
        iou = self.iou()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else None

    @property
    def pixel_accuracy(self) -> float | None:
        """Share of counted pixels whose prediction equals the target; None when none counted."""
        total = self.total
        return float(self.intersections().sum() / total) if total else None

    def per_class_iou(self) -> dict[str, float | None]:
        """Class name (or id as a string) -> IoU, None for classes with an empty union."""
        names = self.class_names or [str(c) for c in range(self.num_classes)]
        return {
            name: (None if np.isnan(value) else float(value))
            for name, value in zip(names, self.iou())
        }


# ---- temporal consistency ----------------------------------------------------------------------
def pair_consistency(
    labels_t: np.ndarray,
    labels_next: np.ndarray,
    flow_t_to_next: np.ndarray,
    num_classes: int,
    visible: np.ndarray | None = None,
    ignore: int = IGNORE_ID,
) -> ConfusionMatrix:
    """Confusion matrix between frame t's labels and frame t+1's labels warped back onto t.

    Args:
        labels_t, labels_next: (H, W) uint8 class ids of two consecutive frames.
        flow_t_to_next: (H, W, 2) float32 flow from frame t to frame t+1 (see :mod:`flow`).
        visible: optional (H, W) bool, False where a pixel of t is occluded in t+1.

    Pixels warped from outside the image and pixels unlabelled in either map are not counted.
    """
    if labels_t.shape != labels_next.shape or labels_t.shape != flow_t_to_next.shape[:2]:
        raise ValueError(
            f"labels {labels_t.shape}, {labels_next.shape} and flow "
            f"{flow_t_to_next.shape[:2]} must have the same size"
        )
    warped = warp_labels(
        np.ascontiguousarray(labels_next, dtype=np.uint8), flow_t_to_next, fill=ignore
    )
    valid = warped != ignore
    if visible is not None:
        valid &= visible
    return ConfusionMatrix(num_classes).update(warped, labels_t, ignore=ignore, valid=valid)


class TemporalConsistency:
    """ETC's TC over a dataset: feed consecutive pairs, read :attr:`tc` (dataset-level mIoU).

    Args:
        num_classes: number of classes of the label maps.
        preset: DIS preset (``ultrafast``, ``fast``, ``medium``).
        flow_width: frames wider than this are downscaled for the flow computation (the flow is
            scaled back; labels are warped at full resolution). ``None`` = full resolution.
        occlusion: leave out pixels failing the forward-backward check (costs a second flow).
        class_names: names for :meth:`per_class`.
    """

    def __init__(
        self,
        num_classes: int,
        preset: str = "ultrafast",
        flow_width: int | None = 1024,
        occlusion: bool = False,
        class_names: list[str] | None = None,
    ):
        self.flow = DisFlow(preset, max_width=flow_width)
        self.occlusion = occlusion
        self.matrix = ConfusionMatrix(num_classes, class_names)
        self.pairs = 0
        self.flow_ms: list[float] = []

    def update(
        self,
        frame_t: np.ndarray,
        frame_next: np.ndarray,
        labels_t: np.ndarray,
        labels_next: np.ndarray,
    ) -> float | None:
        """Add one consecutive pair of frames (uint8 RGB/BGR/grey) and labels; returns its TC."""
        start = time.perf_counter()
        flow = self.flow(frame_t, frame_next)
        visible = occlusion_mask(flow, self.flow(frame_next, frame_t)) if self.occlusion else None
        self.flow_ms.append((time.perf_counter() - start) * 1000.0)
        return self.update_with_flow(labels_t, labels_next, flow, visible)

    def update_with_flow(
        self,
        labels_t: np.ndarray,
        labels_next: np.ndarray,
        flow: np.ndarray,
        visible: np.ndarray | None = None,
    ) -> float | None:
        """Add one pair with a known flow t -> t+1; returns that pair's TC."""
        pair = pair_consistency(labels_t, labels_next, flow, self.matrix.num_classes, visible)
        self.matrix += pair
        self.pairs += 1
        return pair.miou

    @property
    def tc(self) -> float | None:
        """Dataset-level TC (None before any pair with labelled pixels)."""
        return self.matrix.miou

    def per_class(self) -> dict[str, float | None]:
        return self.matrix.per_class_iou()


@dataclass
class ConsistencySample:
    """What :meth:`OnlineConsistency.update` measured on one pair of frames."""

    tc: float | None  # this pair's TC (None: no labelled pixel survived the warp)
    running_tc: float | None  # accumulated over the pairs since reset (or the last ``window``)
    pairs: int  # pairs in the running value
    compute_ms: float  # flow + warp + counting, milliseconds


class OnlineConsistency:
    """Per-frame TC for a live stream, cheap enough to run beside the segmenter.

    Call :meth:`update` with every frame and its labels. Every ``stride``-th frame is compared
    with the frame just before it (consecutive frames, as TC is defined), at a width of at most
    ``max_width`` pixels: the previous frame is kept only as a downscaled grey image with its
    downscaled labels. A frame of a different size than the previous one, or :meth:`reset`,
    starts afresh. Besides the running value, :attr:`recent_tc` covers the last ``recent`` pairs
    (the node's flicker warning).

    Args:
        num_classes: number of classes of the label maps.
        stride: measure every ``stride``-th frame (1 = every frame).
        max_width: width at which flow is computed and labels are warped.
        preset: DIS preset.
        occlusion: leave out occluded pixels (forward-backward check, doubles the flow cost).
        window: running TC over the last ``window`` measured pairs; ``None`` = since reset.
        recent: pairs in :attr:`recent_tc`.
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 1,
        max_width: int = 320,
        preset: str = "ultrafast",
        occlusion: bool = False,
        window: int | None = None,
        recent: int = 20,
    ):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if max_width < 16:
            raise ValueError(f"max_width must be at least 16 pixels, got {max_width}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.recent = int(recent)
        #: Flows this metric computed itself (a flow handed to :meth:`update` is not counted).
        self.flows_computed = 0
        self.num_classes = int(num_classes)
        self.stride = int(stride)
        self.max_width = int(max_width)
        self.occlusion = occlusion
        self.window = window
        self._flow = DisFlow(preset)
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame and the running value."""
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (grey, labels), small
        self._previous_size: tuple[int, int] | None = None
        self._frames = 0
        self._running = PairWindow(self.num_classes, self.window)
        self._recent = PairWindow(self.num_classes, self.recent)
        self.pairs = 0
        self.last: ConsistencySample | None = None

    @property
    def running_tc(self) -> float | None:
        return self._running.total.miou

    @property
    def recent_tc(self) -> float | None:
        """TC over the last ``recent`` measured pairs (None before any)."""
        return self._recent.total.miou

    @property
    def recent_pairs(self) -> int:
        return len(self._recent)

    def update(
        self, frame: np.ndarray, labels: np.ndarray, flow_to_previous: np.ndarray | None = None
    ) -> ConsistencySample | None:
        """Feed one frame ((H, W, 3) or (H, W) uint8) and its (H, W) labels.

        ``flow_to_previous``: optional (h, w, 2) flow from this frame to the frame fed before it,
        at any resolution (e.g. :attr:`SegmentationResult.flow`); a measured pair then uses it
        instead of computing its own (not with ``occlusion``, which needs both directions). The
        pair is then measured on this frame's pixel grid (IoU is symmetric, so TC means the same).

        Returns the measurement when this frame was compared with the previous one, else None.
        """
        if frame.shape[:2] != labels.shape[:2]:
            raise ValueError(
                f"frame {frame.shape[:2]} and labels {labels.shape[:2]} differ in size"
            )
        size = frame.shape[:2]
        if size != self._previous_size:
            self._previous = None
            self._frames = 0
        self._previous_size = size
        index = self._frames
        self._frames += 1
        due = index > 0 and index % self.stride == 0
        keep_for_next = (index + 1) % self.stride == 0
        if not due and not keep_for_next:
            self._previous = None
            return None

        start = time.perf_counter()
        grey, small_labels = self._shrink(frame, labels)
        sample = None
        if due and self._previous is not None:
            previous_grey, previous_labels = self._previous
            if flow_to_previous is not None and not self.occlusion:
                flow = resize_flow(flow_to_previous, grey.shape)
                pair = pair_consistency(small_labels, previous_labels, flow, self.num_classes)
            else:
                flow = self._flow(previous_grey, grey)
                visible = (
                    occlusion_mask(flow, self._flow(grey, previous_grey))
                    if self.occlusion
                    else None
                )
                self.flows_computed += 2 if self.occlusion else 1
                pair = pair_consistency(
                    previous_labels, small_labels, flow, self.num_classes, visible
                )
            self._accumulate(pair)
            sample = ConsistencySample(
                pair.miou,
                self._running.total.miou,
                len(self._running) if self.window else self.pairs,
                (time.perf_counter() - start) * 1000.0,
            )
            self.last = sample
        self._previous = (grey, small_labels) if keep_for_next else None
        return sample

    def _shrink(self, frame, labels):
        grey = to_gray(frame)
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        size = reduced_size(*grey.shape, self.max_width)
        if size is not None:
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(grey), labels

    def _accumulate(self, pair: ConfusionMatrix) -> None:
        self.pairs += 1
        self._running.add(pair)
        self._recent.add(pair)


class PairWindow:
    """The summed confusion matrix (``total``) of the last ``size`` pairs added (None: all of
    them)."""

    def __init__(self, num_classes: int, size: int | None):
        self.size = size
        self.total = ConfusionMatrix(num_classes)
        self._pairs: deque[ConfusionMatrix] = deque()

    def add(self, pair: ConfusionMatrix) -> None:
        self.total += pair
        if self.size is not None:
            self._pairs.append(pair)
            if len(self._pairs) > self.size:
                self.total.matrix -= self._pairs.popleft().matrix

    def __len__(self) -> int:
        """Pairs in the window (those kept; 0 for an unbounded window)."""
        return len(self._pairs)
