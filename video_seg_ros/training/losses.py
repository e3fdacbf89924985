"""The ETC losses (Liu et al., "Efficient Semantic Video Segmentation with Per-frame Inference",
ECCV 2020): cross-entropy, the flow-warped temporal loss and distillation from a teacher.

Every loss returns a scalar tensor that is exactly zero when its two sides agree, so each can be
weighted (or switched off with weight 0) independently from the training config. The losses in
:data:`PER_SAMPLE_LOSSES` also give one value per sample (``per_sample=True``), which lets a
dataset entry scale them for its own samples (``loss_scale`` in the entry).

Gradient paths (what the tests check): the flow, the occlusion weight and the teacher's outputs are
constants. In the temporal loss both student outputs receive gradient, as in ETC's public code
(it warps the neighbour's prediction without detaching it); ``detach_neighbour=True`` turns the
warped neighbour into a fixed target instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.flow import warp_tensor
from video_seg_ros.labels import IGNORE_ID

#: ETC measures the occlusion weight on ImageNet-normalised images; with [0, 1] RGB inputs that is
#: the per-channel difference divided by these standard deviations (the means cancel).
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Losses a dataset entry may scale for its own samples, in the order of a sample's
#: ``loss_scale`` vector.
PER_SAMPLE_LOSSES = ("ce", "temporal", "distill_pixel")


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def cross_entropy_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    per_sample: bool = False,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (``IGNORE_ID`` skipped); 0 when nothing is labelled.

    logits: (N, C, h, w), upsampled to label's (N, H, W) size first. ``per_sample``: (N,), each
    sample's mean over its own labelled pixels. ``class_weights`` (C,): each pixel's loss weighted
    by its class, the mean taken over the weights (as ``torch.nn.CrossEntropyLoss``).
    """
    logits = upsample_to(logits, label.shape[-2:])
    per_pixel = F.cross_entropy(
        logits.float(), label, weight=class_weights, ignore_index=IGNORE_ID, reduction="none"
    )
    labelled = (label != IGNORE_ID).float()
    if class_weights is not None:
        labelled = labelled * class_weights[torch.where(label == IGNORE_ID, 0, label)]
    if per_sample:
        return per_pixel.sum((1, 2)) / labelled.sum((1, 2)).clamp(min=1e-12)
    return per_pixel.sum() / labelled.sum().clamp(min=1e-12)


def enet_class_weights(frequencies, constant: float = 1.02) -> list[float]:
    """ENet's class weighting 1 / ln(c + p_class) (Paszke et al. 2016; ESPNet trains with it):
    rare classes weigh up to 1 / ln(c) ~ 50, one that covers a third of the pixels ~ 3.4.
    ``frequencies``: each class's share of the labelled pixels."""
    return [1.0 / math.log(constant + float(p)) for p in frequencies]


def occlusion_weight(image: torch.Tensor, neighbour_warped: torch.Tensor) -> torch.Tensor:
    """ETC's soft non-occlusion mask M = exp(-|sum_c (I_t - warp(I_{t+k}))|): (N, 1, H, W).

    Images are (N, 3, H, W) RGB in [0, 1]; see :data:`IMAGENET_STD`.
    """
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return torch.exp(-torch.abs(((image - neighbour_warped) / std).sum(1, keepdim=True)))


def temporal_loss(
    logits: torch.Tensor,
    neighbour_logits: torch.Tensor,
    image: torch.Tensor,
    neighbour: torch.Tensor,
    flow: torch.Tensor,
    valid: torch.Tensor | None = None,
    detach_neighbour: bool = False,
    per_sample: bool = False,
) -> torch.Tensor:
    """MSE(M * logits_t, M * warp(logits_{t+k}, F)) on logits upsampled to the image size;
    ``per_sample``: (N,), each sample's mean (their mean is the batch's).

    Args:
        logits, neighbour_logits: (N, C, h, w) student outputs for frame t and t+k.
        image, neighbour: (N, 3, H, W) RGB in [0, 1].
        flow: (N, 2, H, W) flow from t to t+k in pixels.
        valid: (N, 1, H, W) 1 on real pixels, 0 on crop padding (excluded), or None.
    """
    size = image.shape[-2:]
    flow = flow.detach().float()  # the flow is a fixed input, never trained through this loss
    logits = upsample_to(logits, size).float()
    neighbour_logits = upsample_to(neighbour_logits, size).float()
    if detach_neighbour:
        neighbour_logits = neighbour_logits.detach()
    with torch.no_grad():
        mask = occlusion_weight(image.float(), warp_tensor(neighbour.float(), flow))
        if valid is not None:
            mask = mask * valid.float()
    warped = warp_tensor(neighbour_logits, flow)
    if per_sample:
        return ((logits * mask - warped * mask) ** 2).mean((1, 2, 3))
    return F.mse_loss(logits * mask, warped * mask)


