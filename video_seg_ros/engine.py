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

The engine puts the parts together: :mod:`video_seg_ros.backends.selection` builds the runner
(backend, ``auto`` choice), :func:`video_seg_ros.precision.settle` settles the precision,
:mod:`video_seg_ros.engine_io` holds the pre/postprocessing and :mod:`video_seg_ros.engine_batches`
runs a call's frames; :mod:`video_seg_ros.temporal_states` keeps the streams.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import nn

from video_seg_ros import runtime
from video_seg_ros.backends import BACKENDS, BackendError
from video_seg_ros.backends.int8 import Int8Recipe
from video_seg_ros.backends.selection import RunnerFactory, checkpoint_fingerprint_extra
from video_seg_ros.checkpoint import Checkpoint, load_checkpoint
from video_seg_ros.engine_io import (  # noqa: F401 (DeviceError, UPSAMPLE_MODES: re-exported)
    UPSAMPLE_MODES,
    DeviceError,
    FrameCodec,
    SegmentationResult,
    build_model,
    check_model_device,
    resolve_device,
)
from video_seg_ros.engine_batches import (
    DEFAULT_STREAM,
    NetworkThread,
    check_batch,
    guard_streams,
    infer_with_memory,
    segment_fused,
    segment_plain,
)
from video_seg_ros.labels import palette_lookup_table
from video_seg_ros.precision import AGREEMENT_THRESHOLD, CalibrationSet, PrecisionDecision
from video_seg_ros.precision import settle as settle_precision
from video_seg_ros.runtime import (  # noqa: F401 (re-exported)
    PrecisionError,
    precision_candidate,
    resolve_precision,
)
from video_seg_ros.temporal import StreamTemporalState, TemporalSettings
from video_seg_ros.temporal_states import StreamStates

LOG = logging.getLogger(__name__)


