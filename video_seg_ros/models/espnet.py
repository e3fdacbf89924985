"""ESPNet (Mehta et al., ECCV 2018): efficient spatial pyramid of dilated convolutions.

The network with its light-weight RUM decoder ("ESPNet", not the encoder-only "ESPNet-C"), written
so that the published state_dicts of sacmehta/ESPNet load with identical keys: submodule names
(``level1``, ``b1``, ``level2_0`` ... ``up_l2``, ``classifier``) follow the original on purpose.

Split for the encoder/decoder contract of :mod:`video_seg_ros.models`:

- ``encode(x)``: (N, 3, H, W) -> features (N, 256, H/8, W/8) (the encoder's last concatenation,
  after its BN+PReLU; the ESPNet-C classifier is part of the decoder) and skips
  ``(level1 features (N, 16|19, H/2, W/2), level2 features (N, 131, H/4, W/4))``.
- ``decode(features, skips, out_size)``: -> logits (N, num_classes, *out_size).

Input sizes divisible by 8 reproduce the original network exactly; other sizes are handled by
resizing decoder maps to the skip sizes (the original fails on them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.models.registry import register

_BN_EPS = 1e-3  # the original's BatchNorm epsilon; the weights were trained with it


class ConvBNPReLU(nn.Module):
    """``conv`` (no bias, 'same' padding) -> ``bn`` -> ``act`` (PReLU); original name CBR."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    """``bn`` -> ``act``; original name BR."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class Conv(nn.Module):
    """A bias-free convolution wrapped in ``.conv`` (keeps the original's key names:
    C/CDilated)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialPyramid(nn.Module):
    """Reduce (``c1``), split into 5 dilated 3x3 branches (rates 1, 2, 4, 8, 16), merge.

    Branch outputs are summed hierarchically (d2, d2+d4, ...) before the concatenation, which is
    how ESPNet avoids gridding artefacts. ``out_channels`` = n1 + 4n with n = out_channels // 5.
    """

    def __init__(
        self, in_channels: int, out_channels: int, reduce_kernel: int, reduce_stride: int
    ):
        super().__init__()
        n = out_channels // 5
        n1 = out_channels - 4 * n
        self.c1 = Conv(in_channels, n, reduce_kernel, reduce_stride)
        self.d1 = Conv(n, n1, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)

    def _pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        add1 = self.d2(reduced)
        add2 = add1 + self.d4(reduced)
        add3 = add2 + self.d8(reduced)
        add4 = add3 + self.d16(reduced)
        return torch.cat([self.d1(reduced), add1, add2, add3, add4], 1)


class ESPDownsampler(_SpatialPyramid):
    """Strided ESP module: (N, C_in, H, W) -> (N, C_out, H/2, W/2); original DownSamplerB."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, reduce_kernel=3, reduce_stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self._pyramid(x)))


class ESPBlock(_SpatialPyramid):
    """ESP module, optionally residual: (N, C_in, H, W) -> (N, C_out, H, W); original
    DilatedParllelResidualBlockB."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool = True):
        super().__init__(in_channels, out_channels, reduce_kernel=1, reduce_stride=1)
        self.bn = BNPReLU(out_channels)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self._pyramid(x)
        if self.residual:
            merged = merged + x
        return self.bn(merged)


class ImagePyramid(nn.Module):
    """Halves an image ``times`` times with 3x3 average pooling (the input reinforcement of
    ESPNet)."""

    def __init__(self, times: int):
        super().__init__()
        self.pool = nn.ModuleList([nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C: image -> 1/2, 1/4 and 1/8 feature maps (and a 1/8 classifier used by the decoder).

    Returns from :meth:`forward`: ``(level1 (N,16,H/2,W/2), level1_cat (N,19,H/2,W/2),
    level2_cat (N,131,H/4,W/4), level3_cat (N,256,H/8,W/8))``.
    """

    def __init__(self, num_classes: int, p: int, q: int):
        super().__init__()
        self.level1 = ConvBNPReLU(3, 16, 3, stride=2)
        self.sample1 = ImagePyramid(1)
        self.sample2 = ImagePyramid(2)
        self.b1 = BNPReLU(16 + 3)
        self.level2_0 = ESPDownsampler(16 + 3, 64)
        self.level2 = nn.ModuleList([ESPBlock(64, 64) for _ in range(p)])
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESPDownsampler(128 + 3, 128)
        self.level3 = nn.ModuleList([ESPBlock(128, 128) for _ in range(q)])
        self.b3 = BNPReLU(256)
        self.classifier = Conv(256, num_classes, 1)

    def forward(self, x: torch.Tensor):
        level1 = self.level1(x)
        level1_cat = self.b1(torch.cat([level1, self.sample1(x)], 1))
        down2 = self.level2_0(level1_cat)
        out = down2
        for block in self.level2:
            out = block(out)
        level2_cat = self.b2(torch.cat([out, down2, self.sample2(x)], 1))
        down3 = self.level3_0(level2_cat)
        out = down3
        for block in self.level3:
            out = block(out)
        level3_cat = self.b3(torch.cat([down3, out], 1))
        return level1, level1_cat, level2_cat, level3_cat


