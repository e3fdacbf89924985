"""Inference engine: uint8 frames in, class-id maps (and confidences) out. No ROS here.

The node, the evaluator, the demo and the benchmarks all call :class:`SegmentationEngine`, so the
preprocessing a checkpoint declares is applied in exactly one place, whichever backend
(:mod:`video_seg_ros.backends`: torch, OpenVINO, TensorRT) runs the network.

On a CPU the engine flushes denormal floats to zero (:func:`video_seg_ros.runtime.flush_denormals`)
in every thread that runs a model: published weights drive activations into denormals, which made
ESPNet p2q8 take seconds per frame; the labels on the shared Cityscapes frames stay identical.

Everything temporal of a stream (camera) lives in one
:class:`~video_seg_ros.temporal.StreamTemporalState` per stream key: the memory of a memory model,
and with temporal fusion (``temporal=``, :meth:`SegmentationEngine.set_temporal`) the previous
frame, the fused class probabilities and the keyframe clock; :meth:`SegmentationEngine.reset`
clears it, and so does the engine itself when a stream's frame size changes or its stamps run
backwards (a looping bag: never fuse across the loop).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import nn

from video_seg_ros import runtime
from video_seg_ros.backends import BACKENDS, BackendError
from video_seg_ros.backends.selection import RunnerFactory, checkpoint_fingerprint_extra
from video_seg_ros.checkpoint import Checkpoint, load_checkpoint
from video_seg_ros.engine_io import (  # noqa: F401 (DeviceError, UPSAMPLE_MODES: re-exported)
    UPSAMPLE_MODES,
    DeviceError,
    FrameCodec,
    SegmentationResult,
    build_model,
    check_frame,
    check_model_device,
    resolve_device,
)
from video_seg_ros.labels import palette_lookup_table
from video_seg_ros.precision import AGREEMENT_THRESHOLD, PrecisionDecision
from video_seg_ros.precision import settle as settle_precision
from video_seg_ros.runtime import (  # noqa: F401 (re-exported)
    PrecisionError,
    precision_candidate,
    resolve_precision,
)
from video_seg_ros.temporal import FlowFusion, StreamTemporalState, TemporalSettings

LOG = logging.getLogger(__name__)

#: The stream key of frames given without ``streams=`` (and of :meth:`SegmentationEngine.segment`).
DEFAULT_STREAM = None


class SegmentationEngine:
    """Runs a checkpoint's model on frames, one at a time (streaming) or in batches.

    Args:
        checkpoint: a :class:`Checkpoint` or a path (``None``/"default" = embedded model).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` (always the exact path), ``bf16`` (CPUs with native bf16 - AMX or
            AVX512-BF16 - and CUDA; refused where it would be emulated), ``fp16`` (CUDA), or
            ``auto``: fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere, a reduced
            precision kept only where it passes the accuracy gate (:mod:`video_seg_ros.precision`;
            ``precision_decision`` says what runs and why, also logged).
            :class:`~video_seg_ros.runtime.PrecisionError` says what to use instead.
        min_agreement: the gate: share of calibration labels a reduced precision must keep.
        calibration: (H, W, 3) uint8 RGB frames for the gate (default: synthetic street frames).
        backend: ``torch``, ``openvino`` (CPU), ``tensorrt`` (CUDA, needs the tensorrt wheel) or
            ``auto``: OpenVINO on the CPU when it is installed and converts the model, else torch
            (``fallback_reason`` says why, also logged); torch on CUDA. An explicitly requested
            backend that cannot run the model raises :class:`~video_seg_ros.backends.BackendError`.
        upsample: ``"logits"`` resizes class scores bilinearly to the frame size before the
            argmax (best boundaries); ``"labels"`` takes the argmax at model resolution and
            resizes the ids nearest-neighbour (cheaper on large frames on a CPU); ``"auto"``
            picks logits on CUDA and labels on the CPU.
        cpu_mkldnn: torch backend: use oneDNN convolutions on the CPU; ``None`` takes the
            architecture's measured preference (attribute ``prefers_mkldnn``, default True).
        fp16: deprecated alias: True = ``precision='fp16'`` on CUDA (fp32 on the CPU),
            False = fp32.
        model: an ``nn.Module`` to run instead of building one from the checkpoint (e.g. the
            model being trained; the checkpoint still gives preprocessing and classes). Torch
            backend only; it must be on the engine's device; its train/eval mode is restored
            after every call.
        cache_dir: where converted models are cached (default ``$XDG_CACHE_HOME/video_seg_ros``
            or ``~/.cache/video_seg_ros``).
        flush_denormals: flush denormal floats on the CPU (default True); False only to measure
            the unflushed path (the setting is per thread and process-wide in effect).
        temporal: :class:`~video_seg_ros.temporal.TemporalSettings`, a dict of its fields or a mode
            name (``off``, ``fuse``, ``adaptive``); default off. Change it with
            :meth:`set_temporal`.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | str | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        upsample: str = "auto",
        cpu_mkldnn: bool | None = None,
        fp16: bool | None = None,
        model: nn.Module | None = None,
        cache_dir: str | None = None,
        flush_denormals: bool = True,
        min_agreement: float = AGREEMENT_THRESHOLD,
        calibration: Sequence[np.ndarray] | None = None,
        temporal: TemporalSettings | dict | str | None = None,
    ):
        temporal = TemporalSettings.coerce(temporal)  # refused before a model loads
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint)
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        backend = (backend or "auto").strip().lower()
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        if fp16 is not None:
            warnings.warn(
                "SegmentationEngine(fp16=...) is deprecated; use precision='fp16' or 'fp32'",
                DeprecationWarning,
                stacklevel=2,
            )
            if (precision or "auto") == "auto":
                precision = "fp16" if fp16 and self.device.type == "cuda" else "fp32"
        self.requested_precision = (precision or "auto").strip().lower()
        self.precision, self._precision_candidate_reason = precision_candidate(
            precision, self.device
        )
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must be within 0..1, got {min_agreement}")
        self.min_agreement = float(min_agreement)
        if upsample == "auto":
            upsample = "logits" if self.device.type == "cuda" else "labels"
        self._flush = bool(flush_denormals) and self.device.type == "cpu"
        if self._flush:
            # This thread; segment_batch repeats it in whichever thread calls it.
            runtime.flush_denormals()
        if model is not None and backend not in ("auto", "torch"):
            raise BackendError(
                f"model= runs on the torch backend only, not {backend!r}; pass the "
                "checkpoint alone to convert its model, or use backend 'torch'."
            )
        owned = model is None
        if owned:
            model = build_model(checkpoint).eval().to(self.device)
        else:
            check_model_device(model, self.device)
        self.model = model
        #: An imported ONNX graph: no torch module to run, so no torch backend nor torch reference.
        is_graph = not getattr(model, "runs_in_torch", True)
        if getattr(model, "output_kind", "logits") == "class_ids":
            upsample = "labels"  # an imported graph's class ids resize nearest; no scores to blend
        self._temporal = bool(getattr(model, "is_temporal", False))
        base = getattr(model, "base", model)
        self.cpu_mkldnn = (
            getattr(base, "prefers_mkldnn", True) if cpu_mkldnn is None else cpu_mkldnn
        )
        #: Preprocessing and postprocessing, the checkpoint's, in this one place.
        self._codec = FrameCodec(checkpoint, self.device, upsample)
        self.palette_table = palette_lookup_table(checkpoint.palette)
        #: Builds the runners: the backend, the ``auto`` choice, the gate's fp32 reference.
        self._runners = RunnerFactory(
            model,
            self.device,
            self._codec.input_size,
            model_name=self.model_name,
            cache_dir=cache_dir,
            flush_denormals=self._flush,
            fingerprint_extra=checkpoint_fingerprint_extra(checkpoint),
            is_graph=is_graph,
            cpu_mkldnn=self.cpu_mkldnn,
        )
        self._runner, self.fallback_reason, level = self._runners.choose(
            backend, self.precision, owned
        )
        if self.fallback_reason is not None:
            self._log_fallback(self.fallback_reason, level)
        self.backend = self._runner.name
        #: Every temporal thing of each stream (memory, previous frame, fused probabilities,
        #: clock).
        self._states: dict[Hashable, StreamTemporalState] = {}
        self._settings = temporal
        self._pending_settings: TemporalSettings | None = None
        self._settings_lock = threading.Lock()  # set_temporal may come from another thread
        self._fusion = FlowFusion(temporal, self.device)
        self._settle_precision(backend, owned, calibration)
        LOG.info(
            "%s: backend %s, precision %s (%s)%s",
            self.model_name,
            self.backend,
            self.precision,
            self.precision_decision.reason,
            f"; backend fallback: {self.fallback_reason}" if self.fallback_reason else "",
        )

    def _settle_precision(self, backend: str, owned: bool, calibration) -> None:
        """Keep the candidate precision only where it earns it, with one warm-up pass in what runs
        (:func:`video_seg_ros.precision.settle`); under ``backend='auto'`` a converted model that
        cannot run falls back to torch, as a failed conversion does."""

        def backend_fallback(reason: str) -> None:
            self.fallback_reason = reason
            self._log_fallback(reason, logging.WARNING)

        self._runner, decision = settle_precision(
            self._runners,
            self._runner,
            backend,
            self.requested_precision,
            self.precision,
            self._precision_candidate_reason,
            self._codec.preprocess,
            calibration,
            self.is_temporal,
            self.min_agreement,
            owned,
            backend_fallback,
        )
        self.backend = self._runner.name
        self.precision = decision.precision
        self.precision_decision: PrecisionDecision = decision

    def _log_fallback(self, reason: str, level: int) -> None:
        LOG.log(level, "backend auto: running %s with torch: %s", self.model_name, reason)

    def describe(self) -> dict:
        """Device, backend, precision and why: what logs, diagnostics and reports say."""
        decision = self.precision_decision
        return {
            "device": str(self.device),
            "backend": self.backend,
            "precision": self.precision,
            "requested_precision": decision.requested,
            "precision_reason": decision.reason,
            "precision_agreement": decision.agreement,
            "precision_fallback": decision.fallback,
            "backend_fallback": self.fallback_reason,
            "cpu": runtime.cpu_description(),
        }

    # ---- properties the node and the tools report ---------------------------------------------
    @property
    def model_name(self) -> str:
        return self.checkpoint.model_name

    @property
    def class_names(self) -> list[str]:
        return list(self.checkpoint.class_names)

    @property
    def is_temporal(self) -> bool:
        return self._temporal

    @property
    def fp16(self) -> bool:
        """Deprecated: ``precision == 'fp16'``."""
        return self.precision == "fp16"

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input (width, height) every frame is resized to."""
        return self._codec.input_size

    @property
    def upsample(self) -> str:
        """How predictions reach the frame size: ``"logits"`` or ``"labels"``."""
        return self._codec.upsample

    @upsample.setter
    def upsample(self, mode: str) -> None:
        self._codec.upsample = mode

    # ---- temporal state ------------------------------------------------------------------------
    @property
    def temporal(self) -> TemporalSettings:
        """The temporal settings (the newest ones given to :meth:`set_temporal`)."""
        return self._pending_settings or self._settings

    def set_temporal(self, settings: TemporalSettings | dict | str) -> TemporalSettings:
        """Change the temporal settings; they apply from the next frame (safe to call from another
        thread than the one segmenting). Streams keep their fused state unless the change makes it
        invalid (mode off, or another probability or flow resolution). Raises
        :class:`~video_seg_ros.temporal.TemporalSettingsError` (a ValueError) naming a bad
        field."""
        settings = TemporalSettings.coerce(settings)
        with self._settings_lock:
            self._pending_settings = settings
        return settings

    def _apply_pending_settings(self) -> None:
        with self._settings_lock:
            settings, self._pending_settings = self._pending_settings, None
        if settings is None:
            return
        if not settings.keeps_state_of(self._settings):
            for state in self._states.values():
                state.clear_fusion()
        self._settings = settings
        self._fusion = FlowFusion(settings, self.device)

    def stream_state(self, stream: Hashable = DEFAULT_STREAM) -> StreamTemporalState:
        """The temporal state of ``stream`` (created empty when the stream is new)."""
        state = self._states.get(stream)
        if state is None:
            state = self._states[stream] = StreamTemporalState()
        return state

    def temporal_stats(self, stream: Hashable = DEFAULT_STREAM) -> dict:
        """Diagnostics of one stream: ``mode``, ``frames``, ``keyframes``, ``keyframe_share``
        (network share over the last 100 frames), ``fused_confidence`` (mean, same window; None in
        mode off), ``reasons`` (keyframes by reason), ``resets`` (the engine's own resets of the
        stream by reason: ``size_change``, ``time_backwards``)."""
        state = self._states.get(stream)  # read only: diagnostics call this from another thread
        stats = state.stats if state is not None else StreamTemporalState().stats
        return {"mode": self.temporal.mode, **stats.snapshot()}

    def forget_streams(self) -> None:
        """Drop every stream's state and statistics, as in a new engine (e.g. after a warm-up)."""
        self._states.clear()

    def reset(self, stream: Hashable | None = None, *, memory_only: bool = False) -> None:
        """Forget temporal state (model memory, previous frame, fused probabilities, keyframe
        clock): of one stream, or of all (``stream=None``). ``memory_only``: empty the model
        memory only."""
        if stream is None:
            states = list(self._states.values())
        else:
            states = [self._states[stream]] if stream in self._states else []
        for state in states:
            if memory_only:
                state.clear_memory()
            else:
                state.reset()

    def release(self) -> None:
        """Free the model and every stream's state (the engine cannot segment afterwards)."""
        if self._runner is not None:
            self._runner.release()
        self._runner = None
        self._runners = None  # it holds the model too
        self._states.clear()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- inference ---------------------------------------------------------------------------
    def segment(
        self,
        frame: np.ndarray,
        channel_order: str = "rgb",
        with_confidence: bool = False,
        stamp: float | None = None,
    ) -> SegmentationResult:
        """Segment one (H, W, 3) uint8 frame given in ``channel_order`` ('rgb' or 'bgr'); ``stamp``
        (seconds) drives the adaptive clock's time limit."""
        return self.segment_batch(
            [frame], channel_order, with_confidence, stamps=None if stamp is None else [stamp]
        )[0]

    def segment_batch(
        self,
        frames: list[np.ndarray],
        channel_order: str = "rgb",
        with_confidence: bool = False,
        streams: Sequence[Hashable] | None = None,
        stamps: Sequence[float] | None = None,
    ) -> list[SegmentationResult]:
        """Segment frames together.

        Without ``streams`` the frames must have one size, and a temporal model (or temporal
        fusion) sees them as consecutive frames of the default stream. With ``streams`` (one key
        per frame, e.g. camera names) each stream has its own temporal state; frames may differ in
        size (each is resized to the network input and its result comes back at its own size), and
        frames of different streams run as one batch (several frames of one stream: in order).
        ``stamps``: one time in seconds per frame (the camera's), for ``max_interval_s`` and the
        reset of a stream whose stamps run backwards. A stream whose frame size changes is reset
        too (its frames within one call must keep one size and run forwards, else ValueError).
        """
        if not frames:
            return []
        if self._runner is None:
            raise RuntimeError("this SegmentationEngine was released; create a new one")
        for frame in frames:
            check_frame(frame)
        if streams is None:
            if any(frame.shape[:2] != frames[0].shape[:2] for frame in frames):
                raise ValueError(
                    "all frames of a batch must have the same size (pass streams= to mix "
                    "cameras of different sizes)"
                )
            streams = [DEFAULT_STREAM] * len(frames)
        elif len(streams) != len(frames):
            raise ValueError(
                f"streams must give one key per frame: {len(streams)} keys for {len(frames)} "
                "frames"
            )
        if stamps is not None and len(stamps) != len(frames):
            raise ValueError(
                f"stamps must give one time per frame: {len(stamps)} for {len(frames)} frames"
            )
        self._apply_pending_settings()
        self._guard_streams(frames, list(streams), stamps)
        start = time.perf_counter()
        if self._flush:
            # Per thread (the node segments in a worker thread); cheap when repeated.
            runtime.flush_denormals()
        if self._settings.mode != "off":
            results = self._segment_fused(
                frames, channel_order, with_confidence, list(streams), stamps
            )
            elapsed_ms = (time.perf_counter() - start) * 1000.0 / len(frames)
            for result in results:
                result.model_ms = elapsed_ms
            return results
        for stream in streams:
            self.stream_state(stream).stats.record("every_frame", None)
        batch = self._codec.preprocess(frames, channel_order)
        logits = self._infer(batch, list(streams))
        sizes = [frame.shape[:2] for frame in frames]
        results: list[SegmentationResult | None] = [None] * len(frames)
        by_size = defaultdict(list)
        for index, size in enumerate(sizes):
            by_size[size].append(index)
        with torch.inference_mode():
            for size, indices in by_size.items():
                group = logits if len(indices) == len(frames) else logits[indices]
                labels, confidence = self._codec.postprocess(group.float(), size, with_confidence)
                labels_np = labels.cpu().numpy()
                confidence_np = confidence.cpu().numpy() if confidence is not None else None
                for j, i in enumerate(indices):
                    results[i] = SegmentationResult(
                        labels_np[j], None if confidence_np is None else confidence_np[j], 0.0
                    )
        elapsed_ms = (time.perf_counter() - start) * 1000.0 / len(frames)
        for result in results:
            result.model_ms = result.network_ms = (
                elapsed_ms  # mode off: all of it is the network's
            )
        return results

    def preprocess(self, frames: list[np.ndarray], channel_order: str = "rgb") -> torch.Tensor:
        """Frames -> the normalised (N, 3, h, w) float tensor the model takes, on the device."""
        return self._codec.preprocess(frames, channel_order)

    # ---- internals ---------------------------------------------------------------------------
    def _guard_streams(self, frames, streams: list[Hashable], stamps) -> None:
        """Reset a stream whose new frame cannot continue it (another size, a stamp before the
        previous one: a looping bag), whatever the caller's own reset policy; a stream's frames
        within one call must continue each other."""
        seen: set = set()
        for index, (frame, stream) in enumerate(zip(frames, streams)):
            state = self.stream_state(stream)
            stamp = None if stamps is None else float(stamps[index])
            if stream in seen:
                reason = state.continues(frame.shape[:2], stamp)
                if reason is not None:
                    raise ValueError(
                        f"frame {index} of stream {stream!r} cannot follow the previous one "
                        f"in the same call ({reason}); segment it in a call of its own"
                    )
            state.guard(frame.shape[:2], stamp)
            seen.add(stream)

    def _infer(self, batch: torch.Tensor, streams: list[Hashable]) -> torch.Tensor:
        if not self.is_temporal:
            return self._runner.run(batch)
        # A stream's frames must run one after the other; different streams run together.
        waves = _waves(streams)
        if len(waves) == 1:
            return self._runner.run(batch, [self._memory(stream) for stream in streams])
        logits: list[torch.Tensor | None] = [None] * len(streams)
        for indices in waves:
            memories = [self._memory(streams[i]) for i in indices]
            part = batch[indices[0] : indices[0] + 1] if len(indices) == 1 else batch[indices]
            out = self._runner.run(part, memories)
            for j, i in enumerate(indices):
                logits[i] = out[j]
        return torch.stack(logits)

    def _memory(self, stream: Hashable):
        state = self.stream_state(stream)
        if state.memory is None:
            state.memory = self._runner.new_memory()
        return state.memory

    def _segment_fused(
        self, frames, channel_order, with_confidence, streams, stamps
    ) -> list[SegmentationResult]:
        """Temporal fusion / adaptive clock: per wave (every stream's k-th frame of this call),
        flow and keyframe decisions first, then the network on the keyframes as one batch, then
        fusion."""
        fusion = self._fusion
        results: list[SegmentationResult | None] = [None] * len(frames)
        for wave in _waves(streams):
            with torch.inference_mode():
                plans = []
                for i in wave:
                    state = self.stream_state(streams[i])
                    analysis = fusion.analyse(state, frames[i])
                    stamp = None if stamps is None else float(stamps[i])
                    plans.append(
                        (i, state, analysis, fusion.keyframe_reason(state, analysis, stamp), stamp)
                    )
            keyframes = [i for i, _, _, reason, _ in plans if reason is not None]
            logits, network_ms = None, 0.0
            if keyframes:
                started = time.perf_counter()
                logits = self._infer(
                    self._codec.preprocess([frames[i] for i in keyframes], channel_order),
                    [streams[i] for i in keyframes],
                )
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # so that the network's time is its own
                network_ms = (time.perf_counter() - started) * 1000.0 / len(keyframes)
            with torch.inference_mode():
                for i, state, analysis, reason, stamp in plans:
                    started = time.perf_counter()
                    own = None if reason is None else logits[keyframes.index(i)][None].float()
                    fused, exact = fusion.update(
                        state, frames[i].shape[:2], analysis, own, reason, stamp
                    )
                    # Fused log-probabilities go through the logits' postprocessing: argmax and max
                    # softmax are those of the probabilities, resized as `upsample` says.
                    scores = own if exact else torch.log(fused.clamp_min(1e-12))
                    labels, confidence = self._codec.postprocess(
                        scores, frames[i].shape[:2], with_confidence
                    )
                    results[i] = SegmentationResult(
                        labels[0].cpu().numpy(),
                        None if confidence is None else confidence[0].cpu().numpy(),
                        0.0,
                        keyframe=reason is not None,
                        flow=analysis.flow,
                        network_ms=network_ms if reason is not None else 0.0,
                        flow_ms=analysis.flow_ms,
                        fusion_ms=(time.perf_counter() - started) * 1000.0,
                    )
        return results

    def _backend_context(self):
        """The torch backend's autocast/oneDNN settings (benchmarks time model parts under
        them)."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        return TorchRunner(self.model, self.device, self.precision, self.cpu_mkldnn).context()


def _waves(streams: list[Hashable]) -> list[list[int]]:
    """Frame indices grouped so that wave k holds every stream's k-th frame (in call order)."""
    occurrence: dict[Hashable, int] = defaultdict(int)
    waves: dict[int, list[int]] = defaultdict(list)
    for index, stream in enumerate(streams):
        waves[occurrence[stream]].append(index)
        occurrence[stream] += 1
    return list(waves.values())
