"""The ETC losses: zero when both sides agree, positive otherwise, and gradients only where
intended."""

from __future__ import annotations

import pytest
import torch

from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.models import build_model
from video_seg_ros.training import losses as L


def _scene(shift_x: int = 0, size=(24, 40)) -> torch.Tensor:
    """(1, 3, H, W) image in [0, 1]: uniform background, a textured block away from the borders."""
    height, width = size
    image = torch.full((1, 3, height, width), 0.3)
    pattern = torch.linspace(0.0, 1.0, 8 * 10).view(1, 1, 8, 10).expand(1, 3, 8, 10)
    image[:, :, 8:16, 12 + shift_x : 22 + shift_x] = pattern
    return image


def _logits_of(image: torch.Tensor) -> torch.Tensor:
    """A deterministic per-pixel 'segmenter': 4 class scores computed from the colour."""
    return torch.cat([image, image.mean(1, keepdim=True) * 2.0], 1) * 5.0


def _shift_flow(dx: float, size=(24, 40)) -> torch.Tensor:
    flow = torch.zeros(1, 2, *size)
    flow[:, 0] = dx
    return flow


def test_cross_entropy_small_for_confident_correct_and_large_for_wrong_predictions():
    label = torch.randint(0, 4, (2, 6, 7))
    correct = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float() * 50.0
    assert L.cross_entropy_loss(correct, label).item() < 1e-6
    wrong = torch.roll(correct, 1, dims=1)
    assert L.cross_entropy_loss(wrong, label).item() > 10.0


def test_cross_entropy_ignores_unlabelled_pixels_and_is_zero_when_nothing_is_labelled():
    logits = torch.randn(1, 4, 5, 5)
    label = torch.full((1, 5, 5), IGNORE_ID, dtype=torch.long)
    assert L.cross_entropy_loss(logits, label).item() == 0.0
    label[0, 0, 0] = 2
    expected = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    assert L.cross_entropy_loss(logits, label).item() == pytest.approx(expected.item(), rel=1e-5)


def test_temporal_loss_zero_for_flow_consistent_predictions_and_positive_otherwise():
    image, neighbour = _scene(0), _scene(3)
    logits, neighbour_logits = _logits_of(image), _logits_of(neighbour)
    consistent = L.temporal_loss(logits, neighbour_logits, image, neighbour, _shift_flow(3.0))
    assert consistent.item() < 1e-8
    wrong_flow = L.temporal_loss(logits, neighbour_logits, image, neighbour, _shift_flow(0.0))
    assert wrong_flow.item() > 1e-3
    flickering = L.temporal_loss(
        logits,
        neighbour_logits + torch.randn_like(neighbour_logits),
        image,
        neighbour,
        _shift_flow(3.0),
    )
    assert flickering.item() > 1e-2


def test_occlusion_weight_is_one_where_the_warped_neighbour_matches_and_small_where_it_does_not():
    image = _scene(0)
    assert torch.allclose(L.occlusion_weight(image, image), torch.ones(1, 1, 24, 40))
    other = image.clone()
    other[:, :, :4] = 1.0 - other[:, :, :4]
    weight = L.occlusion_weight(image, other)
    assert weight[..., :4, :].max() < 0.1 and weight[..., 4:, :].min() == 1.0


def test_temporal_loss_gradient_reaches_the_student_only():
    torch.manual_seed(0)
    student = build_model("espnet", num_classes=19, p=1, q=1)
    image, neighbour = _scene(0, (32, 48)), _scene(2, (32, 48))
    image.requires_grad_(True)
    neighbour.requires_grad_(True)
    flow = _shift_flow(2.0, (32, 48)).requires_grad_(True)
    loss = L.temporal_loss(student(image), student(neighbour), image, neighbour, flow)
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0
    assert flow.grad is None  # flow and occlusion weight are constants
    # Images get gradient only through the student network, never through the occlusion weight.
    image_only = L.temporal_loss(
        _logits_of(_scene(0)), _logits_of(_scene(2)), image, neighbour, flow
    )
    assert not image_only.requires_grad


def test_temporal_loss_detach_neighbour_trains_only_the_current_frame_side():
    logits = torch.randn(1, 4, 24, 40, requires_grad=True)
    neighbour_logits = torch.randn(1, 4, 24, 40, requires_grad=True)
    image = _scene(0)
    L.temporal_loss(
        logits, neighbour_logits, image, image, _shift_flow(0.0), detach_neighbour=True
    ).backward()
    assert logits.grad.abs().sum() > 0 and neighbour_logits.grad is None
    logits.grad = None
    L.temporal_loss(logits, neighbour_logits, image, image, _shift_flow(0.0)).backward()
    assert logits.grad.abs().sum() > 0 and neighbour_logits.grad.abs().sum() > 0


def test_pixel_distillation_zero_for_identical_outputs_and_positive_otherwise():
    teacher = torch.randn(2, 5, 6, 8)
    assert L.pixel_distillation_loss(teacher.clone(), teacher, temperature=2.0).abs().item() < 1e-6
    assert L.pixel_distillation_loss(torch.randn(2, 5, 6, 8), teacher).item() > 1e-2
    # Softmax is shift invariant: adding a constant to all scores changes nothing.
    assert L.pixel_distillation_loss(teacher + 3.0, teacher).abs().item() < 1e-5


def test_pairwise_distillation_compares_structure_not_channels():
    features = torch.randn(2, 8, 12, 16)
    assert L.pairwise_distillation_loss(features, features, grid=(6, 8)).item() < 1e-10
    # A teacher with twice the channels but the same patch similarities gives zero loss.
    wide = torch.cat([features, features], 1)
    assert L.pairwise_distillation_loss(features, wide, grid=(6, 8)).item() < 1e-10
    assert (
        L.pairwise_distillation_loss(features, torch.randn(2, 16, 12, 16), grid=(6, 8)).item()
        > 1e-3
    )


def test_cross_frame_distillation_zero_for_matching_affinities_and_positive_otherwise():
    f_t, f_n = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    assert (
        L.cross_frame_distillation_loss(f_t, f_n, f_t * 3.0, f_n * 3.0, grid=(4, 4)).item() < 1e-10
    )
    assert L.cross_frame_distillation_loss(f_t, f_n, f_t, f_t, grid=(4, 4)).item() > 1e-3


def test_temporal_distillation_zero_for_equal_affinity_sequences_and_trains_only_the_student():
    loss_fn = L.TemporalDistillationLoss(grid=(4, 4), hidden=4, seed=0)
    f_t = torch.randn(1, 8, 8, 8, requires_grad=True)
    f_n = torch.randn(1, 8, 8, 8)
    assert loss_fn([f_t, f_n], [f_t.detach(), f_n]).item() < 1e-12
    loss = loss_fn([f_t, f_n], [f_n, f_t.detach()])
    assert loss.item() > 0
    loss.backward()
    assert f_t.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())


def test_temporal_distillation_network_is_the_same_for_the_same_seed():
    a, b = L.TemporalDistillationLoss(seed=3), L.TemporalDistillationLoss(seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
