"""Per-stream temporal state of the engine: probability fusion along optical flow and an adaptive
keyframe clock. No ROS here.

A per-frame segmenter flickers: the same surface changes class from one frame to the next.
With ``mode="fuse"`` the engine keeps, per stream (camera), the fused class probabilities of the
previous frame, warps them onto the current frame with DIS optical flow and blends them with the
network's softmax::

    P_t = alpha * softmax_t + (1 - alpha) * warp(P_{t-1})

per pixel: ``alpha = fusion_weight`` where the warp can be trusted, 1 (the current frame alone)
where it cannot (the source lies outside the previous frame, the photometric warp error is high,
or, optionally, the forward-backward check finds the pixel occluded). With
``confidence_weighting`` the trusted weight leans further towards whichever of the two is more
confident. Labels are the argmax of ``P_t``, the confidence its maximum. ``fusion_weight=1``
gives exactly the per-frame result.

With ``mode="adaptive"`` the network runs only on keyframes; the other frames are the warped
previous probabilities (an output for every frame all the same). A frame is a keyframe when the
stream starts (first frame, after any reset, after a size change), when the warp stops being
trustworthy (a large share of pixels with high warp error: a scene cut), when the motion is large,
when the predicted confidence drops, or when ``max_interval`` frames / ``max_interval_s`` seconds
have passed since the last keyframe. A keyframe's network result is fused as in ``fuse``.

With ``keyframe_lag`` N > 0 (adaptive only) a keyframe does not wait for the network: the network
runs in a background thread while the frame and the next ones are propagated, and its result
joins the stream N frames after its keyframe, warped onto that frame through the flows of the
frames between (the engine waits for it there if it is late). A frame then costs flow and fusion
only, whatever the network's time; the price is labels that lag behind the scene by N frames'
worth of propagation. The result depends on the frames alone, not on timing.

Everything temporal of one stream lives in one :class:`StreamTemporalState` (the memory of a memory
model, the previous frame, the fused probabilities, the keyframe clock) with one
:meth:`~StreamTemporalState.reset`. :class:`FlowFusion` does the work for the engine
(:class:`video_seg_ros.engine.SegmentationEngine`); flow runs on the CPU (OpenCV DIS), the warp and
the blend on the engine's device (``torch.nn.functional.grid_sample``).

Flow convention (:mod:`video_seg_ros.flow`): the flow kept here goes from the current frame to the
previous one, so ``warp(P_{t-1})(p) = P_{t-1}(p + flow(p))`` is a backward warp onto the current
frame's pixel grid.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from video_seg_ros.engine_io import channel_max
from video_seg_ros.flow import (
    DIS_PRESETS,
    DisFlow,
    inside_mask,
    occlusion_mask,
    reduced_size,
    resize_flow,
)
from video_seg_ros.flow import sampling_maps, to_gray, warp_image, warp_tensor

#: What ``TemporalSettings.mode`` accepts.
TEMPORAL_MODES = ("off", "fuse", "adaptive")

#: Frames smaller than this (either side, at flow resolution) are not tracked: DIS needs 12 pixels,
#: and there is nothing to gain on such frames. They are segmented on their own.
MIN_FLOW_SIDE = 16

#: Why a stream's state resets itself before a frame (:meth:`StreamTemporalState.guard`).
GUARD_REASONS = ("size_change", "time_backwards")

#: Why a frame ran the network (``TemporalStats.reasons``); "every_frame" in modes off and fuse.
KEYFRAME_REASONS = (
    "start",
    "every_frame",
    "interval",
    "time",
    "scene_change",
    "motion",
    "confidence",
)


class TemporalSettingsError(ValueError):
    """An invalid temporal setting; ``field`` names it, ``reason`` says what is wrong with it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class TemporalSettings:
    """How the engine carries information from frame to frame (see the module docstring).

    Args:
        mode: ``off`` (every frame on its own), ``fuse`` (network on every frame, fused with the
            warped previous probabilities) or ``adaptive`` (network on keyframes only).
        fusion_weight: weight of the current frame where the warp is trusted, 0..1 (1 = per-frame).
        confidence_weighting: lean the trusted weight towards the more confident of the current
            softmax and the warped previous probabilities (per pixel).
        label_stickiness: hysteresis against flicker, 0..1: where the warp is trusted, the class
            the previous fused map gives a pixel gets this much extra probability before the
            argmax, so a label changes only when the new class wins by more than that margin
            (0 = plain blend). Mode ``fuse`` only: a keyframe of the adaptive clock corrects what
            the propagated frames let drift, so it is not held back.
        warp_error_threshold: a pixel whose grey level differs from the warped previous frame by
            more than this (0..255, after removing the mean brightness change) takes the current
            frame alone; 0 switches the check off.
        occlusion_check: also distrust pixels failing the forward-backward flow check (a second
            flow per frame).
        probability_width: the fused probabilities are kept at the network's output size, at most
            this wide (0 = the output size, however wide).
        flow_width: flow is computed on frames downscaled to at most this width (0 = full size).
        flow_preset: OpenCV DIS preset (``ultrafast``, ``fast``, ``medium``).
        max_interval: adaptive: the network runs at least every ``max_interval`` frames (>= 1;
            1 = every frame).
        max_interval_s: adaptive: ... and at least every ``max_interval_s`` seconds of the frames'
            stamps (0 = no time limit; frames given without stamps count frames only).
        keyframe_error_share: adaptive: a keyframe when more than this share (0..1) of pixels
            cannot be warped (high warp error, outside the previous frame, occluded): a scene cut.
        keyframe_motion: adaptive: a keyframe when the mean flow magnitude exceeds this fraction
            of the frame width (0 = never).
        keyframe_confidence: adaptive: a keyframe when the mean confidence of the warped previous
            probabilities falls below this (0 = never).
        keyframe_lag: adaptive: 0 = a keyframe waits for its network result; N >= 1 = the network
            runs in the background and its result joins the stream N frames later (see the
            module docstring). No new keyframe starts while one is in the background.
    """

    mode: str = "off"
    # Defaults measured with published ESPNet p2q8 on the real snippet aachen_000002 and checked on
    # the synthetic street (bench/temporal.py; docs/temporal.md).
    fusion_weight: float = 0.7
    confidence_weighting: bool = False
    label_stickiness: float = 0.15
    warp_error_threshold: float = 24.0
    occlusion_check: bool = False
    probability_width: int = 512
    flow_width: int = 1024
    flow_preset: str = "ultrafast"
    max_interval: int = 2
    max_interval_s: float = 1.0
    keyframe_error_share: float = 0.15
    keyframe_motion: float = 0.05
    keyframe_confidence: float = 0.5
    keyframe_lag: int = 0

    @classmethod
    def coerce(cls, value: "TemporalSettings | dict | str | None") -> "TemporalSettings":
        """Settings from settings, a dict of fields, a mode name or None (defaults); validated."""
        if value is None:
            settings = cls()
        elif isinstance(value, TemporalSettings):
            settings = value
        elif isinstance(value, str):
            settings = cls(mode=value.strip().lower())
        elif isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            for key in value:
                if key not in known:
                    raise TemporalSettingsError(
                        str(key), "is not a temporal setting; known: " + ", ".join(sorted(known))
                    )
            settings = cls(**value)
        else:
            raise TypeError(
                f"temporal settings must be TemporalSettings, a dict or a mode name, not "
                f"{type(value).__name__}"
            )
        settings.validate()
        return settings

    def replace(self, **changes) -> "TemporalSettings":
        """A validated copy with ``changes`` applied."""
        return TemporalSettings.coerce({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise :class:`TemporalSettingsError` (a ValueError) naming the first invalid field."""
        if self.mode not in TEMPORAL_MODES:
            raise TemporalSettingsError(
                "mode", f"must be one of {', '.join(TEMPORAL_MODES)}, got {self.mode!r}"
            )
        for name in ("confidence_weighting", "occlusion_check"):
            if not isinstance(getattr(self, name), bool):
                raise TemporalSettingsError(
                    name, f"must be true or false, got {getattr(self, name)!r}"
                )
        _check_number(self, "fusion_weight", 0.0, 1.0)
        _check_number(self, "label_stickiness", 0.0, 1.0)
        _check_number(self, "warp_error_threshold", 0.0, 255.0)
        _check_number(self, "max_interval_s", 0.0, 3600.0)
        for name in ("keyframe_error_share", "keyframe_motion", "keyframe_confidence"):
            _check_number(self, name, 0.0, 1.0)
        _check_number(self, "max_interval", 1, 10_000, integer=True)
        _check_number(self, "keyframe_lag", 0, 100, integer=True)
        for name in ("probability_width", "flow_width"):
            _check_number(self, name, 0, 16_384, integer=True)
            if 0 < getattr(self, name) < 16:
                raise TemporalSettingsError(
                    name, f"must be 0 (no limit) or at least 16 pixels, got {getattr(self, name)}"
                )
        if self.flow_preset not in DIS_PRESETS:
            raise TemporalSettingsError(
                "flow_preset", f"must be one of {', '.join(DIS_PRESETS)}, got {self.flow_preset!r}"
            )

    def keeps_state_of(self, other: "TemporalSettings") -> bool:
        """Whether a stream's fused state made under ``other`` is still valid under these settings
        (mode off keeps none; the probability and flow grids and the keyframe lag must not
        change)."""
        return (
            "off" not in (self.mode, other.mode)
            and self.probability_width == other.probability_width
            and self.flow_width == other.flow_width
            and self.keyframe_lag == other.keyframe_lag
        )


def _check_number(settings: TemporalSettings, name: str, low, high, integer: bool = False) -> None:
    value = getattr(settings, name)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "a whole number" if integer else "a number"
        raise TemporalSettingsError(name, f"must be {kind}, got {value!r}")
    if not low <= value <= high:
        raise TemporalSettingsError(name, f"must be between {low:g} and {high:g}, got {value!r}")


class TemporalStats:
    """Diagnostics of one stream: network share and fused confidence over the last ``window``
    frames.

    Not part of the temporal state: :meth:`StreamTemporalState.reset` leaves it alone, so a
    camera's figures survive its resets. Thread-safe (the node's diagnostics read while its worker
    writes).
    """

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.frames = 0
        self.keyframes = 0
        self.reasons: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()  # by :data:`GUARD_REASONS` (the engine's own resets)
        self._recent: deque[tuple[bool, float | None]] = deque(maxlen=window)

    def record(self, reason: str | None, fused_confidence: float | None) -> None:
        """One frame: ``reason`` why it was a keyframe (None: it was not), its mean fused
        confidence."""
        with self._lock:
            self.frames += 1
            if reason is not None:
                self.keyframes += 1
                self.reasons[reason] += 1
            self._recent.append((reason is not None, fused_confidence))

    def record_reset(self, reason: str) -> None:
        with self._lock:
            self.resets[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        """``frames``, ``keyframes`` (totals), ``keyframe_share`` and ``fused_confidence`` (recent
        window; None before any frame / in mode off), ``reasons`` (totals by reason), ``resets``
        (the state's own resets by :data:`GUARD_REASONS`)."""
        with self._lock:
            recent, reasons, resets = list(self._recent), dict(self.reasons), dict(self.resets)
            frames, keyframes = self.frames, self.keyframes
        confidences = [c for _, c in recent if c is not None]
        return {
            "frames": frames,
            "keyframes": keyframes,
            "keyframe_share": sum(k for k, _ in recent) / len(recent) if recent else None,
            "fused_confidence": float(np.mean(confidences)) if confidences else None,
            "reasons": reasons,
            "resets": resets,
        }


@dataclass
class StreamTemporalState:
    """Everything temporal of one stream (camera); :meth:`reset` clears all of it.

    Attributes:
        memory: the memory (keys/values) of a memory model: the backend's opaque object (torch
            :class:`~video_seg_ros.models.memory.MemoryState`, OpenVINO ``ExplicitMemory``, ...);
            None for per-frame models and until the first frame.
        frame_size: (H, W) of the frames this state was built from.
        previous_grey: (h_f, w_f) uint8, the previous frame in grey at flow resolution.
        fused: (C, h, w) float32 fused class probabilities of the previous frame, on the engine's
            device (C = network outputs).
        flow: (h_f, w_f, 2) float32 flow from the latest frame to the one before it (None when the
            latest frame had no predecessor).
        frames: frames since the last reset.
        frames_since_keyframe: frames since the network last ran (0 on a keyframe).
        last_keyframe_stamp: stamp (seconds) of the last keyframe, when frames came with stamps.
        last_size: (H, W) of the latest frame, whatever the mode (for :meth:`guard`).
        last_stamp: stamp (seconds) of the latest frame given with one (for :meth:`guard`).
        dis: the stream's own :class:`~video_seg_ros.flow.DisFlow` (see ``FlowFusion``).
        late: the keyframe whose network result is still to join (``keyframe_lag`` > 0), or None.
        stats: :class:`TemporalStats` (kept across resets).
    """

    memory: Any = None
    frame_size: tuple[int, int] | None = None
    previous_grey: np.ndarray | None = None
    fused: torch.Tensor | None = None
    flow: np.ndarray | None = None
    frames: int = 0
    frames_since_keyframe: int = 0
    last_keyframe_stamp: float | None = None
    last_size: tuple[int, int] | None = None
    last_stamp: float | None = None
    dis: Any = None
    late: "LateKeyframe | None" = None
    stats: TemporalStats = field(default_factory=TemporalStats)

    def reset(self) -> None:
        """Forget everything temporal: the model memory, the previous frame, the fused
        probabilities, the flow and the keyframe clock (the next frame is a keyframe and starts
        the stream afresh)."""
        self.clear_memory()
        self.clear_fusion()
        self.frames = 0
        self.last_size = None
        self.last_stamp = None

    def continues(self, size: tuple[int, int], stamp: float | None) -> str | None:
        """Why a frame of ``size`` (H, W) at ``stamp`` cannot continue this stream (one of
        :data:`GUARD_REASONS`), or None."""
        if self.last_size is not None and tuple(size) != self.last_size:
            return "size_change"
        if stamp is not None and self.last_stamp is not None and stamp < self.last_stamp:
            return "time_backwards"  # a looping bag or a restarted clock: never fuse across it
        return None

    def guard(self, size: tuple[int, int], stamp: float | None) -> str | None:
        """Reset the whole state when the frame cannot continue the stream (:meth:`continues`),
        then remember the frame's size and stamp; returns the reason of a reset, or None."""
        reason = self.continues(size, stamp)
        if reason is not None:
            self.reset()
            self.stats.record_reset(reason)
        self.last_size = tuple(size)
        if stamp is not None:
            self.last_stamp = float(stamp)
        return reason

    def clear_memory(self) -> None:
        """Empty the model memory only (its object is kept and reused)."""
        if self.late is not None:
            self.late.settle()  # its network run may still be writing the memory
        if self.memory is not None:
            self.memory.reset()

    def clear_fusion(self) -> None:
        """Forget the previous frame, fused probabilities, flow and keyframe clock (not the
        memory)."""
        if self.late is not None:
            self.late.settle()
            self.late = None
        self.frame_size = None
        self.previous_grey = None
        self.fused = None
        self.flow = None
        self.dis = None  # a fresh one: no buffers from frames before the reset
        self.frames_since_keyframe = 0
        self.last_keyframe_stamp = None


def mean_confidence(probabilities: torch.Tensor) -> float:
    """Mean over pixels of the maximum class probability of (1, C, h, w), on every 4th row and
    column (a statistic: the full map costs a millisecond more per frame on a CPU)."""
    return float(torch.amax(probabilities[..., ::4, ::4], dim=1).mean())


@dataclass
class LateKeyframe:
    """A keyframe whose network result is computed in the background (``keyframe_lag`` > 0).

    Attributes:
        logits: resolves to the (N, C, h', w') network output of the batch the keyframe ran in.
        index: the keyframe's place in that batch.
        flows: (h_f, w_f, 2) flows (current -> previous) of the frames after the keyframe, in
            order: the path its result is warped along to reach the current frame.
    """

    logits: Future
    index: int
    flows: list = field(default_factory=list)

    def settle(self) -> None:
        """Wait until the network run is over (its result or error is not wanted any more)."""
        try:
            self.logits.result()
        except Exception:  # noqa: BLE001 - dropped on purpose; a frame that uses it raises
            pass


@dataclass
class FrameAnalysis:
    """What :meth:`FlowFusion.analyse` found about one frame against its stream's state.

    Attributes:
        grey: (h_f, w_f) uint8 the frame at flow resolution (becomes the next ``previous_grey``).
        flow: (h_f, w_f, 2) flow current -> previous; None when there is no usable previous frame.
        trust: (1, 1, h, w) float32 on the device, 0..1 at probability resolution: 1 where the
            warp of the previous probabilities is trusted.
        warped: (1, C, h, w) the previous fused probabilities warped onto this frame.
        untrusted_share: share of pixels (flow resolution) the warp cannot be trusted on.
        motion: mean flow magnitude as a fraction of the frame width (measured only where it
            decides keyframes: mode adaptive with ``keyframe_motion``; else 0).
        warped_confidence: mean maximum of ``warped`` (likewise, with ``keyframe_confidence``).
        flow_ms: time of the flow and trust computation (with the warp), milliseconds.
    """

    grey: np.ndarray
    flow: np.ndarray | None = None
    trust: torch.Tensor | None = None
    warped: torch.Tensor | None = None
    untrusted_share: float = 1.0
    motion: float = 0.0
    warped_confidence: float = 0.0
    flow_ms: float = 0.0


class FlowFusion:
    """Flow, trust, keyframe decisions and probability fusion for :class:`StreamTemporalState` s.

    One per engine (not thread-safe, like the engine); each stream's DIS flow object lives in its
    state. ``device`` is where the probabilities live.
    """

    def __init__(self, settings: TemporalSettings, device: torch.device):
        self.settings = settings
        self.device = device

    # ---- per frame, before the network -------------------------------------------------------
    def analyse(self, state: StreamTemporalState, frame: np.ndarray) -> FrameAnalysis:
        """Flow from ``frame`` (H, W, 3) uint8 to the stream's previous frame, where it can be
        trusted, and the previous probabilities warped onto ``frame``."""
        start = time.perf_counter()
        settings = self.settings
        grey = to_gray(frame)
        size = reduced_size(*grey.shape, settings.flow_width or None)
        if size is not None:
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        grey = np.ascontiguousarray(grey)
        analysis = FrameAnalysis(grey)
        if (
            state.fused is None
            or state.previous_grey is None
            or state.frame_size != frame.shape[:2]
            or state.previous_grey.shape != grey.shape
            or min(grey.shape) < MIN_FLOW_SIDE
        ):
            return analysis
        previous = state.previous_grey
        dis = self._stream_flow(state)
        flow = dis(grey, previous)  # current -> previous, at flow resolution
        maps = sampling_maps(flow)
        trusted = inside_mask(flow, maps)
        if settings.warp_error_threshold > 0:
            difference = grey.astype(np.float32) - warp_image(
                previous.astype(np.float32), flow, maps
            )
            # Exposure changes shift every pixel alike: judge the warp, not the camera's gain.
            difference -= float(difference[trusted].mean()) if trusted.any() else 0.0
            trusted &= np.abs(difference) <= settings.warp_error_threshold
        if settings.occlusion_check:
            trusted &= occlusion_mask(flow, dis(previous, grey))
        analysis.flow = flow
        analysis.untrusted_share = 1.0 - float(trusted.mean())
        adaptive = (
            settings.mode == "adaptive"
        )  # motion and warped confidence decide keyframes only
        if adaptive and settings.keyframe_motion > 0:
            analysis.motion = float(np.sqrt((flow**2).sum(-1)).mean()) / grey.shape[1]

        fused = state.fused[None]  # (1, C, h, w)
        grid = fused.shape[-2:]
        trust = cv2.resize(
            trusted.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA
        )
        analysis.trust = torch.from_numpy(trust).to(self.device)[None, None]
        analysis.warped = self._warp(fused, flow)
        if adaptive and settings.keyframe_confidence > 0:
            analysis.warped_confidence = mean_confidence(analysis.warped)
        analysis.flow_ms = (time.perf_counter() - start) * 1000.0
        return analysis

    def _warp(self, probabilities: torch.Tensor, flow: np.ndarray) -> torch.Tensor:
        """(1, C, h, w) probabilities of the previous frame -> the current one's pixel grid, along
        ``flow`` (h_f, w_f, 2, current -> previous, flow resolution). Bilinear weights sum to 1,
        so the warped probabilities still sum to 1 per pixel (no renormalisation)."""
        grid_flow = resize_flow(flow, probabilities.shape[-2:])
        if probabilities.device.type == "cpu":
            # OpenCV's remap, channel by channel: the same bilinear border-replicating warp as
            # grid_sample (pixel centres) at a third of its time.
            source = probabilities[0].float().contiguous().numpy()
            map_x, map_y = sampling_maps(grid_flow)
            warped = np.empty_like(source)
            for channel in range(source.shape[0]):
                cv2.remap(
                    source[channel],
                    map_x,
                    map_y,
                    interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                    dst=warped[channel],
                )
            return torch.from_numpy(warped)[None]
        flow_tensor = torch.from_numpy(np.ascontiguousarray(grid_flow.transpose(2, 0, 1))).to(
            self.device
        )
        return warp_tensor(probabilities, flow_tensor[None])

    def late_probabilities(self, late: LateKeyframe) -> torch.Tensor:
        """A late keyframe's softmax (1, C, h, w), warped frame by frame onto the current frame
        (waits for the network if it has not finished)."""
        logits = late.logits.result()[late.index][None].float()
        probabilities = torch.softmax(self._to_grid(logits), dim=1)
        for flow in late.flows:
            probabilities = self._warp(probabilities, flow)
        return probabilities

    def _stream_flow(self, state: StreamTemporalState) -> DisFlow:
        """The stream's own DIS object: OpenCV's keeps buffers from its previous frame size that
        change later flows (measured: up to 0.35 px and 3 % of labels after another camera's
        size), so a shared one would let one camera's frames alter another's results."""
        if state.dis is None or state.dis.preset != self.settings.flow_preset:
            state.dis = DisFlow(self.settings.flow_preset)
        return state.dis

    def keyframe_reason(
        self, state: StreamTemporalState, analysis: FrameAnalysis, stamp: float | None = None
    ) -> str | None:
        """Why this frame must run the network (one of :data:`KEYFRAME_REASONS`), or None."""
        settings = self.settings
        if analysis.flow is None:
            return "start"
        if settings.mode != "adaptive":
            return "every_frame"
        if state.frames_since_keyframe + 1 >= settings.max_interval:
            return "interval"
        last = state.last_keyframe_stamp
        if (
            settings.max_interval_s > 0
            and stamp is not None
            and last is not None
            and (stamp - last >= settings.max_interval_s or stamp < last)
        ):
            return "time"
        if analysis.untrusted_share > settings.keyframe_error_share:
            return "scene_change"
        if settings.keyframe_motion > 0 and analysis.motion > settings.keyframe_motion:
            return "motion"
        if analysis.warped_confidence < settings.keyframe_confidence:
            return "confidence"
        return None

    # ---- per frame, after the network --------------------------------------------------------
    def update(
        self,
        state: StreamTemporalState,
        frame_size: tuple[int, int],
        analysis: FrameAnalysis,
        logits: torch.Tensor | None,
        reason: str | None,
        stamp: float | None = None,
        late: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """Fuse, store the new state and count the frame.

        Args:
            frame_size: (H, W) of the frame.
            logits: (1, C, h', w') network output of a keyframe (None on other frames and on a
                keyframe whose network runs in the background).
            reason: :meth:`keyframe_reason`'s answer (not None also for a background keyframe).
            late: (1, C, h, w) a late keyframe's probabilities on this frame
                (:meth:`late_probabilities`), fused like a keyframe's own.

        Returns:
            ``(fused, exact)``: (1, C, h, w) fused probabilities, and True when they are the
            current softmax alone (every pixel weighted 1), so that the caller can take the labels
            from the logits exactly as without fusion.
        """
        settings = self.settings
        exact = False
        if logits is not None:
            probabilities = torch.softmax(self._to_grid(logits.float()), dim=1)
        else:
            probabilities = late
        if probabilities is None:
            fused = analysis.warped
        elif analysis.warped is None or settings.fusion_weight >= 1.0:
            fused, exact = probabilities, logits is not None
        else:
            fused = self._blend(probabilities, analysis)
        state.fused = fused[0]
        state.previous_grey = analysis.grey
        state.frame_size = tuple(frame_size)
        state.flow = analysis.flow
        state.frames += 1
        if reason is None:
            state.frames_since_keyframe += 1
        else:
            state.frames_since_keyframe = 0
            state.last_keyframe_stamp = stamp
        state.stats.record(reason, mean_confidence(fused))
        return fused, exact

    def _to_grid(self, logits: torch.Tensor) -> torch.Tensor:
        height, width = logits.shape[-2:]
        cap = self.settings.probability_width
        if not cap or width <= cap:
            return logits
        size = (max(1, round(height * cap / width)), cap)
        return torch.nn.functional.interpolate(
            logits, size=size, mode="bilinear", align_corners=False
        )

    def _blend(self, probabilities: torch.Tensor, analysis: FrameAnalysis) -> torch.Tensor:
        weight = self.settings.fusion_weight
        if self.settings.confidence_weighting:
            current = weight * probabilities.max(1, keepdim=True).values
            previous = (1.0 - weight) * analysis.warped.max(1, keepdim=True).values
            weight = current / (current + previous).clamp_min(1e-12)
        # Untrusted pixels (trust 0) take the current frame alone; trust is soft at region borders.
        alpha = 1.0 - analysis.trust * (1.0 - weight)
        fused = alpha * probabilities + (1.0 - alpha) * analysis.warped
        if self.settings.label_stickiness > 0 and self.settings.mode == "fuse":
            # Hysteresis: a trusted pixel keeps its previous class unless another wins by a margin.
            # Not on the adaptive clock's keyframes: they must correct what propagation let drift.
            previous = channel_max(analysis.warped)[1][:, None]
            bonus = self.settings.label_stickiness * analysis.trust
            fused = fused + torch.zeros_like(fused).scatter_(1, previous, 1.0) * bonus
        return fused / fused.sum(1, keepdim=True).clamp_min(1e-12)
