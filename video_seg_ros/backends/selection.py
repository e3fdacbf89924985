"""Which runner runs a model: a concrete backend in a precision, the ``auto`` choice with its
fallback reason, and the fp32 reference the precision gate compares against. No ROS here.

:class:`RunnerFactory` takes everything it needs as explicit arguments (the engine builds one per
model); it never imports the engine. Every runner takes the normalised (N, 3, h, w) float tensor
and returns logits (N, classes, h, w).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from video_seg_ros.backends import AUTO_CPU_BACKEND, BackendError
from video_seg_ros.backends.int8 import DEFAULT_RECIPE, Int8Recipe
from video_seg_ros.runtime import PrecisionError


def backend_version(backend: str) -> str:
    """The library version of a converting backend (part of the precision gate's cache key)."""
    if backend == "openvino":
        from video_seg_ros.backends.openvino_backend import import_openvino

        return import_openvino().get_version()
    if backend == "tensorrt":
        import tensorrt

        return tensorrt.__version__
    return ""


def checkpoint_fingerprint_extra(checkpoint) -> tuple:
    """What of a checkpoint, besides its weights, keys a converted model: architecture, its
    arguments and the memory settings."""
    cp = checkpoint
    return (cp.arch, sorted(cp.arch_kwargs.items()), sorted((cp.memory or {}).items()))


class RunnerFactory:
    """Builds the runners of one model on one device.

    Args:
        model: the ``nn.Module`` (or an imported ONNX graph's stand-in) to run.
        device: where the engine runs.
        input_size: the network input (width, height).
        model_name: the name messages use.
        cache_dir: where converted models are cached (``None``: the default).
        flush_denormals: flush denormal floats in OpenVINO's threads.
        fingerprint_extra: what besides the weights keys a conversion
            (:func:`checkpoint_fingerprint_extra`).
        is_graph: an imported ONNX graph, which PyTorch cannot run.
        cpu_mkldnn: torch backend: oneDNN convolutions on the CPU.
        calibration: the engine's :class:`~video_seg_ros.precision.CalibrationSet` (int8
            calibrates on it).
        int8_recipe: how OpenVINO int8 quantises (a name in
            :data:`~video_seg_ros.backends.int8.RECIPES`, or an ``Int8Recipe``).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        input_size: tuple[int, int],
        *,
        model_name: str,
        cache_dir: str | None,
        flush_denormals: bool,
        fingerprint_extra: tuple,
        is_graph: bool,
        cpu_mkldnn: bool,
        calibration=None,
        int8_recipe: str | Int8Recipe | None = None,
    ):
        self.model = model
        self.device = device
        self.input_size = input_size
        self.model_name = model_name
        self.cache_dir = cache_dir
        self.flush_denormals = flush_denormals
        self.fingerprint_extra = fingerprint_extra
        self.is_graph = is_graph
        self.cpu_mkldnn = cpu_mkldnn
        self.calibration = calibration
        self.int8_recipe = int8_recipe or DEFAULT_RECIPE

    def runner(self, backend: str, precision: str, owned: bool):
        """The runner of a concrete backend in ``precision``."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        if backend == "openvino":
            return self.openvino(precision)
        if backend == "tensorrt":
            return self.tensorrt(precision)
        if self.is_graph:
            raise BackendError(
                f"{self.model_name} is an imported ONNX graph, which PyTorch cannot run: use "
                "backend 'openvino' (CPU), 'tensorrt' (CUDA) or 'auto'."
            )
        if precision == "int8":
            raise PrecisionError(
                "precision 'int8' runs on the OpenVINO backend (backend 'openvino' or 'auto'), "
                "not on torch; use 'fp32' or 'bf16' with torch."
            )
        return TorchRunner(self.model, self.device, precision, self.cpu_mkldnn, owned=owned)

    def choose(self, backend: str, precision: str, owned: bool):
        """The runner of ``backend`` (``auto`` chosen here) as ``(runner, fallback_reason,
        log_level)``: ``fallback_reason`` says why ``auto`` runs torch instead of its first
        choice (``None`` when it does not), at ``log_level`` (INFO where it is expected)."""

        def torch_runner():
            return self.runner("torch", precision, owned)

        if backend != "auto" or precision == "int8":
            # int8 exists only on OpenVINO: no quiet fallback to a torch model that is not int8
            backend = "openvino" if backend == "auto" else backend
            return self.runner(backend, precision, owned), None, logging.WARNING
        if self.is_graph:
            return self.graph(precision), None, logging.WARNING  # no torch fallback for a graph
        if self.device.type == "cuda":
            return torch_runner(), None, logging.WARNING
        if not owned:
            # Expected (the trainer validates its own module): not worth a warning.
            reason = "a model object was passed (model=); only the torch backend runs it"
            return torch_runner(), reason, logging.INFO
        reason = None
        if AUTO_CPU_BACKEND == "openvino":
            # Memory models too, since their export no longer dies (local_attention's static
            # sizes): test_backends checks them against torch over a sequence with a reset.
            try:
                return self.openvino(precision), None, logging.WARNING
            except BackendError as error:
                reason = str(error)
            except (
                Exception
            ) as error:  # auto must still start: anything OpenVINO raises means torch
                reason = f"OpenVINO failed: {type(error).__name__}: {str(error).strip()[:300]}"
        return torch_runner(), reason, logging.WARNING

    def openvino(self, precision: str):
        from video_seg_ros.backends.openvino_backend import OpenVinoRunner

        if self.device.type != "cpu":
            raise BackendError(
                f"backend 'openvino' runs on the CPU here; device is {self.device}. "
                "Use device 'cpu', or backend 'torch'/'tensorrt' on CUDA."
            )
        return OpenVinoRunner(
            self.model,
            self.input_size,
            precision,
            cache_dir=self.cache_dir,
            threads=torch.get_num_threads(),
            flush_denormals=self.flush_denormals,
            fingerprint_extra=self.fingerprint_extra,
            calibration=self.calibration,
            int8_recipe=self.int8_recipe,
        )

    def tensorrt(self, precision: str):
        from video_seg_ros.backends.tensorrt_backend import TensorRtRunner

        return TensorRtRunner(
            self.model,
            self.input_size,
            precision,
            self.device,
            cache_dir=self.cache_dir,
            fingerprint_extra=self.fingerprint_extra,
        )

    def graph(self, precision: str):
        """An imported ONNX graph under backend ``auto``: OpenVINO on the CPU, TensorRT on CUDA."""
        from video_seg_ros.backends.onnx_graph import GraphError

        try:
            return (
                self.tensorrt(precision)
                if self.device.type == "cuda"
                else self.openvino(precision)
            )
        except GraphError:
            raise  # a damaged graph: its message says what to do
        except BackendError as error:
            raise BackendError(
                f"{error} (an imported ONNX graph runs on OpenVINO with device 'cpu', or on "
                "TensorRT with device 'cuda'; PyTorch cannot run it)"
            ) from error

    def reference(self, owned: bool):
        """The precision gate's fp32 reference: torch fp32, or for an imported graph
        :meth:`graph_reference`."""
        from video_seg_ros.backends.torch_backend import TorchRunner

        if self.is_graph:
            return self.graph_reference()
        return TorchRunner(self.model, self.device, "fp32", self.cpu_mkldnn, owned=owned)

    def graph_reference(self):
        """The precision gate's fp32 reference for an imported graph (no torch module): OpenVINO
        fp32 on the CPU, its results moved to the engine's device; TensorRT fp32 where OpenVINO is
        missing."""
        from video_seg_ros.backends.onnx_graph import HostRunner
        from video_seg_ros.backends.openvino_backend import OpenVinoRunner
        from video_seg_ros.backends.tensorrt_backend import TensorRtRunner

        try:
            runner = OpenVinoRunner(
                self.model,
                self.input_size,
                "fp32",
                cache_dir=self.cache_dir,
                threads=torch.get_num_threads(),
                flush_denormals=True,
                fingerprint_extra=self.fingerprint_extra,
            )
        except BackendError:
            if self.device.type != "cuda":
                raise
            return TensorRtRunner(
                self.model,
                self.input_size,
                "fp32",
                self.device,
                cache_dir=self.cache_dir,
                fingerprint_extra=self.fingerprint_extra,
            )
        return runner if self.device.type == "cpu" else HostRunner(runner, self.device)
