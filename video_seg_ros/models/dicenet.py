"""DiCENet (Mehta et al., 2019): dimension-wise convolutions for efficient networks, segmentation.

The ImageNet DiCENet encoder (its first four levels) with the EdgeNets segmentation decoder
(efficient pyramid pooling at 1/16, 1/8, 1/4 and 1/2, each merged with a projected encoder map).
Submodule names follow sacmehta/EdgeNets (``base_net.level3.0.right_layer.1.conv_height``,
``eff_pool_16x16``, ``proj_enc_32x32``, ``bu_br_64x64`` ...) so that its published state_dicts load
with identical keys; the ``16x16`` ... ``128x128`` suffixes are the original's names for a 256x256
input, i.e. 1/16, 1/8, 1/4 and 1/2 of the input size.

A DiCE unit convolves a (C, H, W) volume along each of its three dimensions: depth-wise over the
channels, and with the height (or width) axis taken as the channel axis. Those two convolutions
have one filter per row (column), so the network is built for a fixed base size, and every input
is resized along that axis to it and back. The published weights were built with the ImageNet
base size 224x224 (``base_size=224``: 28 rows/columns at level 3, 14 at level 4) whatever the
input size, 1024x512 included.

Encoder/decoder split (contract of :mod:`video_seg_ros.models`):

- ``encode(x)``: (N, 3, H, W) -> features (N, 64, H/8, W/8) and skips ``(level1 (N, 24, H/2, W/2),
  level2 (N, 24, H/4, W/4))``. The features are the decoder's first merge: the pyramid-pooled 1/16
  output of the whole encoder, upsampled and added to the projected 1/8 encoder map, after its
  BN+PReLU. They are the first 1/8 map that holds the deepest encoder level, which is what the
  memory wrapper attends over and what pair-wise distillation compares.
- ``decode(features, skips, out_size)``: the remaining pyramid stages -> logits
  (N, num_classes, *out_size).

Input preprocessing of the published weights (EdgeNets test_segmentation.py): RGB, resized to
1024x512, ``to_tensor`` then ImageNet mean/std.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.models.registry import register

#: Channels per level for each width scale s (EdgeNets model/classification/dicenet_config.py):
#: level1, level2 (max pooling, same width), level3, level4. Level 5 and the classifier are
#: ImageNet-only and dropped by the segmentation network.
LEVEL_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.2: (16, 16, 32, 64),
    0.5: (24, 24, 48, 96),
    0.75: (24, 24, 86, 172),
    1.0: (24, 24, 116, 232),
    1.25: (24, 24, 144, 288),
    1.5: (24, 24, 176, 352),
    1.75: (24, 24, 210, 420),
    2.0: (24, 24, 244, 488),
    2.4: (24, 24, 278, 556),
}
_BLOCKS_LEVEL3 = 3  # shuffle-DICE blocks after the strided one
_BLOCKS_LEVEL4 = 7
_DECODER_BASE = 16  # EdgeNets' decoder width for Cityscapes and PASCAL
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)


class CBR(nn.Module):
    """``cbr`` = conv (no bias, 'same' padding) -> BatchNorm -> PReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class BR(nn.Module):
    """``br`` = BatchNorm -> PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups: (N, g*k, H, W) -> channel order 0, k, 2k, ...,
    1, k+1, ..."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _fit_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Resize ``x`` along spatial ``axis`` (2 = height, 3 = width) to ``size``: bilinear
    (align_corners) when growing, adaptive average pooling when shrinking, as the original does."""
    if x.shape[axis] == size:
        return x
    target = list(x.shape[-2:])
    target[axis - 2] = size
    if x.shape[axis] < size:
        return F.interpolate(x, size=target, mode="bilinear", align_corners=True)
    return F.adaptive_avg_pool2d(x, target)


