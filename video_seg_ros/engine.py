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

import dataclasses
import logging
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros import runtime
from video_seg_ros.backends import (
    AUTO_CPU_BACKEND,
    BACKENDS,
    BackendError,
    default_cache_dir,
    model_fingerprint,
)
from video_seg_ros.checkpoint import (
    Checkpoint,
    check_weights_fit,
    load_checkpoint,
    output_class_lookup,
)
from video_seg_ros.labels import palette_lookup_table
from video_seg_ros.models import build_from_checkpoint
from video_seg_ros.precision import (
    AGREEMENT_THRESHOLD,
    GateCache,
    PrecisionDecision,
    calibration_frames,
    decide,
    frames_fingerprint,
)
from video_seg_ros.runtime import PrecisionError, precision_candidate, resolve_precision  # noqa: F401 (re-exported)
from video_seg_ros.temporal import FlowFusion, StreamTemporalState, TemporalSettings

LOG = logging.getLogger(__name__)

_CV2_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


#: How predictions reach the frame size; "auto" = "logits" on CUDA, "labels" on the CPU, where
#: resizing 20 score maps to 2048x1024 costs about as much as the network itself (measured 494 vs
#: 109 ms) for under 0.1 point of pixel accuracy.
UPSAMPLE_MODES = ("auto", "logits", "labels")


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> first CUDA device if any, else CPU; ``cuda[:N]`` must exist."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{device}' requested but no CUDA device is available here; "
                "use 'cpu' or 'auto'."
            )
        try:
            resolved = torch.device(device if ":" in device else "cuda:0")
        except RuntimeError as error:
            raise DeviceError(
                f"cannot parse device '{device}'; use auto, cpu or cuda[:N]."
            ) from error
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{device}' requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
        return resolved
    raise DeviceError(f"unknown device '{device}'; use auto, cpu or cuda[:N].")


