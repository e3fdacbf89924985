"""PSPNet with a dilated ResNet-18 backbone (Zhao et al., CVPR 2017): ETC's "PSP18" segmenter.

- Backbone: torchvision ``resnet18`` (``weights=None``: nothing is downloaded), with the strides
  of ``layer3``/``layer4`` replaced by dilation so that the backbone output stays at 1/8 of the
  input (``output_stride=8``; 16 dilates only ``layer4``; 32 is the plain ResNet).
- Head: pyramid pooling over bins (1, 2, 3, 6), 3x3 bottleneck, dropout, 1x1 classifier, bilinear
  upsampling to the requested size.

Encoder/decoder split (contract of :mod:`video_seg_ros.models`): ``encode`` returns the backbone
output (N, 512, H/8, W/8) and no skips; the pyramid pooling belongs to ``decode``. A memory module
wrapping the model therefore attends over plain local backbone features, and the global context of
the pyramid is computed from the memory-refined features (the order LMANet uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from video_seg_ros.models.registry import register


class PyramidPooling(nn.Module):
    """(N, C, h, w) -> (N, C + len(bins) * C/len(bins), h, w): the input and its pooled
    summaries."""

    def __init__(self, in_channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(size),
                    nn.Conv2d(in_channels, reduced, 1, bias=False),
                    nn.BatchNorm2d(reduced),
                    nn.ReLU(inplace=True),
                )
                for size in bins
            ]
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], 1)


def _dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a strided ResNet stage into a dilated one with the same weights' shapes.

    torchvision's BasicBlock refuses dilation > 1 in its constructor, so the convolutions are
    changed after construction: stride 1 everywhere, 3x3 convolutions dilated by ``dilation``,
    except the stage's first one, which keeps the previous stage's rate (``dilation / 2``), as
    torchvision's ``replace_stride_with_dilation`` does for Bottleneck ResNets.
    """
    for index, block in enumerate(layer):
        for conv in (block.conv1, block.conv2):
            rate = dilation // 2 if (index == 0 and conv is block.conv1) else dilation
            conv.stride = (1, 1)
            conv.dilation = (rate, rate)
            conv.padding = (rate, rate)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class PSPNet18(nn.Module):
    """PSPNet on a dilated ResNet-18. Shapes: (N, 3, H, W) -> (N, num_classes, H, W).

    Args:
        num_classes: output channels.
        output_stride: 8 (default; backbone features at 1/8, as the memory wrapper expects),
            16 or 32.
        bottleneck_channels: width of the 3x3 conv after the pyramid pooling.
        dropout: dropout before the classifier (training only).
    """

    # Measured in bench/engine.py: oneDNN 1.6-1.9x faster on ResNet's dense 3x3 convolutions.
    prefers_mkldnn = True

    def __init__(
        self,
        num_classes: int = 19,
        output_stride: int = 8,
        bottleneck_channels: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError("output_stride must be 8, 16 or 32")
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        backbone = resnet18(weights=None)
        if output_stride <= 16:
            _dilate_layer(backbone.layer4, 2 if output_stride == 16 else 4)
        if output_stride == 8:
            _dilate_layer(backbone.layer3, 2)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        self.num_classes = num_classes
        self.feature_channels = 512
        self.output_stride = output_stride
        self.ppm = PyramidPooling(512)
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, bottleneck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(bottleneck_channels, num_classes, 1)

    def encode(self, x: torch.Tensor):
        """(N, 3, H, W) -> (backbone features (N, 512, H/os, W/os), None)."""
        x = self.stem(x)
        x = self.layer2(self.layer1(x))
        return self.layer4(self.layer3(x)), None

    def decode(self, features: torch.Tensor, skips, out_size) -> torch.Tensor:
        """features (N, 512, h, w) -> logits (N, num_classes, *out_size)."""
        logits = self.classifier(self.head(self.ppm(features)))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, skips = self.encode(x)
        return self.decode(features, skips, x.shape[-2:])


@register("pspnet18")
def pspnet18(
    num_classes: int = 19,
    output_stride: int = 8,
    bottleneck_channels: int = 256,
    dropout: float = 0.1,
) -> PSPNet18:
    """PSPNet-ResNet18 (ETC's PSP18), randomly initialised; see :class:`PSPNet18`."""
    return PSPNet18(
        num_classes=num_classes,
        output_stride=output_stride,
        bottleneck_channels=bottleneck_channels,
        dropout=dropout,
    )