class DICE(nn.Module):
    """Dimension-wise convolution: (N, C_in, H, W) -> (N, C_out, H, W).

    Three 3x3 convolutions, one per dimension of the volume (channels: depth-wise; height and
    width: that axis, resized to the base size ``height``/``width``, becomes the grouped-conv
    channel axis), concatenated, normalised, shuffled, fused per channel (``weight_avg_layer``),
    then projected to C_out with a grouped 3x3 and reweighted by a squeeze-excitation style gate.
    """

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.conv_channel = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.conv_width = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.conv_height = nn.Conv2d(height, height, 3, padding=1, groups=height, bias=False)
        self.br_act = BR(3 * in_channels)
        self.weight_avg_layer = CBR(3 * in_channels, in_channels, 1, groups=in_channels)
        self.proj_layer = CBR(
            in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels)
        )
        self.linear_comb_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, in_channels // 4, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels // 4, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        along_channels = self.conv_channel(x)
        # Height as channels: (N, C, h, W) -> (N, h, C, W), convolve, back, resize to H.
        rows = _fit_axis(x, 2, self.height).transpose(1, 2)
        along_height = _fit_axis(self.conv_height(rows).transpose(1, 2), 2, height)
        # Width as channels: (N, C, H, w) -> (N, w, H, C).
        columns = _fit_axis(x, 3, self.width).transpose(1, 3)
        along_width = _fit_axis(self.conv_width(columns).transpose(1, 3), 3, width)
        volume = self.br_act(torch.cat([along_channels, along_height, along_width], 1))
        fused = self.weight_avg_layer(channel_shuffle(volume, 3))
        return self.proj_layer(fused) * self.linear_comb_layer(fused)


class StridedDICE(nn.Module):
    """Downsampling unit: (N, C, H, W) -> (N, 2C, H/2, W/2).

    A strided depth-wise + point-wise branch and an average-pooled DICE branch, concatenated and
    channel-shuffled.
    """

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.left_layer = nn.Sequential(
            CBR(channels, channels, 3, stride=2, groups=channels), CBR(channels, channels, 1)
        )
        self.right_layer = nn.Sequential(
            nn.AvgPool2d(3, stride=2, padding=1),
            DICE(channels, channels, height, width),
            CBR(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left_layer(x), self.right_layer(x)], 1), 2)


