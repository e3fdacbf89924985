"""Compact segmentation models, torchvision style: plain ``nn.Module``s and builder functions.

Every segmenter here follows one encoder/decoder contract, so that the local-memory-attention
wrapper (:mod:`video_seg_ros.models.memory`) can sit between the two halves of any of them:

- ``model.encode(x) -> (features, skips)``: ``x`` is (N, 3, H, W); ``features`` is
  (N, model.feature_channels, H/8, W/8) (rounded as the network's strides round); ``skips`` is
  whatever else the decoder needs (possibly ``None``), opaque to callers.
- ``model.decode(features, skips, out_size) -> logits``: (N, num_classes, *out_size).
- ``model(x) == model.decode(*model.encode(x), x.shape[-2:])``.
- ``model.num_classes`` and ``model.feature_channels`` are plain ints.

Models with temporal state (the memory wrapper) also set ``is_temporal = True`` and provide
``step(x) -> logits`` (one frame, updates the state) and ``reset_state()``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# register is re-exported: code outside the package registers its own builders with it.
from video_seg_ros.models.registry import BUILDERS, register  # noqa: F401


def available_architectures() -> list[str]:
    _import_model_modules()
    return sorted(BUILDERS)


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build an architecture by its registered name with its keyword arguments."""
    if arch not in BUILDERS and arch in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{_BUILTIN_MODULES[arch]}")
    if arch not in BUILDERS:
        _import_model_modules()
    if arch not in BUILDERS:
        raise ValueError(
            f"unknown architecture {arch!r}; available: {', '.join(sorted(BUILDERS))}"
        )
    return BUILDERS[arch](**kwargs)


def build_from_checkpoint(checkpoint, strict: bool = True) -> nn.Module:
    """Instantiate the checkpoint's architecture (memory wrapper included) and load its weights."""
    model = build_model(checkpoint.arch, **checkpoint.arch_kwargs)
    if checkpoint.memory:
        from video_seg_ros.models.memory import wrap_with_memory

        model = wrap_with_memory(model, checkpoint.memory)
        # A memory checkpoint stores the wrapper's keys; load_state_dict on it is strict.
    model.load_state_dict(checkpoint.state_dict, strict=strict)
    return model


#: The built-in architectures and the module that registers each: building one imports its own
#: module only (pspnet's pulls in torchvision: about 2 s of a node's start).
_BUILTIN_MODULES = {
    "cgnet": "cgnet",
    "dicenet": "dicenet",
    "espnet": "espnet",
    "onnx": "onnx_graph",
    "pspnet18": "pspnet",
}


def _import_model_modules() -> None:
    # Importing registers the builders; done lazily so `import video_seg_ros` stays light
    # (pspnet pulls in torchvision).
    from video_seg_ros.models import cgnet, dicenet, espnet, pspnet  # noqa: F401

    # Bring your own model: an imported ONNX graph, a torchvision network by name.
    from video_seg_ros.models import onnx_graph, torchvision_models  # noqa: F401
