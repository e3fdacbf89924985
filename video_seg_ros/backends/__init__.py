"""Inference backends behind :class:`~video_seg_ros.engine.SegmentationEngine`. No ROS here.

- ``torch`` (:mod:`.torch_backend`): the PyTorch module itself, on the CPU or CUDA; the reference.
- ``openvino`` (:mod:`.openvino_backend`): the model exported to ONNX
  (:mod:`.onnx_export`), converted by OpenVINO and compiled for the CPU; the conversion is cached
  on disk (:func:`default_cache_dir`).
- ``tensorrt`` (:mod:`.tensorrt_backend`): the same ONNX graph built into a TensorRT engine on a
  CUDA GPU (needs the ``tensorrt`` wheel; only used when asked for).

:mod:`.selection` builds a model's runner for a backend and precision, makes the ``auto`` choice
(with its fallback reason) and the precision gate's fp32 reference.

Around them: :mod:`.onnx_graph` reads and adapts users' ONNX graphs, and :mod:`.graph_check` runs
an exported or imported graph in OpenVINO to show that it works (``video-seg-export``,
``video-seg-import --onnx``).

Every backend takes the normalised (N, 3, h, w) float tensor the engine's preprocessing makes and
returns logits (N, classes, h, w); preprocessing and postprocessing stay in the engine, in one
place. Temporal (memory) models keep one memory per stream: the torch backend as the module's own
:class:`~video_seg_ros.models.memory.MemoryState`, the exported graphs as explicit state tensors
(:meth:`~video_seg_ros.models.memory.MemoryAugmentedSegmenter.step_with_state`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

#: What ``SegmentationEngine(backend=...)`` accepts. ``auto``: OpenVINO on the CPU when it is
#: installed and converts the model, else torch; torch on CUDA (TensorRT only when asked for).
BACKENDS = ("auto", "torch", "openvino", "tensorrt")

#: What ``auto`` picks on a CPU when it can. The default is OpenVINO until measurements on the
#: target CPU say otherwise (bench/engine.py compares both); change it here only.
AUTO_CPU_BACKEND = "openvino"


class BackendError(RuntimeError):
    """A backend cannot run this model here; the message says why and what to do instead."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/video_seg_ros``, else ``~/.cache/video_seg_ros``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "video_seg_ros"


def model_fingerprint(model: torch.nn.Module, *extra: object) -> str:
    """sha256 over a module's class, state_dict (names, dtypes, shapes, bytes) and ``extra``.

    Keys conversion caches: the same weights and settings find the same converted model,
    whatever file (or no file) they came from.
    """
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()
