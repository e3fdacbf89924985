"""Per-camera counters and latency windows for the node's diagnostics, without ROS."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from video_seg_ros.stats import percentile


class StreamStats:
    """Thread-safe counters and latency windows of one camera stream, for diagnostics."""

    def __init__(self, window: int = 300, fps_window_s: float = 5.0):
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.skipped = 0  # not segmented because nobody subscribed to any output
        self.rejected: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()
        self.last_reset_reason = ""
        self.last_reject_reason = ""
        self.last_received_at: float | None = None  # time.monotonic() of the newest frame
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._keyframe_latency_ms: deque[float] = deque(maxlen=window)
        self._propagated_latency_ms: deque[float] = deque(
            maxlen=window
        )  # frames the network skipped
        self._model_ms: deque[float] = deque(maxlen=window)
        self._done_at: deque[float] = deque(maxlen=window)
        self._fps_window_s = fps_window_s
        self._at_snapshot = {"rejected": 0, "received": 0, "processed": 0, "skipped": 0}

    def on_received(self, dropped: int = 0, received_at: float | None = None) -> None:
        with self._lock:
            self.received += 1
            self.dropped += dropped
            self.last_received_at = time.monotonic() if received_at is None else received_at

    def on_dropped(self, count: int) -> None:
        with self._lock:
            self.dropped += count

    def on_skipped(self) -> None:
        with self._lock:
            self.skipped += 1

    def on_rejected(self, reason: str, message: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_reject_reason = message

    def on_reset(self, key: str, reason: str) -> None:
        with self._lock:
            self.resets[key] += 1
            self.last_reset_reason = reason

    def on_processed(
        self,
        latency_ms: float,
        model_ms: float,
        done_at: float | None = None,
        keyframe: bool = True,
    ) -> None:
        with self._lock:
            self.processed += 1
            self._latency_ms.append(latency_ms)
            (self._keyframe_latency_ms if keyframe else self._propagated_latency_ms).append(
                latency_ms
            )
            self._model_ms.append(model_ms)
            self._done_at.append(time.monotonic() if done_at is None else done_at)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """All figures at once; ``new_*`` count what happened since the previous snapshot."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._done_at if now - t <= self._fps_window_s]
            fps = (
                (len(recent) - 1) / (recent[-1] - recent[0])
                if len(recent) > 1 and recent[-1] > recent[0]
                else 0.0
            )
            totals = {
                "rejected": sum(self.rejected.values()),
                "received": self.received,
                "processed": self.processed,
                "skipped": self.skipped,
            }
            snapshot = {
                "received": self.received,
                "processed": self.processed,
                "dropped": self.dropped,
                "skipped": self.skipped,
                "rejected": totals["rejected"],
                "rejected_by_reason": dict(self.rejected),
                "last_reject_reason": self.last_reject_reason,
                **{f"new_{key}": value - self._at_snapshot[key] for key, value in totals.items()},
                "resets": sum(self.resets.values()),
                "resets_by_reason": dict(self.resets),
                "last_reset_reason": self.last_reset_reason,
                "seconds_since_frame": None
                if self.last_received_at is None
                else now - self.last_received_at,
                "fps": fps,
                "latency_p50_ms": percentile(self._latency_ms, 50),
                "latency_p95_ms": percentile(self._latency_ms, 95),
                "keyframe_latency_p50_ms": percentile(self._keyframe_latency_ms, 50),
                "propagated_latency_p50_ms": percentile(self._propagated_latency_ms, 50),
                "model_p50_ms": percentile(self._model_ms, 50),
                "model_p95_ms": percentile(self._model_ms, 95),
            }
            self._at_snapshot = totals
            return snapshot
