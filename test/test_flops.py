"""count_gflops: FLOPs of one forward pass counted by FlopCounterMode (multiply-add = 2 FLOPs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from checkpoints import tiny_espnet
from video_seg_ros.flops import count_gflops
from video_seg_ros.models import build_from_checkpoint
from video_seg_ros.models.memory import wrap_with_memory


def test_a_convolution_counts_two_flops_per_multiply_add_of_every_output_pixel():
    # 3 -> 8 channels, 3x3 kernel, same padding: a 64x32 input gives 64x32 output pixels.
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_gflops(conv, (64, 32)) * 1e9 == pytest.approx(2 * 3 * 8 * 3 * 3 * 32 * 64)


def test_a_strided_convolution_counts_its_output_pixels_only():
    # stride 2 halves both sides: 32x16 output pixels.
    conv = nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1)
    assert count_gflops(conv, (64, 32)) * 1e9 == pytest.approx(2 * 3 * 6 * 3 * 3 * 16 * 32)


def test_element_wise_layers_and_the_bias_add_nothing():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    with_extras = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
    )
    assert count_gflops(with_extras, (64, 32)) == pytest.approx(count_gflops(conv, (64, 32)))


def test_the_count_leaves_training_mode_and_batchnorm_statistics_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    count_gflops(model, (16, 8))
    assert model.training
    assert torch.equal(model[1].running_mean, before)


def test_espnet_at_twice_the_width_and_height_costs_four_times_as_much():
    # p=1, q=1: the smallest ESPNet keeps the test fast; every layer scales with the pixel count
    # (512x256 and 1024x512 are multiples of 8, so no stride rounds).
    model = build_from_checkpoint(tiny_espnet(p=1, q=1))
    small, large = count_gflops(model, (512, 256)), count_gflops(model, (1024, 512))
    assert small > 0
    assert large / small == pytest.approx(4.0, rel=1e-3)


def test_a_memory_model_counts_one_frame_with_a_fresh_memory_and_keeps_its_state():
    base = build_from_checkpoint(tiny_espnet())
    memory_model = wrap_with_memory(build_from_checkpoint(tiny_espnet()), None).eval()
    with torch.no_grad():
        memory_model.step(torch.zeros(1, 3, 32, 64))  # a stored frame the count must not read
    with_a_stored_frame = count_gflops(memory_model, (64, 32))
    assert len(memory_model.state) == 1
    memory_model.reset_state()
    assert count_gflops(memory_model, (64, 32)) == pytest.approx(with_a_stored_frame)
    # the memory's key/value/query convs, fusion and attention come on top of the base network
    assert with_a_stored_frame > count_gflops(base, (64, 32))


def test_a_model_that_does_not_run_in_torch_is_refused():
    class ElsewhereGraph(nn.Module):
        runs_in_torch = False

    with pytest.raises(ValueError, match="does not run in PyTorch"):
        count_gflops(ElsewhereGraph(), (64, 32))