class ShuffleDICEBlock(nn.Module):
    """ShuffleNetv2-style unit with a DICE: (N, C_in, H, W) -> (N, C_out, H, W).

    The first half of the channels passes through; the rest goes 1x1 CBR -> DICE; then the two are
    concatenated and channel-shuffled.
    """

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int):
        super().__init__()
        self.kept = round(in_channels / 2)
        self.layer_right = nn.Sequential(
            CBR(in_channels - self.kept, out_channels - self.kept, 1),
            DICE(out_channels - self.kept, out_channels - self.kept, height, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.layer_right(x[:, self.kept :])
        return channel_shuffle(torch.cat([x[:, : self.kept], right], 1), 2)


class DiCENetEncoder(nn.Module):
    """Levels 1-4 of the ImageNet DiCENet; original name ``base_net`` (CNNModel without level5).

    ``forward``: (N, 3, H, W) -> ``(level1 (N, c1, H/2, W/2), level2 (N, c1, H/4, W/4),
    level3 (N, c3, H/8, W/8), level4 (N, c4, H/16, W/16))`` with ``(c1, _, c3, c4)`` =
    ``LEVEL_CHANNELS[width_scale]``.
    """

    def __init__(self, width_scale: float, base_size: int = 224):
        super().__init__()
        c1, c2, c3, c4 = LEVEL_CHANNELS[width_scale]
        size3, size4 = base_size // 8, base_size // 16  # rows/columns of the DICE layers
        self.level1 = CBR(3, c1, 3, stride=2)
        self.level2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.level3 = nn.Sequential(
            StridedDICE(c2, size3, size3),
            *[
                ShuffleDICEBlock(2 * c2 if i == 0 else c3, c3, size3, size3)
                for i in range(_BLOCKS_LEVEL3)
            ],
        )
        self.level4 = nn.Sequential(
            StridedDICE(c3, size4, size4),
            *[
                ShuffleDICEBlock(2 * c3 if i == 0 else c4, c4, size4, size4)
                for i in range(_BLOCKS_LEVEL4)
            ],
        )

    def forward(self, x: torch.Tensor):
        level1 = self.level1(x)
        level2 = self.level2(level1)
        level3 = self.level3(level2)
        return level1, level2, level3, self.level4(level3)


class EfficientPyramidPooling(nn.Module):
    """(N, C_in, h, w) -> (N, C_out, h, w): a 1x1 projection, five depth-wise 3x3s applied at
    2, 1.5, 1, 0.5 and 0.1 times the map size (at least 5x5) and resized back, merged by a
    grouped 3x3 and a 1x1 (with BN+PReLU after it unless ``last_layer_br=False``: the classifier).
    Original name EfficientPyrPool."""

    def __init__(
        self, in_channels: int, proj_channels: int, out_channels: int, last_layer_br: bool = True
    ):
        super().__init__()
        n = len(_PYRAMID_SCALES)
        self.projection_layer = CBR(in_channels, proj_channels, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj_channels, proj_channels, 3, padding=1, groups=proj_channels, bias=False)
            for _ in range(n)
        )
        self.merge_layer = nn.Sequential(
            BR(proj_channels * n),
            _Shuffle(n),
            CBR(proj_channels * n, proj_channels, 3, groups=proj_channels),
            nn.Conv2d(proj_channels, out_channels, 1, bias=not last_layer_br),
        )
        self.br = BR(out_channels) if last_layer_br else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        size = tuple(x.shape[-2:])
        branches = []
        for scale, stage in zip(_PYRAMID_SCALES, self.stages):
            scaled = tuple(max(5, math.ceil(d * scale)) for d in size)
            if scale > 1.0:
                y = F.adaptive_avg_pool2d(
                    stage(F.interpolate(x, scaled, mode="bilinear", align_corners=True)), size
                )
            elif scale < 1.0:
                y = F.interpolate(
                    stage(F.adaptive_avg_pool2d(x, scaled)),
                    size,
                    mode="bilinear",
                    align_corners=True,
                )
            else:
                y = stage(x)
            branches.append(y)
        out = self.merge_layer(torch.cat(branches, 1))
        return out if self.br is None else self.br(out)


class _Shuffle(nn.Module):
    """:func:`channel_shuffle` as a module (a parameter-free slot in ``merge_layer``)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class GatedProjection(nn.Module):
    """(N, C_in, h, w) -> (N, C_out, h, w): grouped 3x3 CBR times a global sigmoid gate per output
    channel. Original name EfficientPWConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = CBR(
            in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _bn_prelu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


def _upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # The original doubles the size (bilinear, align_corners); sizing by the skip is the same for
    # inputs divisible by 32 and keeps other sizes working.
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=True)


class DiCENet(nn.Module):
    """DiCENet segmentation network (EdgeNets DiCENetSegmentation).

    Args:
        num_classes: output channels (20 for the published Cityscapes weights: 19 trainIds plus a
            background channel).
        width_scale: the network width s, a key of :data:`LEVEL_CHANNELS` (Cityscapes weights
            are published for 0.5 to 1.75).
        base_size: the square input size the DICE layers are built for; 224 (ImageNet) for every
            published weight file, whatever size the network then runs at.

    Shapes: (N, 3, H, W) -> (N, num_classes, H, W).
    """

    # Not measured yet for this architecture; oneDNN wins for the other depth-wise-heavy models.
    prefers_mkldnn = True

    def __init__(self, num_classes: int = 20, width_scale: float = 1.0, base_size: int = 224):
        super().__init__()
        if width_scale not in LEVEL_CHANNELS:
            raise ValueError(
                f"DiCENet width_scale must be one of {sorted(LEVEL_CHANNELS)}, got {width_scale!r}"
            )
        if base_size % 32 or base_size <= 0:
            raise ValueError(
                f"DiCENet base_size must be a positive multiple of 32, got {base_size}"
            )
        if num_classes < 2:
            raise ValueError("DiCENet needs num_classes >= 2")
        c1, c2, c3, c4 = LEVEL_CHANNELS[width_scale]
        self.num_classes = num_classes
        planes = (4 * _DECODER_BASE, 3 * _DECODER_BASE, 2 * _DECODER_BASE)
        self.feature_channels = planes[0]
        pyramid = min(num_classes // 2, _DECODER_BASE)
        self.base_net = DiCENetEncoder(width_scale, base_size)
        self.eff_pool_16x16 = EfficientPyramidPooling(c4, pyramid, planes[0])
        self.eff_pool_32x32 = EfficientPyramidPooling(planes[0], pyramid, planes[1])
        self.eff_pool_64x64 = EfficientPyramidPooling(planes[1], pyramid, planes[2])
        self.eff_pool_128x128 = EfficientPyramidPooling(
            planes[2], pyramid, num_classes, last_layer_br=False
        )
        self.proj_enc_32x32 = GatedProjection(c3, planes[0])
        self.proj_enc_64x64 = GatedProjection(c2, planes[1])
        self.proj_enc_128x128 = GatedProjection(c1, planes[2])
        self.bu_br_32x32 = _bn_prelu(planes[0])
        self.bu_br_64x64 = _bn_prelu(planes[1])
        self.bu_br_128x128 = _bn_prelu(planes[2])

    def encode(self, x: torch.Tensor):
        """(N, 3, H, W) -> (features (N, 64, H/8, W/8), skips (level-1 map, level-2 map))."""
        level1, level2, level3, level4 = self.base_net(x)
        merged = self.proj_enc_32x32(level3) + _upsample_to(self.eff_pool_16x16(level4), level3)
        return self.bu_br_32x32(merged), (level1, level2)

    def decode(self, features: torch.Tensor, skips, out_size) -> torch.Tensor:
        """features (N, 64, h, w) + skips -> logits (N, num_classes, *out_size)."""
        level1, level2 = skips
        out = self.eff_pool_32x32(features)
        out = self.bu_br_64x64(self.proj_enc_64x64(level2) + _upsample_to(out, level2))
        out = self.eff_pool_64x64(out)
        out = self.bu_br_128x128(self.proj_enc_128x128(level1) + _upsample_to(out, level1))
        out = self.eff_pool_128x128(out)
        return F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, skips = self.encode(x)
        return self.decode(features, skips, x.shape[-2:])


@register("dicenet")
def dicenet(num_classes: int = 20, width_scale: float = 1.0, base_size: int = 224) -> DiCENet:
    """DiCENet-s segmentation network, randomly initialised; see :class:`DiCENet`."""
    return DiCENet(num_classes=num_classes, width_scale=width_scale, base_size=base_size)


def dicenet_arguments(
    state_dict: dict[str, torch.Tensor], width_scale: float | None = None
) -> dict:
    """Builder arguments (classes, width scale, base size) read from an EdgeNets DiCENet
    segmentation state_dict; ``width_scale``, when given, is checked against the weights.
    Raises ValueError saying what does not fit."""
    try:
        level3 = int(state_dict["proj_enc_32x32.wt_layer.1.weight"].shape[1])
        rows = int(state_dict["base_net.level3.0.right_layer.1.conv_height.weight"].shape[0])
        num_classes = int(state_dict["eff_pool_128x128.merge_layer.3.weight"].shape[0])
    except KeyError as error:
        raise ValueError(
            f"these weights are not an EdgeNets DiCENet segmentation network (no {error}); "
            "ImageNet classification weights have no decoder and are not supported"
        ) from None
    found = [s for s, channels in LEVEL_CHANNELS.items() if channels[2] == level3]
    if not found:
        raise ValueError(
            f"the weights' level-3 width {level3} matches no DiCENet width scale "
            f"({', '.join(map(str, sorted(LEVEL_CHANNELS)))})"
        )
    if width_scale is not None and float(width_scale) != found[0]:
        raise ValueError(
            f"--width-scale {width_scale} given, but the weights have width scale "
            f"{found[0]} (level-3 width {level3}); drop --width-scale or fix it."
        )
    arguments = {"num_classes": num_classes, "width_scale": found[0]}
    if rows * 8 != 224:  # every published file uses the ImageNet base size; keeps names short
        arguments["base_size"] = rows * 8
    return arguments
