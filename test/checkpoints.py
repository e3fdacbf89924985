"""The one way tests (and benchmarks) build a tiny random-init ESPNet checkpoint.

Random weights give arbitrary but deterministic outputs: enough to test plumbing, shapes and
agreement between code paths without the embedded model. ``test/conftest.py`` exposes it as the
``tiny_espnet_checkpoint`` fixture; scripts import :func:`make_tiny_espnet_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from video_seg_ros.checkpoint import Checkpoint, Preprocessing
from video_seg_ros.models import build_model, register

#: 19 Cityscapes classes + the "background" channel published as 255, like ESPNet's Cityscapes
#: weights.
NUM_OUTPUTS = 20


def tiny_espnet(
    num_classes: int = NUM_OUTPUTS,
    size: tuple[int, int] = (64, 32),
    seed: int = 0,
    p: int = 2,
    q: int = 3,
    channel_order: str = "rgb",
    mean=(128.0, 128.0, 128.0),
    std=(64.0, 64.0, 64.0),
    scale: float = 1.0,
    output_to_class: list[int] | None = None,
) -> Checkpoint:
    """A random-init ESPNet ``Checkpoint`` (Cityscapes label set) with model input ``size`` (W,
    H)."""
    torch.manual_seed(seed)
    model = build_model("espnet", p=p, q=q, num_classes=num_classes).eval()
    checkpoint = Checkpoint.for_label_set(
        "espnet",
        {"p": p, "q": q, "num_classes": num_classes},
        model.state_dict(),
        "cityscapes",
        Preprocessing(
            input_height=size[1],
            input_width=size[0],
            channel_order=channel_order,
            mean=list(mean),
            std=list(std),
            scale=scale,
        ),
        source={"kind": "random-init test checkpoint"},
    )
    if output_to_class is not None:
        checkpoint.output_to_class = list(output_to_class)
    return checkpoint


def make_tiny_espnet_checkpoint(path: str | Path, **settings) -> Path:
    """:func:`tiny_espnet` saved at ``path`` (settings as there); returns the path written."""
    return tiny_espnet(**settings).save(path)


def near_tie_espnet(size: tuple[int, int] = (64, 32), gap: float = 1e-3) -> Checkpoint:
    """:func:`tiny_espnet` whose classes score almost alike everywhere (the classifier's outputs
    differ by a relative ``gap``): fp32 keeps one argmax, bf16's 8-bit mantissa (a relative
    error near 4e-3) flips many, so this model fails the precision gate by construction."""
    checkpoint = tiny_espnet(size=size)
    weight = checkpoint.state_dict["classifier.weight"]  # (in, out, 2, 2): ConvTranspose2d
    generator = torch.Generator().manual_seed(3)
    spread = 1.0 + gap * torch.randn((1, weight.shape[1], 1, 1), generator=generator)
    checkpoint.state_dict = {**checkpoint.state_dict, "classifier.weight": weight[:, :1] * spread}
    return checkpoint


class ScaledErfcSegmenter(nn.Module):
    """A 1x1 conv followed by erfcx, an operator ONNX has no form for (no backend can convert it)
    and that has no bf16 kernel on the CPU."""

    def __init__(self, num_classes: int = NUM_OUTPUTS):
        super().__init__()
        self.classifier = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return torch.special.erfcx(self.classifier(x))


@register("test-erfcx")
def _erfcx_segmenter(num_classes: int = NUM_OUTPUTS) -> nn.Module:
    return ScaledErfcSegmenter(num_classes)


def unconvertible_checkpoint() -> Checkpoint:
    """A checkpoint of :class:`ScaledErfcSegmenter` (model input 64x32)."""
    model = ScaledErfcSegmenter()
    return Checkpoint.for_label_set(
        "test-erfcx",
        {"num_classes": NUM_OUTPUTS},
        model.state_dict(),
        "cityscapes",
        Preprocessing(input_height=32, input_width=64),
    )


def random_memory_checkpoint(
    size: tuple[int, int] = (64, 32), seed: int = 1, scale: float = 1.0
) -> Checkpoint:
    """The tiny ESPNet with an LMANet memory (T=2, 5x5 window) whose memory layers are random
    (``scale`` x N(0, 1)), so a stream's earlier frames visibly change its labels (a fresh memory
    would leave them untouched)."""
    from video_seg_ros.checkpoint import add_memory_to_checkpoint, randomise_memory_weights

    memory = {"memory_length": 2, "window": 5, "dropout": 0.0}
    return randomise_memory_weights(
        add_memory_to_checkpoint(tiny_espnet(size=size), memory), seed=seed, scale=scale
    )
