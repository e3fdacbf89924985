"""Graph checks: an exported or imported ONNX graph run in OpenVINO (fp32) to show that it works.

- :func:`check_onnx_against_torch` (``video-seg-export``): the exported graph's logits next to the
  torch model's on the same normalised frames (:class:`GraphCheck` sums up the comparison).
- :func:`run_with_openvino` (``video-seg-import --onnx``): an adapted user graph converts,
  compiles and runs.

A module of their own because they run a graph the way a backend does (OpenVINO), while the
export and graph-editing modules below them stay free of any backend. No ROS here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from video_seg_ros.backends.onnx_export import (
    IMAGE,
    LOGITS,
    STATE_INPUTS,
    STATE_OUTPUTS,
    empty_state,
    is_temporal,
    output_names,
)
from video_seg_ros.backends.onnx_graph import GraphError, first_line
from video_seg_ros.backends.openvino_backend import import_openvino


class GraphCheck:
    """How an exported graph's logits compare with the torch model's on the same inputs."""

    def __init__(self):
        self.max_abs_diff = 0.0
        self.agreeing = 0
        self.pixels = 0
        self.lines: list[str] = []

    @property
    def label_agreement(self) -> float:
        return self.agreeing / max(self.pixels, 1)

    def add(self, what: str, reference: torch.Tensor, exported: torch.Tensor) -> None:
        diff = float((reference - exported).abs().max())
        agree = int((reference.argmax(1) == exported.argmax(1)).sum())
        pixels = reference.shape[0] * reference.shape[-2] * reference.shape[-1]
        self.max_abs_diff = max(self.max_abs_diff, diff)
        self.agreeing += agree
        self.pixels += pixels
        self.lines.append(
            f"{what}: max |logit difference| {diff:.2e}, labels agree on {agree / pixels:.4%}"
        )


def check_onnx_against_torch(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    images: list[torch.Tensor],
    reset_before: int | None = None,
) -> GraphCheck:
    """Run the ONNX graph (with OpenVINO, fp32) and ``model`` on normalised ``images`` and compare.

    ``images``: (N, 3, H, W) tensors. A per-frame model sees each one alone; a temporal model sees
    them as one camera's consecutive frames (the graph's memory fed back), with the memory reset
    before image ``reset_before`` (``model.step``/``reset_state`` on the torch side).
    """
    ov = import_openvino()
    core = ov.Core()
    ov_model = core.read_model(str(onnx_path))
    check = GraphCheck()
    compiled = {}

    def run(inputs: dict[str, torch.Tensor]):
        shapes = tuple((name, tuple(t.shape)) for name, t in inputs.items())
        if shapes not in compiled:
            reshaped = ov_model.clone()
            reshaped.reshape({name: list(shape) for name, shape in shapes})
            compiled[shapes] = core.compile_model(
                reshaped, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
            )
        outputs = compiled[shapes]({name: t.numpy() for name, t in inputs.items()})
        return {name: torch.from_numpy(outputs[name]) for name in output_names(model)}

    model = model.eval()
    with torch.inference_mode():
        if not is_temporal(model):
            for i, image in enumerate(images):
                check.add(
                    f"input {i} {tuple(image.shape)}", model(image), run({IMAGE: image})[LOGITS]
                )
            return check
        model.reset_state()
        size = (images[0].shape[-1], images[0].shape[-2])
        state = empty_state(model, size, images[0].shape[0])
        for i, image in enumerate(images):
            if i == reset_before:
                model.reset_state()
                state = empty_state(model, size, image.shape[0])
            reference = model.step(image)
            outputs = run({IMAGE: image, **dict(zip(STATE_INPUTS, state))})
            state = tuple(outputs[name] for name in STATE_OUTPUTS)
            check.add(
                f"frame {i}{' (after a reset)' if i == reset_before else ''}",
                reference,
                outputs[LOGITS],
            )
        model.reset_state()
    return check


def run_with_openvino(data: bytes, input_size: tuple[int, int], batch: int = 1) -> np.ndarray:
    """``logits`` of an adapted graph for a random normalised batch, with OpenVINO fp32 (the check
    at import: the graph converts, compiles and runs)."""
    ov = import_openvino()
    width, height = input_size
    with tempfile.TemporaryDirectory(prefix="video_seg_graph_") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        try:
            core = ov.Core()
            converted = ov.convert_model(str(path))
            if converted.input(IMAGE).get_partial_shape().is_dynamic:
                converted.reshape({IMAGE: [batch, 3, height, width]})
            compiled = core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            image = torch.randn(
                batch, 3, height, width, generator=torch.Generator().manual_seed(0)
            ).numpy()
            return np.asarray(compiled({IMAGE: image})[LOGITS])
        except Exception as error:  # OpenVINO raises its own types
            raise GraphError(
                f"OpenVINO could not run the graph at {width}x{height}: {type(error).__name__}: "
                f"{first_line(error)}"
            ) from error
