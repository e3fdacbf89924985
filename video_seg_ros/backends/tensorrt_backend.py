"""TensorRT backend (CUDA only): the exported ONNX graph (:mod:`.onnx_export`) built into a
TensorRT engine.

Needs the ``tensorrt`` Python wheel matching the machine's CUDA (``pip install tensorrt``; not a
dependency of this package, imported only when this backend is asked for). The built engine is
cached under ``<cache_dir>/tensorrt/<key>/model.plan``; the key covers the weights, input size,
precision, graph version, TensorRT and PyTorch versions and the GPU model, because a plan only
runs on the GPU type and TensorRT version that built it.

Without Python, a vehicle builds the same engine from ``video-seg-export``'s ONNX file with
``trtexec --onnx=model.onnx --fp16 --saveEngine=model.plan`` (docs/models.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from video_seg_ros.backends import BackendError, default_cache_dir, model_fingerprint
from video_seg_ros.backends.onnx_export import (
    GRAPH_VERSION,
    IMAGE,
    LOGITS,
    STATE_INPUTS,
    STATE_OUTPUTS,
    is_temporal,
)
from video_seg_ros.backends.onnx_graph import run_in_fixed_batches, write_graph

#: Largest batch a per-frame engine is built for (larger batches run in chunks).
MAX_BATCH = 8
#: Scratch memory TensorRT may use while building (bytes).
WORKSPACE_BYTES = 1 << 30


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`BackendError` saying how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise BackendError(
            "TensorRT is not installed: `pip install tensorrt` (the wheel matching this "
            "machine's CUDA), or use backend 'torch'."
        ) from error
    return tensorrt


class TensorMemory:
    """One stream's memory for the TensorRT graph: the three ``memory_*`` tensors on the GPU."""

    def __init__(self, shapes: list[tuple[int, ...]], device: torch.device):
        self.tensors = [torch.zeros(shape, device=device) for shape in shapes]

    def reset(self) -> None:
        self.tensors[-1].zero_()

    def __len__(self) -> int:
        return int(self.tensors[-1].sum().item())


class TensorRtRunner:
    """Runs a model through TensorRT on ``device`` (CUDA) in 'fp32', 'fp16' or 'bf16'."""

    name = "tensorrt"

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        precision: str,
        device: torch.device,
        cache_dir: str | os.PathLike | None = None,
        fingerprint_extra: tuple = (),
    ):
        if device.type != "cuda":
            raise BackendError(
                "backend 'tensorrt' runs on CUDA devices only; on the CPU use 'openvino' or "
                "'torch'."
            )
        trt = import_tensorrt()
        self._trt = trt
        self.device = device
        self.temporal = is_temporal(model)
        self.input_size = tuple(input_size)
        key = model_fingerprint(
            model,
            tuple(input_size),
            precision,
            GRAPH_VERSION,
            trt.__version__,
            torch.__version__,
            torch.cuda.get_device_name(device),
            *fingerprint_extra,
        )[:32]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        plan_path = root / "tensorrt" / key / "model.plan"
        self._logger = trt.Logger(trt.Logger.WARNING)
        if not plan_path.is_file():
            self._build(model, precision, plan_path)
        with torch.cuda.device(device):
            runtime = trt.Runtime(self._logger)
            self._engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self._engine is None:
                raise BackendError(
                    f"TensorRT could not load {plan_path}; delete it to rebuild the engine."
                )
            self._context = self._engine.create_execution_context()
        if self.temporal:
            self._state_shapes = [
                tuple(self._engine.get_tensor_shape(name)) for name in STATE_INPUTS
            ]
        # An imported graph may fix its batch size (torch.onnx.export's default: 1): frames run in
        # chunks.
        fixed = int(self._engine.get_tensor_shape(IMAGE)[0])
        self._fixed_batch = fixed if fixed > 0 and not self.temporal else None

    def _build(self, model: nn.Module, precision: str, plan_path: Path) -> None:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch (the only mode in TensorRT >= 10)
        parser = trt.OnnxParser(network, self._logger)
        with tempfile.TemporaryDirectory(prefix="video_seg_trt_") as tmp:
            onnx_path = write_graph(
                model, self.input_size, Path(tmp) / "model.onnx", dynamic_batch=not self.temporal
            )
            if not parser.parse_from_file(str(onnx_path)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BackendError(f"TensorRT could not parse the exported model: {errors[:300]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        flag = {"fp16": "FP16", "bf16": "BF16"}.get(precision)
        if flag is not None:
            if not hasattr(trt.BuilderFlag, flag):
                raise BackendError(
                    f"this TensorRT ({trt.__version__}) has no {flag} builder flag; build the "
                    "engine with trtexec from `video-seg-export`'s ONNX file, or use "
                    "precision 'fp32'."
                )
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if not self.temporal and network.get_input(0).shape[0] < 0:  # a free batch needs a profile
            width, height = self.input_size
            profile = builder.create_optimization_profile()
            profile.set_shape(
                IMAGE, (1, 3, height, width), (1, 3, height, width), (MAX_BATCH, 3, height, width)
            )
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(
                "TensorRT could not build an engine for this model (see its log above)."
            )
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        partial = plan_path.with_name(plan_path.name + ".partial")
        partial.write_bytes(bytes(serialized))
        os.replace(partial, plan_path)

    def new_memory(self) -> TensorMemory:
        return TensorMemory(self._state_shapes, self.device)

    def _execute(
        self, tensors: dict[str, torch.Tensor], output_names: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        for name, tensor in tensors.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in output_names:
            outputs[name] = torch.empty(
                tuple(self._context.get_tensor_shape(name)), device=self.device
            )
            self._context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log above)")
        return outputs

    def run(self, batch: torch.Tensor, memories: list[TensorMemory] | None = None) -> torch.Tensor:
        batch = batch.detach().float().contiguous()
        if self._fixed_batch and len(batch) != self._fixed_batch:
            return run_in_fixed_batches(self.run, batch, self._fixed_batch)
        if not self.temporal:
            chunks = [
                self._execute({IMAGE: chunk.contiguous()}, (LOGITS,))[LOGITS]
                for chunk in batch.split(MAX_BATCH)
            ]
            return torch.cat(chunks)
        logits = []
        for i, memory in enumerate(memories):
            inputs = {
                IMAGE: batch[i : i + 1].contiguous(),
                **dict(zip(STATE_INPUTS, memory.tensors)),
            }
            outputs = self._execute(inputs, (LOGITS, *STATE_OUTPUTS))
            memory.tensors = [outputs[name] for name in STATE_OUTPUTS]
            logits.append(outputs[LOGITS])
        return torch.cat(logits)

    def release(self) -> None:
        self._context = None
        self._engine = None