@dataclass
class SegmentationResult:
    """One frame's output at the frame's own resolution.

    With temporal fusion (:mod:`video_seg_ros.temporal`) ``labels`` and ``confidence`` are those of
    the fused probabilities, ``flow`` is the flow of this frame to its stream's previous frame
    (reusable, e.g. by :class:`~video_seg_ros.metrics.OnlineConsistency`), and ``keyframe`` says
    whether the network ran on this frame (always True in modes off and fuse).
    """

    labels: np.ndarray  # (H, W) uint8 class ids, IGNORE_ID = unlabelled
    confidence: np.ndarray | None  # (H, W) float32 max (fused) probability, if requested
    model_ms: float  # everything the engine did for this frame, milliseconds
    keyframe: bool = True  # the network ran on this frame
    flow: np.ndarray | None = None  # (h, w, 2) float32 flow this frame -> previous one (flow size)
    network_ms: float = 0.0  # preprocessing + network, this frame's share (mode off: all)
    flow_ms: float = 0.0  # optical flow, warp-error check and warp
    fusion_ms: float = 0.0  # blend and postprocessing (argmax, resize)


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
        self.upsample = upsample
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
            model = _build_model(checkpoint).eval().to(self.device)
        else:
            _check_model_device(model, self.device)
        self.model = model
        #: An imported ONNX graph: no torch module to run, so no torch backend nor torch reference.
        self._is_graph = not getattr(model, "runs_in_torch", True)
        if getattr(model, "output_kind", "logits") == "class_ids":
            self.upsample = (
                "labels"  # an imported graph's class ids resize nearest; no scores to blend
            )
        self._temporal = bool(getattr(model, "is_temporal", False))
        base = getattr(model, "base", model)
        self.cpu_mkldnn = (
            getattr(base, "prefers_mkldnn", True) if cpu_mkldnn is None else cpu_mkldnn
        )
        pre = checkpoint.preprocessing
        self._input_size = (pre.input_width, pre.input_height)
        self._interpolation = _CV2_INTERPOLATION[pre.interpolation]
        self._channel_order = pre.channel_order
        std = torch.tensor(pre.std, dtype=torch.float32)
        self._mean = torch.tensor(pre.mean, dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self._factor = (pre.scale / std).to(self.device).view(1, 3, 1, 1)
        self._output_to_class = output_class_lookup(checkpoint.output_to_class, self.device)
        self.palette_table = palette_lookup_table(checkpoint.palette)
        self.fallback_reason: str | None = None
        self._cache_dir = cache_dir
        self._runner = self._make_runner(backend, owned)
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

    # ---- backend choice ------------------------------------------------------------------------
    def _runner_for(self, backend: str, owned: bool):
        """The runner of a concrete backend in ``self.precision``."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        if backend == "openvino":
            return self._openvino_runner()
        if backend == "tensorrt":
            return self._tensorrt_runner()
        if self._is_graph:
            raise BackendError(
                f"{self.model_name} is an imported ONNX graph, which PyTorch cannot run: use "
                "backend 'openvino' (CPU), 'tensorrt' (CUDA) or 'auto'."
            )
        return TorchRunner(self.model, self.device, self.precision, self.cpu_mkldnn, owned=owned)

    def _make_runner(self, backend: str, owned: bool):
        def torch_runner():
            return self._runner_for("torch", owned)

        if backend != "auto":
            return self._runner_for(backend, owned)
        # auto
        if self._is_graph:
            return self._graph_runner()  # an imported graph has no torch fallback
        if self.device.type == "cuda":
            return torch_runner()
        if not owned:
            # Expected (the trainer validates its own module): not worth a warning.
            self._fall_back(
                "a model object was passed (model=); only the torch backend runs it", logging.INFO
            )
            return torch_runner()
        if AUTO_CPU_BACKEND == "openvino" and getattr(self.model, "is_temporal", False):
            # Exporting the memory graph crashed the node's worker thread with SIGFPE inside
            # torch.onnx.export (not yet understood); auto must never take the node down, so memory
            # models stay on torch unless OpenVINO is asked for explicitly.
            self._fall_back(
                "memory (temporal) models run on torch under backend auto; "
                "ask for backend 'openvino' explicitly to convert them",
                logging.INFO,
            )
        elif AUTO_CPU_BACKEND == "openvino":
            try:
                return self._openvino_runner()
            except BackendError as error:
                self._fall_back(str(error))
            except (
                Exception
            ) as error:  # auto must still start: anything OpenVINO raises means torch
                self._fall_back(
                    f"OpenVINO failed: {type(error).__name__}: {str(error).strip()[:300]}"
                )
        return torch_runner()

    def _settle_precision(self, backend: str, owned: bool, calibration) -> None:
        """Keep the candidate precision only where it earns it, with one warm-up pass in what runs
        (:func:`video_seg_ros.precision.decide`); under ``backend='auto'`` a converted model that
        cannot run falls back to torch, as a failed conversion does."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        width, height = self._input_size
        frames = (
            list(calibration) if calibration is not None else calibration_frames(width, height)
        )
        for frame in frames:
            _check_frame(frame)
        batches = [self._preprocess([frame], "rgb") for frame in frames]
        if not batches:
            raise ValueError("calibration needs at least one frame")

        def reference():
            if self._is_graph:
                return self._graph_reference()
            return TorchRunner(self.model, self.device, "fp32", self.cpu_mkldnn, owned=owned)

        def rebuild(precision: str):
            self.precision = precision
            return self._runner_for(self.backend, owned)

        cache = None
        if self.precision != "fp32":
            key = model_fingerprint(
                self.model,
                self.backend,
                self.precision,
                self._input_size,
                runtime.cpu_name(),
                torch.__version__,
                _backend_version(self.backend),
                frames_fingerprint(frames),
                *self._fingerprint_extra(),
            )[:32]
            cache = GateCache(self._cache_dir or default_cache_dir(), key)
        candidate = self.precision
        try:
            self._runner, decision = decide(
                self.requested_precision,
                candidate,
                self._precision_candidate_reason,
                self._runner,
                rebuild,
                reference,
                batches,
                self.is_temporal,
                self.min_agreement,
                cache,
            )
        except PrecisionError:
            raise
        except Exception as error:
            if self.backend == "torch":
                raise  # the reference path itself cannot run the model
            message = f"{type(error).__name__}: {str(error).strip()[:300]}"
            if backend != "auto" or self._is_graph:
                raise BackendError(
                    f"{self.backend} could not run the converted model: {message}"
                ) from error
            self._fall_back(f"{self.backend} could not run the model: {message}")
            self.precision = candidate
            self._runner = self._runner_for("torch", owned)
            self.backend = self._runner.name
            self._settle_precision("torch", owned, frames)
            return
        self.precision = decision.precision
        self.precision_decision: PrecisionDecision = decision

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

    def _fall_back(self, reason: str, level: int = logging.WARNING) -> None:
        self.fallback_reason = reason
        LOG.log(level, "backend auto: running %s with torch: %s", self.model_name, reason)

    def _fingerprint_extra(self) -> tuple:
        cp = self.checkpoint
        return (cp.arch, sorted(cp.arch_kwargs.items()), sorted((cp.memory or {}).items()))

    def _openvino_runner(self):
        from video_seg_ros.backends.openvino_backend import OpenVinoRunner

        if self.device.type != "cpu":
            raise BackendError(
                f"backend 'openvino' runs on the CPU here; device is {self.device}. "
                "Use device 'cpu', or backend 'torch'/'tensorrt' on CUDA."
            )
        return OpenVinoRunner(
            self.model,
            self._input_size,
            self.precision,
            cache_dir=self._cache_dir,
            threads=torch.get_num_threads(),
            flush_denormals=self._flush,
            fingerprint_extra=self._fingerprint_extra(),
        )

    def _tensorrt_runner(self):
        from video_seg_ros.backends.tensorrt_backend import TensorRtRunner

        return TensorRtRunner(
            self.model,
            self._input_size,
            self.precision,
            self.device,
            cache_dir=self._cache_dir,
            fingerprint_extra=self._fingerprint_extra(),
        )

    def _graph_runner(self):
        """An imported ONNX graph under backend ``auto``: OpenVINO on the CPU, TensorRT on CUDA."""
        from video_seg_ros.backends.onnx_graph import GraphError

        try:
            return (
                self._tensorrt_runner() if self.device.type == "cuda" else self._openvino_runner()
            )
        except GraphError:
            raise  # a damaged graph: its message says what to do
        except BackendError as error:
            raise BackendError(
                f"{error} (an imported ONNX graph runs on OpenVINO with device 'cpu', or on "
                "TensorRT with device 'cuda'; PyTorch cannot run it)"
            ) from error

    def _graph_reference(self):
        """The precision gate's fp32 reference for an imported graph (no torch module): OpenVINO
        fp32 on the CPU, its results moved to the engine's device; TensorRT fp32 where OpenVINO is
        missing."""
        from video_seg_ros.backends.onnx_graph import HostRunner
        from video_seg_ros.backends.openvino_backend import OpenVinoRunner
        from video_seg_ros.backends.tensorrt_backend import TensorRtRunner

        try:
            runner = OpenVinoRunner(
                self.model,
                self._input_size,
                "fp32",
                cache_dir=self._cache_dir,
                threads=torch.get_num_threads(),
                flush_denormals=True,
                fingerprint_extra=self._fingerprint_extra(),
            )
        except BackendError:
            if self.device.type != "cuda":
                raise
            return TensorRtRunner(
                self.model,
                self._input_size,
                "fp32",
                self.device,
                cache_dir=self._cache_dir,
                fingerprint_extra=self._fingerprint_extra(),
            )
        return runner if self.device.type == "cpu" else HostRunner(runner, self.device)

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
        return self._input_size

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
            _check_frame(frame)
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
        batch = self._preprocess(frames, channel_order)
        logits = self._infer(batch, list(streams))
        sizes = [frame.shape[:2] for frame in frames]
        results: list[SegmentationResult | None] = [None] * len(frames)
        by_size = defaultdict(list)
        for index, size in enumerate(sizes):
            by_size[size].append(index)
        with torch.inference_mode():
            for size, indices in by_size.items():
                group = logits if len(indices) == len(frames) else logits[indices]
                labels, confidence = self._postprocess(group.float(), size, with_confidence)
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
        return self._preprocess(frames, channel_order)

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
                    self._preprocess([frames[i] for i in keyframes], channel_order),
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
                    labels, confidence = self._postprocess(
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

    def _preprocess(self, frames, channel_order):
        if channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order must be 'rgb' or 'bgr'")
        width, height = self._input_size
        # Resize in float, as the source repositories do: rounding resized pixels to uint8
        # moves ESPNet's logits by up to 0.7 (its normalised inputs span only about +-0.02).
        resized = [
            frame
            if frame.shape[:2] == (height, width)
            else cv2.resize(
                frame.astype(np.float32), (width, height), interpolation=self._interpolation
            )
            for frame in frames
        ]
        host = torch.from_numpy(
            np.stack(resized)
        )  # (N, h, w, 3) uint8, or float32 when any was resized
        if channel_order != self._channel_order:
            host = host.flip(-1)
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self._mean) * self._factor).contiguous()

    def _postprocess(self, logits, size, with_confidence):
        if self.upsample == "logits" and logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        scores, index = logits.max(dim=1)
        labels = self._output_to_class[index.to(self._output_to_class.device)]
        confidence = None
        if with_confidence:
            # max softmax = 1 / sum(exp(l - max l)), without materialising the softmax.
            confidence = 1.0 / torch.exp(logits - scores.unsqueeze(1)).sum(dim=1)
        if labels.shape[-2:] != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(
                torch.uint8
            )
            if confidence is not None:
                confidence = F.interpolate(
                    confidence[:, None], size=size, mode="bilinear", align_corners=False
                )[:, 0]
        return labels, confidence

    def _backend_context(self):
        """The torch backend's autocast/oneDNN settings (benchmarks time model parts under
        them)."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        return TorchRunner(self.model, self.device, self.precision, self.cpu_mkldnn).context()


def _backend_version(backend: str) -> str:
    if backend == "openvino":
        from video_seg_ros.backends.openvino_backend import import_openvino

        return import_openvino().get_version()
    if backend == "tensorrt":
        import tensorrt

        return tensorrt.__version__
    return ""


def _waves(streams: list[Hashable]) -> list[list[int]]:
    """Frame indices grouped so that wave k holds every stream's k-th frame (in call order)."""
    occurrence: dict[Hashable, int] = defaultdict(int)
    waves: dict[int, list[int]] = defaultdict(list)
    for index, stream in enumerate(streams):
        waves[occurrence[stream]].append(index)
        occurrence[stream] += 1
    return list(waves.values())


def _build_model(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's model with its weights; weights that do not fit the architecture its
    metadata names (another label set's classifier, another model) raise a one-line
    :class:`~video_seg_ros.checkpoint.CheckpointError` instead of torch's page of key lists."""
    try:
        return build_from_checkpoint(checkpoint)
    except RuntimeError as error:
        try:  # the same model without weights, to compare shapes
            skeleton = build_from_checkpoint(
                dataclasses.replace(checkpoint, state_dict={}), strict=False
            )
        except Exception:
            raise error from None
        expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
        origin = getattr(checkpoint, "loaded_from", None) or checkpoint.model_name
        check_weights_fit(checkpoint, expected, origin=origin)
        raise


def _check_model_device(model: nn.Module, device: torch.device) -> None:
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != device.type:
        raise ValueError(
            f"model= is on {parameter.device} but the engine runs on {device}; move it "
            "with model.to(...) or pass the matching device."
        )


def _check_frame(frame: np.ndarray) -> None:
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] != 3
    ):
        raise ValueError(
            "frames must be (H, W, 3) uint8 arrays, got "
            f"{getattr(frame, 'shape', None)} {getattr(frame, 'dtype', type(frame))}"
        )
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame too small: {frame.shape[:2]}")