def pixel_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    per_sample: bool = False,
) -> torch.Tensor:
    """KL(teacher || student) of softened class distributions, summed over classes, averaged over
    pixels, times T^2 (so the gradient scale does not depend on T). (N, C, h, w) each;
    ``per_sample``: (N,), each sample's mean."""
    student_logits = upsample_to(student_logits, teacher_logits.shape[-2:]).float()
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return (kl.mean((1, 2)) if per_sample else kl.mean()) * temperature**2


def _pooled_unit_nodes(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, P) feature vectors of a grid of pooled patches, unit length."""
    pooled = F.adaptive_avg_pool2d(features.float(), tuple(grid))
    return F.normalize(pooled.flatten(2), dim=1, eps=1e-6)


def affinity(
    features_a: torch.Tensor,
    features_b: torch.Tensor | None = None,
    grid: tuple[int, int] = (16, 32),
) -> torch.Tensor:
    """Cosine affinity between pooled patches of a and b (b = a if None): (N, P, P), P = grid
    area."""
    nodes_a = _pooled_unit_nodes(features_a, grid)
    nodes_b = nodes_a if features_b is None else _pooled_unit_nodes(features_b, grid)
    return torch.bmm(nodes_a.transpose(1, 2), nodes_b)


def pairwise_distillation_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    grid: tuple[int, int] = (16, 32),
) -> torch.Tensor:
    """Structure distillation: MSE between student and teacher self-affinity matrices. Channel
    counts may differ (the affinity is channel-free); both are pooled to the same grid."""
    return F.mse_loss(affinity(student_features, grid=grid), affinity(teacher_features, grid=grid))


def cross_frame_distillation_loss(
    student_t: torch.Tensor,
    student_n: torch.Tensor,
    teacher_t: torch.Tensor,
    teacher_n: torch.Tensor,
    grid: tuple[int, int] = (16, 32),
) -> torch.Tensor:
    """MSE between student and teacher affinities from frame t's patches to frame t+k's."""
    return F.mse_loss(affinity(student_t, student_n, grid), affinity(teacher_t, teacher_n, grid))


class ConvLSTMCell(nn.Module):
    """A standard convolutional LSTM cell: (N, C_in, H, W) input, (N, hidden, H, W) state."""

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            input_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])
            state = (zeros, zeros)
        hidden, cell = state
        i, f, o, g = self.gates(torch.cat([x, hidden], 1)).chunk(4, 1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, cell


class TemporalDistillationLoss(nn.Module):
    """Temporal distillation over affinity sequences, as ETC's ConvLSTM criterion: the sequence of
    self-affinity maps (one per frame, as a 1-channel P x P image) of the student and of the
    teacher
    go through the same ConvLSTM; the final hidden states are matched with MSE.

    Simplification (documented): the ConvLSTM here is randomly initialised from ``seed`` and frozen
    (ETC trains it alongside); it acts as a fixed recurrent embedding of how the structure evolves
    over the frames. The loss is zero when both affinity sequences are equal.
    """

    def __init__(self, grid=(8, 16), hidden: int = 4, seed: int = 0):
        super().__init__()
        self.grid = tuple(grid)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.cell = ConvLSTMCell(1, hidden)
        torch.random.set_rng_state(generator_state)
        self.cell.requires_grad_(False)

    def _embed(self, feature_sequence: list[torch.Tensor]) -> torch.Tensor:
        state = None
        for features in feature_sequence:
            state = self.cell(affinity(features, grid=self.grid).unsqueeze(1), state)
        return state[0]

    def forward(
        self, student_sequence: list[torch.Tensor], teacher_sequence: list[torch.Tensor]
    ) -> torch.Tensor:
        return F.mse_loss(self._embed(student_sequence), self._embed(teacher_sequence))


def confident_pseudo_labels(
    teacher_logits: torch.Tensor,
    confidence: float,
    channels: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher logits (N, C, h, w) -> (N, h, w) int64 targets: the argmax where the teacher's max
    softmax probability is >= ``confidence``, ``IGNORE_ID`` elsewhere.

    ``channels`` maps the teacher's channel j to the student channel ``channels[j]`` (teacher and
    student may order or count classes differently); ``valid`` (N, 1, H, W), 1 on real pixels,
    marks crop padding as ignored (resized nearest to the logits' size).
    """
    with torch.no_grad():
        probabilities = torch.softmax(teacher_logits.float(), dim=1)
        top, index = probabilities.max(1)
        if channels is not None:
            index = channels[index]
        keep = top >= confidence
        if valid is not None:
            keep &= F.interpolate(valid.float(), size=index.shape[-2:], mode="nearest")[:, 0] > 0.5
        return torch.where(keep, index, torch.full_like(index, IGNORE_ID))


def pseudo_label_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    confidence: float,
    channels: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the student on the teacher's confident pixels (self-training on unlabelled
    video, as in UDA-VSS); 0 when no pixel is confident. Gradient: student only."""
    targets = confident_pseudo_labels(teacher_logits, confidence, channels, valid)
    return cross_entropy_loss(student_logits, targets)
