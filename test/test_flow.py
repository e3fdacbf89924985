"""Optical flow and warping (video_seg_ros.flow): conventions, label safety, occlusion, torch
warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textures import textured
from video_seg_ros.flow import DisFlow, occlusion_mask, warp_image, warp_labels, warp_tensor


def constant_flow(height: int, width: int, dx: float, dy: float) -> np.ndarray:
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def test_nearest_label_warp_never_creates_a_class_absent_from_the_input():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([3, 7, 200], np.uint8), size=(40, 60))
    flow = rng.uniform(-5, 5, size=(40, 60, 2)).astype(np.float32)  # fractional, varied
    warped = warp_labels(labels, flow)
    assert set(np.unique(warped)) <= {3, 7, 200, 255}
    # Bilinear sampling of ids, as the original ETC code does, invents ids in between.
    blended = np.rint(warp_image(labels.astype(np.float32), flow)).astype(np.uint8)
    assert set(np.unique(blended)) - {3, 7, 200, 255}


def test_label_warp_follows_the_flow_convention_and_fills_outside_pixels():
    labels_b = np.arange(30, dtype=np.uint8).reshape(5, 6)
    warped = warp_labels(labels_b, constant_flow(5, 6, dx=2, dy=1))
    # a[y, x] = b[y + 1, x + 2]
    assert np.array_equal(warped[:4, :4], labels_b[1:, 2:])
    assert (warped[4, :] == 255).all() and (warped[:, 4:] == 255).all()
    assert (warp_labels(labels_b, constant_flow(5, 6, 0, -1), fill=99)[0] == 99).all()


def test_occlusion_mask_flags_pixels_that_leave_the_image():
    forward = constant_flow(8, 10, dx=3, dy=0)
    backward = constant_flow(8, 10, dx=-3, dy=0)
    visible = occlusion_mask(forward, backward)
    assert visible[:, :7].all()
    assert not visible[:, 7:].any()


def test_occlusion_mask_flags_forward_backward_disagreement():
    forward = constant_flow(8, 10, dx=2, dy=0)
    backward = constant_flow(8, 10, dx=-2, dy=0)
    backward[:, 5:7] = 0.0  # these target pixels do not map back: the source pixels are occluded
    visible = occlusion_mask(forward, backward)
    assert not visible[:, 3:5].any()
    assert visible[:, :3].all() and visible[:, 5:8].all()


def test_warp_tensor_moves_a_pattern_by_a_known_flow():
    image_b = torch.zeros(1, 1, 12, 12)
    image_b[0, 0, 6:9, 5:8] = 1.0  # a square in frame b
    flow = torch.zeros(1, 2, 12, 12)
    flow[:, 0], flow[:, 1] = 2.0, 1.0
    warped = warp_tensor(image_b, flow)
    expected = torch.zeros(12, 12)
    expected[5:8, 3:6] = 1.0  # a[y, x] = b[y + 1, x + 2]
    assert torch.equal(warped[0, 0], expected)


def test_warp_tensor_matches_the_opencv_warp_for_fractional_flow():
    rng = np.random.default_rng(1)
    image = rng.random((20, 24)).astype(np.float32)
    flow = rng.uniform(-2, 2, size=(20, 24, 2)).astype(np.float32)
    by_opencv = warp_image(image, flow)
    by_torch = warp_tensor(
        torch.from_numpy(image)[None, None], torch.from_numpy(flow).permute(2, 0, 1)[None]
    )[0, 0].numpy()
    inside = (slice(3, -3), slice(3, -3))  # border handling differs only at the edge
    assert np.allclose(by_opencv[inside], by_torch[inside], atol=1e-4)


def test_warp_tensor_is_differentiable():
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    warp_tensor(image, torch.full((1, 2, 8, 8), 0.5)).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_dis_flow_recovers_an_integer_shift():
    canvas = textured(100, 180, seed=2)
    frame_a, frame_b = canvas[:, 10:170], canvas[:, 5:165]  # content moves 5 px right in b
    flow = DisFlow("medium")(frame_a, frame_b)
    assert flow.shape == (100, 160, 2) and flow.dtype == np.float32
    assert np.median(flow[..., 0]) == pytest.approx(5.0, abs=0.3)
    assert np.median(flow[..., 1]) == pytest.approx(0.0, abs=0.3)


def test_dis_flow_at_reduced_width_reports_full_resolution_pixels():
    canvas = textured(200, 360, seed=3)
    frame_a = np.repeat(canvas[:, 20:340, None], 3, axis=2)
    frame_b = np.repeat(canvas[:, 12:332, None], 3, axis=2)  # 8 px shift
    flow = DisFlow("medium", max_width=160)(frame_a, frame_b)
    assert flow.shape == (200, 320, 2)
    assert np.median(flow[..., 0]) == pytest.approx(8.0, abs=0.6)


def test_dis_flow_rejects_bad_preset_and_mismatched_frames():
    with pytest.raises(ValueError, match="preset"):
        DisFlow("slowest")
    with pytest.raises(ValueError, match="differ in size"):
        DisFlow()(np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8))
