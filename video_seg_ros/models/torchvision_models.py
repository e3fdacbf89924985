"""torchvision's segmentation networks by name, as plain modules that return logits.

``build_model("torchvision:lraspp_mobilenet_v3_large", num_classes=19)`` builds torchvision's
network with ``weights=None, weights_backbone=None`` (nothing is downloaded; weights come from a
checkpoint or from ``video-seg-import --weights``) and wraps it so that ``forward`` returns the
logits (N, num_classes, H, W) instead of torchvision's ``{"out": ...}`` dict. The wrapper keeps
torchvision's submodule names (``backbone.*``, ``classifier.*``), so a torchvision state_dict
loads with identical keys (``aux_classifier.*``, used only for training with torchvision's
auxiliary loss, is not built).

The encoder/decoder contract of :mod:`video_seg_ros.models` holds: ``encode`` runs the backbone and
returns its deepest map (1/16 for the MobileNetV3 models, 1/8 for the dilated ResNet-50 ones) with
the backbone's other outputs as skips; ``decode`` runs the head and resizes to ``out_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.models.registry import register

PREFIX = "torchvision:"

#: torchvision builder name -> (the backbone output the head reads, does the head read a dict).
TORCHVISION_SEGMENTERS = {
    "lraspp_mobilenet_v3_large": ("high", True),
    "deeplabv3_mobilenet_v3_large": ("out", False),
    "fcn_resnet50": ("out", False),
    "deeplabv3_resnet50": ("out", False),
}


class TorchvisionSegmenter(nn.Module):
    """A torchvision segmentation network (``backbone`` + ``classifier``) returning logits.

    Args:
        name: torchvision builder name, one of :data:`TORCHVISION_SEGMENTERS`.
        num_classes: output channels.
    """

    prefers_mkldnn = True

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        if name not in TORCHVISION_SEGMENTERS:
            raise ValueError(
                f"unknown torchvision segmenter {name!r}; available: "
                f"{', '.join(PREFIX + n for n in TORCHVISION_SEGMENTERS)}"
            )
        from torchvision.models import segmentation

        builder = getattr(segmentation, name)
        network = builder(
            weights=None, weights_backbone=None, num_classes=int(num_classes), aux_loss=False
        )
        self.name = name
        self.backbone = network.backbone
        self.classifier = network.classifier
        self.num_classes = int(num_classes)
        self._deepest, self._head_takes_dict = TORCHVISION_SEGMENTERS[name]
        self.feature_channels = _channels_of(self)

    def encode(self, x: torch.Tensor):
        features = self.backbone(x)
        return features[self._deepest], features

    def decode(self, features: torch.Tensor, skips, out_size) -> torch.Tensor:
        if self._head_takes_dict:
            logits = self.classifier({**skips, self._deepest: features})
        else:
            logits = self.classifier(features)
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, num_classes, H, W) logits."""
        return self.decode(*self.encode(x), x.shape[-2:])


def _channels_of(model: TorchvisionSegmenter) -> int:
    # The last layer of the backbone that has out_channels: what encode() returns.
    channels = [m.out_channels for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    return int(channels[-1])


def _register_all() -> None:
    for name in TORCHVISION_SEGMENTERS:

        def builder(num_classes: int = 21, _name: str = name) -> TorchvisionSegmenter:
            return TorchvisionSegmenter(_name, num_classes)

        builder.__doc__ = (
            f"torchvision's {name} (weights=None, weights_backbone=None) returning logits."
        )
        register(PREFIX + name)(builder)


_register_all()
