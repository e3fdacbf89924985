"""Everything the node does that does not need ROS: reset policy, segmentation, outputs.

The queue is in :mod:`video_seg_ros.ros.frame_queue`, the counters in
:mod:`video_seg_ros.ros.stream_stats`.

:mod:`video_seg_ros.ros.node` is a thin rclpy adapter over :class:`StreamPipeline`; this module
imports no ROS package, so its behaviour is tested in plain pytest (test/test_node_pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.labels import colorize, overlay


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
    from video_seg_ros.precision import load_calibration
    from video_seg_ros.ros.parameters import temporal_settings

    precision = settings["precision"]
    if not settings["fp16"]:
        if precision == "auto":
            precision = "fp32"
        warn(f"parameter fp16 is deprecated; use precision (now {precision})")
    try:
        calibration = (
            load_calibration(settings["calibration"], settings["calibration_frames"])
            if settings["calibration"]
            else None
        )
        checkpoint = load_checkpoint(settings["checkpoint"])
        engine = SegmentationEngine(
            checkpoint,
            device=settings["device"],
            precision=precision,
            backend=settings["backend"],
            upsample=settings["upsample"],
            min_agreement=settings["precision_min_agreement"],
            calibration=calibration,
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