class SegmentationEngine:
    """Runs a checkpoint's model on frames, one at a time (streaming) or in batches.

    Args:
        checkpoint: a :class:`Checkpoint` or a path (``None``/"default" = embedded model).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` (always the exact path), ``bf16`` (CPUs with native bf16 - AMX or
            AVX512-BF16 - and CUDA; refused where it would be emulated), ``fp16`` (CUDA), or
            ``int8`` (OpenVINO on the CPU: quantised from the calibration frames, refused below
            the accuracy gate), or
            ``auto``: fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere, a reduced
            precision kept only where it passes the accuracy gate (:mod:`video_seg_ros.precision`;
            ``precision_decision`` says what runs and why, also logged).
            :class:`~video_seg_ros.runtime.PrecisionError` says what to use instead.
        min_agreement: the gate: share of calibration labels a reduced precision must keep.
        calibration: (H, W, 3) uint8 RGB frames for the gate and int8's calibration (default:
            synthetic street frames; :func:`~video_seg_ros.precision.load_calibration` reads
            them from a folder, video or bag).
        int8_recipe: how ``precision='int8'`` quantises: a name in
            :data:`~video_seg_ros.backends.int8.RECIPES` or an
            :class:`~video_seg_ros.backends.int8.Int8Recipe` (default
            :data:`~video_seg_ros.backends.int8.DEFAULT_RECIPE`).
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
        int8_recipe: str | Int8Recipe | None = None,
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
        self._calibration = CalibrationSet(
            calibration, self._codec.input_size, self._codec.preprocess
        )
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
            calibration=self._calibration,
            int8_recipe=int8_recipe,
        )
        self._runner, self.fallback_reason, level = self._runners.choose(
            backend, self.precision, owned
        )
        if self.fallback_reason is not None:
            self._log_fallback(self.fallback_reason, level)
        self.backend = self._runner.name
        #: Every temporal thing of each stream (memory, previous frame, fused probabilities,
        #: clock).
        self._streams = StreamStates(temporal, self.device)
        self._network_thread = NetworkThread(self._flush)  # started by keyframe_lag > 0 only
        self._settle_precision(backend, owned)
        LOG.info(
            "%s: backend %s, precision %s (%s)%s",
            self.model_name,
            self.backend,
            self.precision,
            self.precision_decision.reason,
            f"; backend fallback: {self.fallback_reason}" if self.fallback_reason else "",
        )

    def _settle_precision(self, backend: str, owned: bool) -> None:
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
            self._calibration,
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
        return self._streams.newest

    def set_temporal(self, settings: TemporalSettings | dict | str) -> TemporalSettings:
        """Change the temporal settings; they apply from the next frame (safe to call from another
        thread than the one segmenting). Streams keep their fused state unless the change makes it
        invalid (mode off, or another probability or flow resolution). Raises
        :class:`~video_seg_ros.temporal.TemporalSettingsError` (a ValueError) naming a bad
        field."""
        return self._streams.request(settings)

    def stream_state(self, stream: Hashable = DEFAULT_STREAM) -> StreamTemporalState:
        """The temporal state of ``stream`` (created empty when the stream is new)."""
        return self._streams.state(stream)

    def temporal_stats(self, stream: Hashable = DEFAULT_STREAM) -> dict:
        """Diagnostics of one stream: ``mode``, ``frames``, ``keyframes``, ``keyframe_share``
        (network share over the last 100 frames), ``fused_confidence`` (mean, same window; None in
        mode off), ``reasons`` (keyframes by reason), ``resets`` (the engine's own resets of the
        stream by reason: ``size_change``, ``time_backwards``)."""
        return self._streams.stats(stream)

    def forget_streams(self) -> None:
        """Drop every stream's state and statistics, as in a new engine (e.g. after a warm-up)."""
        self._streams.forget()

    def reset(self, stream: Hashable | None = None, *, memory_only: bool = False) -> None:
        """Forget temporal state (model memory, previous frame, fused probabilities, keyframe
        clock): of one stream, or of all (``stream=None``). ``memory_only``: empty the model
        memory only."""
        self._streams.reset(stream, memory_only)

    def release(self) -> None:
        """Free the model and every stream's state (the engine cannot segment afterwards)."""
        self._network_thread.close()  # first: a background keyframe may be using the runner
        if self._runner is not None:
            self._runner.release()
        self._runner = None
        self._runners = None  # it holds the model too
        self._streams.forget()
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
        streams = check_batch(frames, streams, stamps)
        self._streams.apply_pending()
        guard_streams(self.stream_state, frames, streams, stamps)
        start = time.perf_counter()
        if self._flush:
            # Per thread (the node segments in a worker thread); cheap when repeated.
            runtime.flush_denormals()
        fused = self._streams.settings.mode != "off"
        if fused:
            results = segment_fused(
                self._codec,
                self._streams.fusion,
                self._infer,
                self.stream_state,
                self.device,
                frames,
                channel_order,
                with_confidence,
                streams,
                stamps,
                self._network_thread,
            )
        else:
            for stream in streams:
                self.stream_state(stream).stats.record("every_frame", None)
            results = segment_plain(
                self._codec,
                self._infer_frames,
                frames,
                channel_order,
                with_confidence,
                streams,
                self._infer_class_index if self._gives_class_index() else None,
            )
        elapsed_ms = (time.perf_counter() - start) * 1000.0 / len(frames)
        for result in results:
            result.model_ms = elapsed_ms
            if not fused:
                result.network_ms = elapsed_ms  # mode off: all of it is the network's
        return results

    def preprocess(self, frames: list[np.ndarray], channel_order: str = "rgb") -> torch.Tensor:
        """Frames -> the normalised (N, 3, h, w) float tensor the model takes, on the device."""
        return self._codec.preprocess(frames, channel_order)

    # ---- internals ---------------------------------------------------------------------------
    def _infer(self, batch: torch.Tensor, streams: list[Hashable]) -> torch.Tensor:
        if not self.is_temporal:
            return self._runner.run(batch)
        return infer_with_memory(self._runner, batch, streams, self._memory)

    def _infer_frames(self, batch: torch.Tensor, streams: list[Hashable]):
        """Yields ``(index, logits (1, classes, h, w))`` per frame, each valid until the next:
        frame by frame where the runner can (OpenVINO), else slices of one batch."""
        if not self.is_temporal and getattr(self._runner, "runs_frame_by_frame", False):
            yield from self._runner.run_frames(batch)
            return
        logits = self._infer(batch, streams)
        for index in range(len(logits)):
            yield index, logits[index : index + 1]

    def _gives_class_index(self) -> bool:
        return not self.is_temporal and getattr(self._runner, "gives_class_index", False)

    def _infer_class_index(self, batch: torch.Tensor, streams: list[Hashable]):
        """Yields ``(index, class index (1, h, w))`` per frame from a runner that takes the
        maximum in its graph (OpenVINO): the full-resolution logits are never written."""
        yield from self._runner.run_frames(batch, labels=True)

    def _memory(self, stream: Hashable):
        state = self.stream_state(stream)
        if state.memory is None:
            state.memory = self._runner.new_memory()
        return state.memory

    def _backend_context(self):
        """The torch backend's autocast/oneDNN settings (benchmarks time model parts under
        them)."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        return TorchRunner(self.model, self.device, self.precision, self.cpu_mkldnn).context()
