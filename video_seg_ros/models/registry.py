"""The architecture registry: name -> builder. A leaf module, so that the model modules can
register themselves without importing the package that imports them (:mod:`video_seg_ros.models`
builds models by name and imports the model modules on first use)."""

from __future__ import annotations

from typing import Callable

from torch import nn

#: Architecture name (what checkpoints store) -> builder function.
BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator that makes a builder reachable by architecture name (checkpoints store it)."""

    def wrap(builder):
        BUILDERS[name] = builder
        return builder

    return wrap
