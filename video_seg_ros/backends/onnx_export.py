"""The segmentation network as an ONNX graph: export, input/output names and the memory state
layout.

The graph (opset 17, float32 weights and tensors)::

    input  image   (N, 3, H, W)   the normalised frame(s) (SegmentationEngine.preprocess)
    output logits  (N, C, H, W)   class scores; argmax over C gives the model's output channel

Temporal (memory) models add their memory as explicit state, so that the caller keeps one per
camera and nothing hides inside the graph::

    inputs  memory_keys (N, T, tiles, S, K+1), memory_values (N, T, tiles, S, V),
            memory_valid (N, T)
    outputs next_memory_keys, next_memory_values, next_memory_valid   (same shapes)

Start a camera (and reset it) with all three inputs zero, then feed each frame's ``next_*`` outputs
back as that camera's inputs for its next frame (layout: ``models/memory.py``, "Explicit state").

Exported with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx``
package, and tracing turns the memory's Python bookkeeping into plain tensor ops.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from video_seg_ros.backends import BackendError

OPSET = 17
#: Bump when the exported graph changes: it is part of every conversion-cache key.
GRAPH_VERSION = 1

IMAGE = "image"
LOGITS = "logits"
STATE_INPUTS = ("memory_keys", "memory_values", "memory_valid")
STATE_OUTPUTS = ("next_memory_keys", "next_memory_values", "next_memory_valid")


class ExportError(BackendError):
    """The model cannot be exported to ONNX (an operator without an ONNX form, a dynamic
    shape...)."""


class SegmentationGraph(nn.Module):
    """What an exported graph computes: ``image -> logits``, plus memory in -> memory out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.temporal = bool(getattr(model, "is_temporal", False))

    def forward(self, image: torch.Tensor, *state: torch.Tensor):
        if not self.temporal:
            return self.model(image)
        return self.model.step_with_state(image, *state)


def is_temporal(model: nn.Module) -> bool:
    return bool(getattr(model, "is_temporal", False))


def input_names(model: nn.Module) -> list[str]:
    return [IMAGE, *STATE_INPUTS] if is_temporal(model) else [IMAGE]


def output_names(model: nn.Module) -> list[str]:
    return [LOGITS, *STATE_OUTPUTS] if is_temporal(model) else [LOGITS]


def feature_size(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the model's 1/8 features for a (W, H) input (the strides' rounding decides)."""
    width, height = input_size
    device = next(model.parameters()).device
    with torch.inference_mode():
        features, _ = model.encode(torch.zeros(1, 3, height, width, device=device))
    return tuple(features.shape[-2:])


def empty_state(
    model: nn.Module, input_size: tuple[int, int], batch: int = 1
) -> tuple[torch.Tensor, ...]:
    """Zero memory inputs (an empty memory) for a temporal model at input ``size`` (W, H)."""
    device = next(model.parameters()).device
    return model.empty_explicit_state(feature_size(model, input_size), batch, device=device)


def example_inputs(
    model: nn.Module, input_size: tuple[int, int], batch: int = 1
) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: a random image (and an empty memory for temporal models)."""
    width, height = input_size
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, height, width, generator=generator).to(device)
    if not is_temporal(model):
        return (image,)
    return (image, *empty_state(model, input_size, batch))


def export_onnx(
    model: nn.Module,
    input_size: tuple[int, int],
    path: str | os.PathLike,
    batch: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
) -> Path:
    """Write ``model`` as an ONNX graph for ``batch`` inputs of ``input_size`` (W, H) to ``path``.

    ``dynamic_batch`` leaves N free; ``dynamic_size`` also H and W. Both are for per-frame models
    only: the memory's tiling needs static shapes in ONNX, and its layout depends on the input
    size.
    Raises :class:`ExportError` with the reason.
    """
    if (dynamic_size or dynamic_batch) and is_temporal(model):
        raise ExportError(
            "a memory model exports with a fixed batch size and input size (the memory's "
            "tiling needs static shapes in ONNX); export once per size, and run one "
            "frame per camera at a time."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = SegmentationGraph(model).eval()
    inputs, outputs = input_names(model), output_names(model)
    dynamic_axes = {}
    for name in inputs + outputs:
        axes = {0: "batch"} if dynamic_batch else {}
        if dynamic_size and name in (IMAGE, LOGITS):
            axes.update({2: "height", 3: "width"})
        if axes:
            dynamic_axes[name] = axes
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated, and the tracer about every
            # Python-level shape check; neither is actionable here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example_inputs(model, input_size, batch),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic_axes or None,
                do_constant_folding=True,
            )
    except (
        Exception
    ) as error:  # the exporter raises many types (UnsupportedOperatorError, RuntimeError...)
        raise ExportError(
            f"{type(model).__name__} could not be exported to ONNX: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    finally:
        model.train(was_training)
    return path


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else repr(error)
