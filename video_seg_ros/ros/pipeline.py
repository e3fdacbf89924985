"""Everything the node does that does not need ROS: queueing, reset policy, segmentation, stats.

:mod:`video_seg_ros.ros.node` is a thin rclpy adapter over :class:`StreamPipeline`; this module
imports no ROS package, so its behaviour is tested in plain pytest (test/test_node_pipeline.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.labels import colorize, overlay
from video_seg_ros.stats import percentile  # noqa: F401 (re-exported for older imports)


class FrameQueue:
    """Bounded hand-over from the DDS callbacks to the worker thread; never blocks the producer.

    One queue of ``capacity`` items per stream (camera), all under one lock, so a single worker
    can wait for "a frame from any camera". With ``capacity=1`` (keep-latest) a new frame replaces
    the one of the same stream still waiting, so the worker always takes the newest frame and
    latency does not grow when frames arrive faster than they are processed. With a larger
    capacity the oldest waiting frame of that stream is dropped when full.
    ``on_drop(dropped, successor)`` (called under the queue's lock) lets the next waiting item of
    the stream inherit what the dropped one knew, e.g. the input gap before it.
    """

    def __init__(self, capacity: int = 1, on_drop: Callable[[Any, Any], None] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._on_drop = on_drop
        self._items: dict[Hashable, deque] = {}
        self._condition = threading.Condition()
        self._closed = False

    def put(self, item: Any, stream: Hashable = None) -> int:
        """Add ``item`` to ``stream``; returns how many waiting items were dropped to make room
        (0 or 1)."""
        with self._condition:
            items = self._items.setdefault(stream, deque())
            dropped = 0
            if len(items) >= self.capacity:
                oldest = items.popleft()
                dropped = 1
                if self._on_drop is not None:
                    self._on_drop(oldest, items[0] if items else item)
            items.append(item)
            self._condition.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest waiting item of the first stream that has one, or None on timeout or after
        :meth:`close`."""
        batch = self.get_batch(timeout, max_items=1)
        return batch[0][1] if batch else None

    def get_batch(
        self, timeout: float | None = None, max_items: int | None = None
    ) -> list[tuple[Hashable, Any]]:
        """``(stream, item)`` for the oldest waiting item of every stream that has one (a stream's
        frames must be segmented one after the other, so one per stream); [] on timeout or after
        :meth:`close`."""
        with self._condition:
            if not self._closed and not any(self._items.values()):
                self._condition.wait(timeout)
            if self._closed:
                return []
            batch = [(stream, items.popleft()) for stream, items in self._items.items() if items]
            return batch[:max_items] if max_items else batch

    def clear(self) -> dict[Hashable, int]:
        """Drop every waiting item (e.g. on lifecycle deactivate); returns how many were dropped
        per stream (streams with none left out), so each camera can count its own drops."""
        with self._condition:
            counts = {stream: len(items) for stream, items in self._items.items() if items}
            for items in self._items.values():
                items.clear()
            return counts

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return sum(len(items) for items in self._items.values())


def merge_input_gaps(dropped_gap_s: float, successor_gap_s: float) -> float:
    """The input gap a frame carries when the frame before it is dropped from the queue.

    The dropped frame's gap still happened before the next processed frame (the larger one
    counts), but a backwards jump (a looping bag) among dropped frames must not be hidden by
    later forward gaps: a negative gap wins.
    """
    smaller = min(dropped_gap_s, successor_gap_s)
    return smaller if smaller < 0 else max(dropped_gap_s, successor_gap_s)


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

    def check(
        self,
        stamp_s: float,
        size: tuple[int, int],
        encoding: str,
        input_gap_s: float | None = None,
    ) -> tuple[str, str] | None:
        last, self._last = self._last, (stamp_s, size, encoding)
        if last is None:
            return None
        last_stamp, last_size, last_encoding = last
        if size != last_size:
            return (
                "size_change",
                f"image size changed {last_size[1]}x{last_size[0]} -> {size[1]}x{size[0]}",
            )
        if encoding != last_encoding:
            return "encoding_change", f"encoding changed {last_encoding} -> {encoding}"
        if stamp_s < last_stamp:
            return "time_backwards", f"time jumped backwards by {last_stamp - stamp_s:.3f} s"
        if input_gap_s is not None and input_gap_s < 0:  # a loop among frames skipped since
            return "time_backwards", f"time jumped backwards by {-input_gap_s:.3f} s in between"
        gap = stamp_s - last_stamp if input_gap_s is None else input_gap_s
        if self.gap_s > 0 and gap > self.gap_s:
            return "gap", f"gap of {gap:.3f} s between frames (reset_on_gap_s={self.gap_s:g})"
        return None

    def forget(self) -> None:
        self._last = None


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


@dataclass
class OutputRequest:
    """Which optional outputs to compute for one frame (the node asks only for subscribed ones)."""

    color: bool = False
    overlay: bool = False
    overlay_alpha: float = 0.5
    confidence: bool = False


@dataclass
class StreamResult:
    labels: np.ndarray  # (H, W) uint8
    model_ms: float
    confidence: np.ndarray | None = None  # (H, W) float32
    reset: tuple[str, str] | None = None  # (key, message): why state was cleared before this frame
    extras: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # "color", "overlay": (H, W, 3) RGB
    keyframe: bool = True  # the network ran on this frame (see video_seg_ros.temporal)
    flow: np.ndarray | None = None  # (h, w, 2) flow to the previous frame, from temporal fusion
    tc: float | None = None  # online TC of this frame, when it was measured


@dataclass
class StreamItem:
    """One frame of one stream for :func:`segment_streams` / :meth:`NodePipeline.process`."""

    pipeline: "StreamPipeline"
    frame: Frame
    stamp_s: float
    request: OutputRequest | None = None
    input_gap_s: float | None = None  # see ResetPolicy


class StreamPipeline:
    """One camera stream through a (possibly shared) engine: reset policy, temporal-state switch,
    outputs, TC.

    ``stream`` is the key of this camera's temporal state in the engine (``None``: the engine's
    default stream, the single-camera case): model memory, fused probabilities, keyframe clock.
    Several pipelines on one engine are segmented as one batch by :func:`segment_streams`, each
    frame with its own stream's state. ``temporal_state=False`` empties the model memory before
    every frame (the fusion of :mod:`video_seg_ros.temporal` is switched by the engine's mode).

    Not thread-safe by itself: the node calls it from its single worker thread;
    :meth:`request_reset` may be called from any thread and takes effect before the next frame.
    """

    def __init__(
        self,
        engine: SegmentationEngine,
        reset_gap_s: float = 1.0,
        temporal_state: bool = True,
        consistency=None,
        stream: Hashable = None,
    ):
        self.engine = engine
        self.stream = stream
        self.policy = ResetPolicy(reset_gap_s)
        self.temporal_state = temporal_state
        self.consistency = consistency  # an OnlineConsistency or None
        #: Frames this stream's temporal state has seen since it was last cleared (diagnostics).
        self.frames_since_reset = 0
        self._pending_reset: tuple[str, str] | None = None
        self._measuring = True  # consistency_metric as last applied

    def request_reset(self, key: str, message: str) -> None:
        self._pending_reset = (key, message)

    def reset(self) -> None:
        """Clear this stream's whole temporal state (model memory, fused probabilities, keyframe
        clock) and running consistency metric (not other streams')."""
        if self.stream is None:
            self.engine.reset()
        else:
            self.engine.reset(self.stream)
        self.frames_since_reset = 0
        if self.consistency is not None:
            self.consistency.reset()

    def start_over(self) -> None:
        """Clear the temporal state and forget the last frame, so the next frame starts a new
        stream (not a "gap"), e.g. after the node was deactivated."""
        self.reset()
        self.policy.forget()

    def prepare(
        self, frame: Frame, stamp_s: float, input_gap_s: float | None = None
    ) -> tuple[str, str] | None:
        """Apply the reset policy (and pending requests) before ``frame`` is segmented; returns
        why the state was cleared, or None. ``input_gap_s``: see :class:`ResetPolicy`."""
        requested, self._pending_reset = self._pending_reset, None
        from_policy = self.policy.check(
            stamp_s, frame.pixels.shape[:2], frame.encoding, input_gap_s
        )
        reason = requested or from_policy
        if reason is not None:
            self.reset()
        elif self.engine.is_temporal and not self.temporal_state:
            # Memory switched off: every frame starts from scratch (fused probabilities stay).
            self.engine.reset(self.stream, memory_only=True)
        return reason

    def segment(
        self,
        frame: Frame,
        stamp_s: float,
        request: OutputRequest | None = None,
        input_gap_s: float | None = None,
    ) -> StreamResult:
        """Segment one decoded frame; resets state first when the policy or a request says so."""
        return segment_streams([StreamItem(self, frame, stamp_s, request, input_gap_s)])[0]

    def apply(self, settings: dict) -> None:
        """Take the run-time changeable node settings (``reset_on_gap_s``, ``temporal_state``,
        ``consistency_stride``, ``consistency_metric``) from the node's parameter values."""
        self.policy.gap_s = settings["reset_on_gap_s"]
        self.temporal_state = settings["temporal_state"]
        if self.consistency is not None:
            if settings["consistency_metric"] and not self._measuring:
                self.consistency.reset()  # its previous frame is stale
            self.consistency.stride = settings["consistency_stride"]
        self._measuring = settings["consistency_metric"]

    def render(self, frame: Frame, result: StreamResult, request: OutputRequest) -> None:
        """Colour / overlay views of ``result`` (RGB), stored in ``result.extras``."""
        table = self.engine.palette_table
        if request.color:
            result.extras["color"] = colorize(result.labels, table)
        if request.overlay:
            result.extras["overlay"] = overlay(
                np.ascontiguousarray(frame.rgb()), result.labels, table, request.overlay_alpha
            )

    def measure(self, frame: Frame, labels: np.ndarray, flow: np.ndarray | None = None):
        """Feed the online TC metric; returns its ConsistencySample when this frame was measured.

        ``flow``: the engine's flow of this frame to the previous one (``StreamResult.flow``), so
        that the metric does not compute a second flow for the same pair."""
        if self.consistency is None:
            return None
        return self.consistency.update(frame.pixels, labels, flow)


def _as_item(item) -> StreamItem:
    # ``(pipeline, frame, stamp_s, request, input_gap_s)`` tuples are still taken (older callers).
    return item if isinstance(item, StreamItem) else StreamItem(*item)


def _check_one_engine(items: list[StreamItem]) -> SegmentationEngine:
    engine = items[0].pipeline.engine
    if any(item.pipeline.engine is not engine for item in items):
        raise ValueError("segment_streams needs pipelines of one engine")
    streams = [item.pipeline.stream for item in items]
    if len(set(streams)) != len(streams):
        raise ValueError("segment_streams takes at most one frame per stream")
    return engine


def _segment_prepared(
    engine: SegmentationEngine, items: list[StreamItem], resets: list
) -> list[StreamResult]:
    """The batch of items whose reset policy already ran (``resets``: what it returned)."""
    frames = [item.frame for item in items]
    orders = {frame.channel_order for frame in frames}
    order = orders.pop() if len(orders) == 1 else "rgb"
    pixels = [
        frame.pixels if frame.channel_order == order else np.ascontiguousarray(frame.rgb())
        for frame in frames
    ]
    with_confidence = any(item.request is not None and item.request.confidence for item in items)
    stamps = [item.stamp_s for item in items]
    streams = [item.pipeline.stream for item in items]
    if streams == [None]:  # one camera: the engine's default stream, exactly as before
        outputs = engine.segment_batch(
            pixels, order, with_confidence=with_confidence, stamps=stamps
        )
    else:
        outputs = engine.segment_batch(
            pixels, order, with_confidence=with_confidence, streams=streams, stamps=stamps
        )
    results = []
    for item, output, reset in zip(items, outputs, resets):
        item.pipeline.frames_since_reset += 1
        wanted = item.request is not None and item.request.confidence
        confidence = output.confidence if wanted else None
        results.append(
            StreamResult(
                output.labels,
                output.model_ms,
                confidence,
                reset,
                keyframe=output.keyframe,
                flow=output.flow,
            )
        )
    return results


def segment_streams(items) -> list[StreamResult]:
    """Segment one frame of each of several streams of one engine as one batch.

    ``items``: :class:`StreamItem` s, at most one per stream (a stream's frames are consecutive
    in time, so they cannot share a batch). Each pipeline's reset policy runs first; the engine
    keeps each stream's temporal memory apart (``segment_batch(..., streams=...)``); frames may
    differ in size.
    """
    items = [_as_item(item) for item in items]
    if not items:
        return []
    engine = _check_one_engine(items)
    resets = [item.pipeline.prepare(item.frame, item.stamp_s, item.input_gap_s) for item in items]
    return _segment_prepared(engine, items, resets)


class ConfigurationError(ValueError):
    """Settings the node cannot start with; the message says why in one line."""


def build_engine(settings: dict, warn: Callable[[str], None] = print):
    """``(checkpoint, engine)`` for the node's settings (parameter values).

    Raises:
        ConfigurationError: the checkpoint, device, backend or precision cannot be used.
    """
    from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
    from video_seg_ros.engine import DeviceError
    from video_seg_ros.ros.parameters import temporal_settings

    precision = settings["precision"]
    if not settings["fp16"]:
        if precision == "auto":
            precision = "fp32"
        warn(f"parameter fp16 is deprecated; use precision (now {precision})")
    try:
        checkpoint = load_checkpoint(settings["checkpoint"])
        engine = SegmentationEngine(
            checkpoint,
            device=settings["device"],
            precision=precision,
            backend=settings["backend"],
            upsample=settings["upsample"],
            min_agreement=settings["precision_min_agreement"],
        )
    except (CheckpointError, DeviceError, ValueError) as error:  # PrecisionError: a ValueError
        raise ConfigurationError(str(error)) from error
    except Exception as error:  # a damaged state_dict, unknown architecture, backend failure
        raise ConfigurationError(
            f"could not build the model from {settings['checkpoint']}: "
            f"{type(error).__name__}: {error}"
        ) from error
    # The engine ran its warm-up pass in the precision it chose (the first camera frame is not
    # slowed by lazy kernel initialisation, and a model that cannot run failed above).
    engine.set_temporal(temporal_settings(settings))
    return checkpoint, engine


class NodePipeline:
    """Every camera of the node through one shared engine: the node's whole ROS-free work.

    :meth:`apply` takes changed parameter values (the only way settings reach the streams and the
    engine); :meth:`process` segments a batch, renders the requested views and feeds the online
    TC. A failure is kept to the camera it happened to: :meth:`process` returns the exception in
    that camera's place, and a failed batch is segmented again one camera at a time.
    """

    def __init__(
        self, engine: SegmentationEngine, streams: dict[Hashable, StreamPipeline], settings: dict
    ):
        self.engine = engine
        self.streams = streams
        self.settings = dict(settings)
        for stream in streams.values():
            stream.apply(self.settings)

    @classmethod
    def build(cls, settings: dict, warn: Callable[[str], None] = print):
        """``(pipeline, checkpoint)``: the engine and one stream per camera of ``settings``
        (``cameras`` empty: one unnamed camera, key ``""``). Raises ConfigurationError."""
        from video_seg_ros.metrics import OnlineConsistency  # import cost only when needed

        checkpoint, engine = build_engine(settings, warn)
        streams = {
            name: StreamPipeline(
                engine,
                stream=name or None,
                consistency=OnlineConsistency(
                    len(checkpoint.class_names),
                    max_width=settings["consistency_max_width"],
                    preset=settings["flow_preset"],
                    recent=settings["consistency_window"],
                ),
            )
            for name in settings["cameras"] or [""]
        }
        return cls(engine, streams, settings), checkpoint

    def summary(self, inputs: list[str]) -> str:
        """One line for the log: model, device, backend, precision and why, cameras."""
        engine, described = self.engine, self.engine.describe()
        fallbacks = "; ".join(
            f"{what} fallback: {described[key]}"
            for what, key in (("backend", "backend_fallback"), ("precision", "precision_fallback"))
            if described[key]
        )
        return (
            f"model {engine.model_name} on {engine.device} (backend {engine.backend}, "
            f"precision {engine.precision}: {described['precision_reason']}"
            f"{'; ' + fallbacks if fallbacks else ''}), "
            f"{len(engine.class_names)} classes, "
            f"temporal={'yes' if engine.is_temporal else 'no'}, "
            f"cameras: {', '.join(inputs)} ({self.settings['input_qos']})"
        )

    def apply(self, settings: dict, temporal=None) -> None:
        """New parameter values (all of them); ``temporal``: the engine's new TemporalSettings
        when a temporal parameter changed. Applies from the next frame."""
        for stream in self.streams.values():
            stream.apply(settings)
        if temporal is not None:
            self.engine.set_temporal(temporal)
        self.settings = dict(settings)  # one assignment: the worker sees old or new, never a mix

    def process(self, items: list[StreamItem]) -> list[StreamResult | Exception]:
        """Segment, render and measure one frame per stream; each item's result or exception."""
        if not items:
            return []
        engine = _check_one_engine(items)
        measuring = self.settings["consistency_metric"]
        outcomes: list[StreamResult | Exception | None] = [None] * len(items)
        prepared = []
        for index, item in enumerate(items):
            try:
                reset = item.pipeline.prepare(item.frame, item.stamp_s, item.input_gap_s)
                prepared.append((index, reset))
            except Exception as error:  # noqa: BLE001 - kept to this camera
                outcomes[index] = error
        batch = [items[index] for index, _ in prepared]
        try:
            results = (
                _segment_prepared(engine, batch, [reset for _, reset in prepared]) if batch else []
            )
        except Exception:  # which camera failed is unknown: one at a time tells
            results = []
            for item, (_, reset) in zip(batch, prepared):
                try:
                    results.append(_segment_prepared(engine, [item], [reset])[0])
                except Exception as error:  # noqa: BLE001
                    results.append(error)
        for (index, _), item, result in zip(prepared, batch, results):
            if not isinstance(result, Exception):
                try:
                    self._finish(item, result, measuring)
                except Exception as error:  # noqa: BLE001
                    result = error
            outcomes[index] = result
        return outcomes

    @staticmethod
    def _finish(item: StreamItem, result: StreamResult, measuring: bool) -> None:
        request = item.request
        if request is not None and (request.color or request.overlay):
            item.pipeline.render(item.frame, result, request)
        if measuring:
            sample = item.pipeline.measure(item.frame, result.labels, result.flow)
            if sample is not None and sample.tc is not None:
                result.tc = float(sample.tc)