class ESPNet(nn.Module):
    """ESPNet with the RUM decoder.

    Args:
        num_classes: output channels (20 for the published Cityscapes weights: 19 trainIds plus a
            background channel; 12 for CamVid: 11 classes plus void).
        p, q: number of ESP blocks at 1/4 and 1/8 resolution (published: p=2, q=3, 5 or 8).
        decoder_skip_channels: 16 = the decoder's last concatenation takes the level-1 conv output
            (Cityscapes weights, test/Model.py); 19 = it takes that output concatenated with the
            half-size image (CamVid weights, train/Model.py).

    Shapes: (N, 3, H, W) -> (N, num_classes, H, W).
    """

    # Measured on the quiet 2-core machine (bench/engine.py, docs/models.md): oneDNN 2.0-2.3x
    # faster
    # than the native CPU convolutions for p2q3 and p2q8 at 1024x512 and 512x256. (Under heavy
    # load from other processes oneDNN with two threads degraded badly; cpu_mkldnn=False then.)
    prefers_mkldnn = True

    def __init__(
        self, num_classes: int = 20, p: int = 2, q: int = 8, decoder_skip_channels: int = 16
    ):
        super().__init__()
        if decoder_skip_channels not in (16, 19):
            raise ValueError(
                "decoder_skip_channels must be 16 (Cityscapes weights) or 19 (CamVid weights)"
            )
        if p < 1 or q < 1 or num_classes < 2:
            raise ValueError("ESPNet needs p >= 1, q >= 1 and num_classes >= 2")
        self.num_classes = num_classes
        self.feature_channels = 256
        self.decoder_skip_channels = decoder_skip_channels
        self.encoder = ESPNetEncoder(num_classes, p, q)
        # RUM decoder (names as in the original so published weights load unchanged).
        self.level3_C = Conv(128 + 3, num_classes, 1)
        self.br = nn.BatchNorm2d(num_classes, eps=_BN_EPS)
        self.conv = ConvBNPReLU(decoder_skip_channels + num_classes, num_classes, 3)
        self.up_l3 = nn.Sequential(
            nn.ConvTranspose2d(num_classes, num_classes, 2, stride=2, bias=False)
        )
        self.combine_l2_l3 = nn.Sequential(
            BNPReLU(2 * num_classes), ESPBlock(2 * num_classes, num_classes, residual=False)
        )
        self.up_l2 = nn.Sequential(
            nn.ConvTranspose2d(num_classes, num_classes, 2, stride=2, bias=False),
            BNPReLU(num_classes),
        )
        self.classifier = nn.ConvTranspose2d(num_classes, num_classes, 2, stride=2, bias=False)

    def encode(self, x: torch.Tensor):
        """(N, 3, H, W) -> (features (N, 256, H/8, W/8), skips (level-1 map, level-2 map))."""
        level1, level1_cat, level2_cat, level3_cat = self.encoder(x)
        skip1 = level1 if self.decoder_skip_channels == 16 else level1_cat
        return level3_cat, (skip1, level2_cat)

    def decode(self, features: torch.Tensor, skips, out_size) -> torch.Tensor:
        """features (N, 256, h, w) + skips -> logits (N, num_classes, *out_size)."""
        skip1, level2_cat = skips
        up3 = self.up_l3(self.br(self.encoder.classifier(features)))
        up3 = _match_size(up3, level2_cat)
        combined = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(level2_cat), up3], 1)))
        combined = _match_size(combined, skip1)
        logits = self.classifier(self.conv(torch.cat([combined, skip1], 1)))
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(
                logits, size=tuple(out_size), mode="bilinear", align_corners=False
            )
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, skips = self.encode(x)
        return self.decode(features, skips, x.shape[-2:])


def _match_size(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # Only for input sizes not divisible by 8, where strided maps round up and 2x upsampling
    # overshoots.
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


@register("espnet")
def espnet(
    num_classes: int = 20, p: int = 2, q: int = 8, decoder_skip_channels: int = 16
) -> ESPNet:
    """ESPNet-(p, q) with the RUM decoder; see :class:`ESPNet` for the arguments."""
    return ESPNet(num_classes=num_classes, p=p, q=q, decoder_skip_channels=decoder_skip_channels)
