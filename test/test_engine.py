"""SegmentationEngine on a small random-init ESPNet: shapes, channel order, confidence, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from video_seg_ros.checkpoint import Checkpoint, Preprocessing
from video_seg_ros.engine import DeviceError, SegmentationEngine, resolve_device
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.models import build_model

NUM_OUTPUTS = 20  # 19 Cityscapes classes + the "background" channel published as 255


def make_checkpoint(output_to_class=None) -> Checkpoint:
    torch.manual_seed(0)
    model = build_model("espnet", p=2, q=3, num_classes=NUM_OUTPUTS)
    # Per-channel statistics differ so that a channel swap changes the input tensor.
    checkpoint = Checkpoint.for_label_set(
        "espnet", {"p": 2, "q": 3, "num_classes": NUM_OUTPUTS}, model.state_dict(), "cityscapes",
        Preprocessing(64, 128, "bgr", [70.0, 90.0, 110.0], [40.0, 50.0, 60.0], 1 / 255))
    if output_to_class is not None:
        checkpoint.output_to_class = output_to_class
    return checkpoint


@pytest.fixture(scope="module")
def engine():
    return SegmentationEngine(make_checkpoint(), device="cpu")


def random_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(37, 53), (64, 128), (101, 250)])
def test_labels_come_back_at_the_input_resolution_as_uint8(engine, size):
    result = engine.segment(random_frame(*size))
    assert result.labels.shape == size and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= set(range(19)) | {IGNORE_ID}
    assert result.confidence is None and result.model_ms > 0


def test_upsampling_labels_instead_of_logits_keeps_the_resolution():
    engine = SegmentationEngine(make_checkpoint(), device="cpu", upsample="labels")
    assert engine.segment(random_frame(45, 77)).labels.shape == (45, 77)


def test_bgr_input_gives_the_same_result_as_the_channel_swapped_rgb_input(engine):
    frame = random_frame(48, 96, seed=1)
    swapped = np.ascontiguousarray(frame[..., ::-1])
    rgb = engine.segment(frame, channel_order="rgb")
    bgr = engine.segment(swapped, channel_order="bgr")
    assert np.array_equal(rgb.labels, bgr.labels)
    assert torch.equal(engine.preprocess([frame], "rgb"), engine.preprocess([swapped], "bgr"))
    # ... and the stated order matters: the same array read as BGR is a different input.
    assert not torch.equal(engine.preprocess([frame], "rgb"), engine.preprocess([frame], "bgr"))


def test_preprocessing_applies_the_checkpoint_formula(engine):
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[..., 0] = 10  # R
    x = engine.preprocess([frame], "rgb")
    # Model order is BGR: channel 2 is red. x = (pixel - mean) / std * scale
    assert x[0, 2, 0, 0].item() == pytest.approx((10 - 110.0) / 60.0 / 255)
    assert x[0, 0, 0, 0].item() == pytest.approx((0 - 70.0) / 40.0 / 255)


def test_confidence_is_a_max_softmax_in_0_1(engine):
    result = engine.segment(random_frame(50, 70, seed=2), with_confidence=True)
    assert result.confidence.shape == (50, 70) and result.confidence.dtype == np.float32
    assert (result.confidence > 0).all() and (result.confidence <= 1.0 + 1e-6).all()
    assert result.confidence.min() >= 1.0 / NUM_OUTPUTS - 1e-4  # the max of 20 probabilities


def test_batch_gives_the_same_result_as_streaming_for_a_per_frame_model(engine):
    frames = [random_frame(40, 60, seed=s) for s in range(3)]
    batch = engine.segment_batch(frames, with_confidence=True)
    engine.reset()  # a no-op for a per-frame model, but part of the streaming contract
    stream = [engine.segment(frame, with_confidence=True) for frame in frames]
    for together, alone in zip(batch, stream):
        # Batched convolutions may round differently; only near-ties could flip.
        assert (together.labels == alone.labels).mean() > 0.999
        assert np.allclose(together.confidence, alone.confidence, atol=1e-4)


def test_output_channels_are_mapped_to_published_ids():
    engine = SegmentationEngine(make_checkpoint(output_to_class=[5] * 19 + [IGNORE_ID]), device="cpu")
    labels = engine.segment(random_frame(32, 32, seed=3)).labels
    assert set(np.unique(labels)) <= {5, IGNORE_ID}


def test_bad_frames_are_refused_with_a_clear_message(engine):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        engine.segment(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        engine.segment(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="same size"):
        engine.segment_batch([random_frame(10, 10), random_frame(12, 10)])
    with pytest.raises(ValueError, match="channel_order"):
        engine.segment(random_frame(10, 10), channel_order="yuv")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_request_without_a_gpu_raises_device_error():
    with pytest.raises(DeviceError, match="no CUDA device.*'cpu' or 'auto'"):
        resolve_device("cuda")
    with pytest.raises(DeviceError):
        SegmentationEngine(make_checkpoint(), device="cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_device_names_are_refused():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_engine_reports_model_name_and_classes(engine):
    assert engine.model_name == "espnet(p=2,q=3)"
    assert engine.class_names[13] == "car"
    assert engine.palette_table[13].tolist() == [0, 0, 142]
    assert not engine.is_temporal
