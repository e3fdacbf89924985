"""Everything the node does that does not need ROS: queueing, reset policy, segmentation, stats.

:mod:`video_seg_ros.ros.node` is a thin rclpy adapter over :class:`StreamPipeline`; this module
imports no ROS package, so its behaviour is tested in plain pytest (test/test_node_pipeline.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.labels import colorize, overlay


class FrameQueue:
    """Bounded hand-over from the DDS callback to the worker thread; never blocks the producer.

    With ``capacity=1`` (keep-latest) a new frame replaces the one still waiting, so the worker
    always takes the newest frame and latency does not grow when frames arrive faster than they
    are processed. With a larger capacity the oldest waiting frame is dropped when full.
    ``on_drop(dropped, successor)`` (called under the queue's lock) lets the next waiting item
    inherit what the dropped one knew, e.g. the input gap before it.
    """

    def __init__(self, capacity: int = 1, on_drop: Callable[[Any, Any], None] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._on_drop = on_drop
        self._items: deque = deque()
        self._condition = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> int:
        """Add ``item``; returns how many waiting items were dropped to make room (0 or 1)."""
        with self._condition:
            dropped = 0
            if len(self._items) >= self.capacity:
                oldest = self._items.popleft()
                dropped = 1
                if self._on_drop is not None:
                    self._on_drop(oldest, self._items[0] if self._items else item)
            self._items.append(item)
            self._condition.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest waiting item, or None on timeout or after :meth:`close`."""
        with self._condition:
            if not self._items and not self._closed:
                self._condition.wait(timeout)
            if self._closed or not self._items:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return len(self._items)


class ResetPolicy:
    """Decides when temporal state must be dropped, from each frame's stamp, size and encoding.

    The gap rule looks at the camera stream, not at the processed frames: pass ``input_gap_s``,
    the largest stamp difference between consecutive *received* frames since the previous processed
    one, so that frames the node skips on a slow device do not count as a gap. Without it the
    difference to the previous processed stamp is used.

    :meth:`check` returns ``(key, message)`` -- key one of ``size_change``, ``encoding_change``,
    ``time_backwards``, ``gap`` (counted in diagnostics), message for the log -- or None.
    ``gap_s <= 0`` disables the gap rule.
    """

    def __init__(self, gap_s: float = 1.0):
        self.gap_s = gap_s
        self._last: tuple[float, tuple[int, int], str] | None = None

    def check(self, stamp_s: float, size: tuple[int, int], encoding: str,
              input_gap_s: float | None = None) -> tuple[str, str] | None:
        last, self._last = self._last, (stamp_s, size, encoding)
        if last is None:
            return None
        last_stamp, last_size, last_encoding = last
        if size != last_size:
            return "size_change", f"image size changed {last_size[1]}x{last_size[0]} -> {size[1]}x{size[0]}"
        if encoding != last_encoding:
            return "encoding_change", f"encoding changed {last_encoding} -> {encoding}"
        if stamp_s < last_stamp:
            return "time_backwards", f"time jumped backwards by {last_stamp - stamp_s:.3f} s"
        gap = stamp_s - last_stamp if input_gap_s is None else input_gap_s
        if self.gap_s > 0 and gap > self.gap_s:
            return "gap", f"gap of {gap:.3f} s between frames (reset_on_gap_s={self.gap_s:g})"
        return None

    def forget(self) -> None:
        self._last = None


def percentile(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


class StreamStats:
    """Thread-safe counters and latency windows for diagnostics."""

    def __init__(self, window: int = 300, fps_window_s: float = 5.0):
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.rejected: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()
        self.last_reset_reason = ""
        self.last_reject_reason = ""
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._model_ms: deque[float] = deque(maxlen=window)
        self._done_at: deque[float] = deque(maxlen=window)
        self._fps_window_s = fps_window_s
        self._rejected_at_snapshot = 0

    def on_received(self, dropped: int = 0) -> None:
        with self._lock:
            self.received += 1
            self.dropped += dropped

    def on_rejected(self, reason: str, message: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_reject_reason = message

    def on_reset(self, key: str, reason: str) -> None:
        with self._lock:
            self.resets[key] += 1
            self.last_reset_reason = reason

    def on_processed(self, latency_ms: float, model_ms: float, done_at: float | None = None) -> None:
        with self._lock:
            self.processed += 1
            self._latency_ms.append(latency_ms)
            self._model_ms.append(model_ms)
            self._done_at.append(time.monotonic() if done_at is None else done_at)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """All figures at once; ``new_rejections`` counts rejections since the previous snapshot."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._done_at if now - t <= self._fps_window_s]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            total_rejected = sum(self.rejected.values())
            snapshot = {
                "received": self.received,
                "processed": self.processed,
                "dropped": self.dropped,
                "rejected": total_rejected,
                "rejected_by_reason": dict(self.rejected),
                "last_reject_reason": self.last_reject_reason,
                "new_rejections": total_rejected - self._rejected_at_snapshot,
                "resets": sum(self.resets.values()),
                "resets_by_reason": dict(self.resets),
                "last_reset_reason": self.last_reset_reason,
                "fps": fps,
                "latency_p50_ms": percentile(self._latency_ms, 50),
                "latency_p95_ms": percentile(self._latency_ms, 95),
                "model_p50_ms": percentile(self._model_ms, 50),
                "model_p95_ms": percentile(self._model_ms, 95),
            }
            self._rejected_at_snapshot = total_rejected
            return snapshot


@dataclass
class OutputRequest:
    """Which optional outputs to compute for one frame (the node asks only for subscribed ones)."""

    color: bool = False
    overlay: bool = False
    overlay_alpha: float = 0.5
    confidence: bool = False


@dataclass
class StreamResult:
    labels: np.ndarray                      # (H, W) uint8
    model_ms: float
    confidence: np.ndarray | None = None    # (H, W) float32
    reset: tuple[str, str] | None = None    # (key, message): why state was cleared before this frame
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # "color", "overlay": (H, W, 3) RGB


class StreamPipeline:
    """One camera stream through one engine: reset policy, temporal-state switch, outputs, TC.

    Not thread-safe by itself: the node calls it from its single worker thread; :meth:`request_reset`
    may be called from any thread and takes effect before the next frame.
    """

    def __init__(self, engine: SegmentationEngine, reset_gap_s: float = 1.0,
                 temporal_state: bool = True, consistency=None):
        self.engine = engine
        self.policy = ResetPolicy(reset_gap_s)
        self.temporal_state = temporal_state
        self.consistency = consistency  # an OnlineConsistency or None
        self._pending_reset: tuple[str, str] | None = None

    def request_reset(self, key: str, message: str) -> None:
        self._pending_reset = (key, message)

    def reset(self) -> None:
        """Clear the model's memory and the running consistency metric."""
        self.engine.reset()
        if self.consistency is not None:
            self.consistency.reset()

    def segment(self, frame: Frame, stamp_s: float, request: OutputRequest | None = None,
                input_gap_s: float | None = None) -> StreamResult:
        """Segment one decoded frame; resets state first when the policy or a request says so.

        ``input_gap_s``: see :class:`ResetPolicy`.
        """
        request = request or OutputRequest()
        requested, self._pending_reset = self._pending_reset, None
        from_policy = self.policy.check(stamp_s, frame.pixels.shape[:2], frame.encoding, input_gap_s)
        reason = requested or from_policy
        if reason is not None:
            self.reset()
        elif self.engine.is_temporal and not self.temporal_state:
            self.engine.reset()  # memory switched off: every frame starts from scratch
        result = self.engine.segment(frame.pixels, frame.channel_order, with_confidence=request.confidence)
        return StreamResult(result.labels, result.model_ms, result.confidence, reason)

    def render(self, frame: Frame, result: StreamResult, request: OutputRequest) -> None:
        """Colour / overlay views of ``result`` (RGB), stored in ``result.extras``."""
        table = self.engine.palette_table
        if request.color:
            result.extras["color"] = colorize(result.labels, table)
        if request.overlay:
            result.extras["overlay"] = overlay(np.ascontiguousarray(frame.rgb()), result.labels, table,
                                               request.overlay_alpha)

    def measure(self, frame: Frame, labels: np.ndarray):
        """Feed the online TC metric; returns its ConsistencySample when this frame was measured."""
        if self.consistency is None:
            return None
        return self.consistency.update(frame.pixels, labels)
