"""CGNet (Wu et al., 2018): Context Guided Network, a light-weight segmenter (M=3, N=21: 0.5 M
params).

Submodule names follow wutianyiRosun/CGNet's ``Context_Guided_Network`` so that its published
state_dicts load unchanged (``level1_0`` ... ``bn_prelu_3``, ``classifier.0``).

Encoder/decoder split (contract of :mod:`video_seg_ros.models`): ``encode`` returns the stage-3
concatenation (N, 256, H/8, W/8) and no skips; ``decode`` is the 1x1 classifier plus bilinear
upsampling, exactly the original's last two steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.models.registry import register
from video_seg_ros.models.espnet import BNPReLU, Conv, ConvBNPReLU, ImagePyramid


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution (optionally dilated) in ``.conv``: (N, C, H, W) -> (N, C, H,
    W)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class GlobalContext(nn.Module):
    """Squeeze-and-excitation style channel reweighting (the paper's f_glo)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class ContextGuidedDown(nn.Module):
    """Strided CG block: (N, C_in, H, W) -> (N, C_out, H/2, W/2); local + dilated surrounding
    features, joined, reduced and reweighted by global context."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, reduction: int):
        super().__init__()
        self.conv1x1 = ConvBNPReLU(
            in_channels, out_channels, 3, stride=2
        )  # a 3x3 despite its name
        self.F_loc = DepthwiseConv(out_channels)
        self.F_sur = DepthwiseConv(out_channels, dilation)
        self.bn = nn.BatchNorm2d(2 * out_channels, eps=1e-3)
        self.act = nn.PReLU(2 * out_channels)
        self.reduce = Conv(2 * out_channels, out_channels, 1)
        self.F_glo = GlobalContext(out_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1x1(x)
        joint = self.act(self.bn(torch.cat([self.F_loc(x), self.F_sur(x)], 1)))
        return self.F_glo(self.reduce(joint))


class ContextGuidedBlock(nn.Module):
    """Residual CG block: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, dilation: int, reduction: int):
        super().__init__()
        half = channels // 2
        self.conv1x1 = ConvBNPReLU(channels, half, 1)
        self.F_loc = DepthwiseConv(half)
        self.F_sur = DepthwiseConv(half, dilation)
        self.bn_prelu = BNPReLU(channels)
        self.F_glo = GlobalContext(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1x1(x)
        joint = self.bn_prelu(torch.cat([self.F_loc(reduced), self.F_sur(reduced)], 1))
        return x + self.F_glo(joint)


class CGNet(nn.Module):
    """CGNet-(M, N). Shapes: (N, 3, H, W) -> (N, num_classes, H, W).

    Args:
        num_classes: output channels (11 for the published CamVid weights).
        m, n: blocks in stage 2 and stage 3, the first of each being the strided one.
    """

    # Measured in bench/engine.py: oneDNN 2.1-2.8x faster (depthwise convolutions), 1 or 2 threads.
    prefers_mkldnn = True

    def __init__(self, num_classes: int = 19, m: int = 3, n: int = 21):
        super().__init__()
        if m < 1 or n < 1 or num_classes < 2:
            raise ValueError("CGNet needs m >= 1, n >= 1 and num_classes >= 2")
        self.num_classes = num_classes
        self.feature_channels = 256
        self.level1_0 = ConvBNPReLU(3, 32, 3, stride=2)
        self.level1_1 = ConvBNPReLU(32, 32, 3)
        self.level1_2 = ConvBNPReLU(32, 32, 3)
        self.sample1 = ImagePyramid(1)
        self.sample2 = ImagePyramid(2)
        self.b1 = BNPReLU(32 + 3)
        self.level2_0 = ContextGuidedDown(32 + 3, 64, dilation=2, reduction=8)
        self.level2 = nn.ModuleList(
            [ContextGuidedBlock(64, dilation=2, reduction=8) for _ in range(m - 1)]
        )
        self.bn_prelu_2 = BNPReLU(128 + 3)
        self.level3_0 = ContextGuidedDown(128 + 3, 128, dilation=4, reduction=16)
        self.level3 = nn.ModuleList(
            [ContextGuidedBlock(128, dilation=4, reduction=16) for _ in range(n - 1)]
        )
        self.bn_prelu_3 = BNPReLU(256)
        self.classifier = nn.Sequential(Conv(256, num_classes, 1))

    def encode(self, x: torch.Tensor):
        """(N, 3, H, W) -> (features (N, 256, H/8, W/8), None)."""
        level1 = self.level1_2(self.level1_1(self.level1_0(x)))
        level1_cat = self.b1(torch.cat([level1, self.sample1(x)], 1))
        down2 = self.level2_0(level1_cat)
        out = down2
        for block in self.level2:
            out = block(out)
        level2_cat = self.bn_prelu_2(torch.cat([out, down2, self.sample2(x)], 1))
        down3 = self.level3_0(level2_cat)
        out = down3
        for block in self.level3:
            out = block(out)
        return self.bn_prelu_3(torch.cat([down3, out], 1)), None

    def decode(self, features: torch.Tensor, skips, out_size) -> torch.Tensor:
        """features (N, 256, h, w) -> logits (N, num_classes, *out_size)."""
        return F.interpolate(
            self.classifier(features), size=tuple(out_size), mode="bilinear", align_corners=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, skips = self.encode(x)
        return self.decode(features, skips, x.shape[-2:])


@register("cgnet")
def cgnet(num_classes: int = 19, m: int = 3, n: int = 21) -> CGNet:
    """CGNet-(M, N), randomly initialised; see :class:`CGNet`."""
    return CGNet(num_classes=num_classes, m=m, n=n)
