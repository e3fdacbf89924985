"""SegmentationEngine on a small random-init ESPNet: shapes, channel order, confidence, batching,
the stream/model/release seams, and the denormal flush on the published ESPNet p2q8 (../shared)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared_data import require_shared_file
from video_seg_ros.backends import BackendError
from checkpoints import tiny_espnet
from video_seg_ros.checkpoint import Checkpoint, output_class_lookup
from video_seg_ros.engine import DeviceError, SegmentationEngine, resolve_device
from video_seg_ros.engine_io import channel_max
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.models import build_model

NUM_OUTPUTS = 20  # 19 Cityscapes classes + the "background" channel published as 255


def make_checkpoint(output_to_class=None) -> Checkpoint:
    # Per-channel statistics differ so that a channel swap changes the input tensor.
    return tiny_espnet(
        size=(128, 64),
        channel_order="bgr",
        mean=(70.0, 90.0, 110.0),
        std=(40.0, 50.0, 60.0),
        scale=1 / 255,
        output_to_class=output_to_class,
    )


@pytest.fixture(scope="module")
def engine():
    return SegmentationEngine(make_checkpoint(), device="cpu", precision="fp32")


def random_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(37, 53), (64, 128), (101, 250)])
def test_labels_come_back_at_the_input_resolution_as_uint8(engine, size):
    frame = random_frame(*size)
    started = time.perf_counter()
    result = engine.segment(frame)
    wall_ms = (time.perf_counter() - started) * 1000.0
    assert result.labels.shape == size and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= set(range(19)) | {IGNORE_ID}
    # model_ms is part of the call, in milliseconds: neither zero nor more than the whole call
    assert result.confidence is None and 0 < result.model_ms <= wall_ms


def test_upsampling_labels_instead_of_logits_keeps_the_resolution():
    engine = SegmentationEngine(
        make_checkpoint(), device="cpu", precision="fp32", upsample="labels"
    )
    assert engine.segment(random_frame(45, 77)).labels.shape == (45, 77)


def test_logits_upsampling_equals_interpolating_the_models_logits_by_hand():
    """upsample="logits": class scores are resized bilinearly *before* the argmax."""
    checkpoint = tiny_espnet(size=(64, 32))
    engine = SegmentationEngine(
        checkpoint, device="cpu", backend="torch", precision="fp32", upsample="logits"
    )
    # 75x141: not a multiple of the 64x32 model input
    frame = np.random.default_rng(3).integers(0, 256, (75, 141, 3), dtype=np.uint8)
    with torch.inference_mode():
        logits = engine.model(engine.preprocess([frame])).float()
        by_hand = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=False)
        lookup = output_class_lookup(checkpoint.output_to_class, torch.device("cpu"))
        expected = lookup[by_hand.argmax(1)][0]
    result = engine.segment(frame)
    assert result.labels.shape == frame.shape[:2]
    np.testing.assert_array_equal(result.labels, expected.numpy())
    # The cheaper "labels" mode takes the argmax at model resolution: it disagrees at boundaries.
    labels_mode = (
        SegmentationEngine(
            checkpoint, device="cpu", backend="torch", precision="fp32", upsample="labels"
        )
        .segment(frame)
        .labels
    )
    assert (labels_mode != result.labels).any()


def test_engines_cache_conversions_in_the_sessions_folder_not_in_the_users_home(tmp_path_factory):
    """conftest's private_conversion_cache: backend="auto" without cache_dir never writes
    ~/.cache (node processes inherit the variable)."""
    from video_seg_ros.backends import default_cache_dir

    cache_home = Path(os.environ["XDG_CACHE_HOME"])
    assert cache_home.is_relative_to(tmp_path_factory.getbasetemp())
    assert default_cache_dir().is_relative_to(cache_home)


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
    engine = SegmentationEngine(
        make_checkpoint(output_to_class=[5] * 19 + [IGNORE_ID]), device="cpu", precision="fp32"
    )
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


# ---- engine seams: streams, reset, release, model= ---------------------------------------------
def test_per_frame_streams_may_mix_frame_sizes_and_match_single_frames():
    engine = SegmentationEngine(make_checkpoint(), device="cpu", precision="fp32", backend="torch")
    frames = [
        random_frame(40, 60, seed=5),
        random_frame(97, 180, seed=6),
        random_frame(64, 128, seed=7),
    ]
    together = engine.segment_batch(
        frames, streams=["left", "right", "rear"], with_confidence=True
    )
    for frame, result in zip(frames, together):
        alone = engine.segment(frame, with_confidence=True)
        assert (
            result.labels.shape == frame.shape[:2] and result.confidence.shape == frame.shape[:2]
        )
        assert (result.labels == alone.labels).mean() > 0.999
        assert np.allclose(result.confidence, alone.confidence, atol=1e-4)


def test_model_argument_runs_the_callers_module_and_keeps_its_training_mode():
    checkpoint = make_checkpoint()
    module = build_model("espnet", p=2, q=3, num_classes=NUM_OUTPUTS)
    module.load_state_dict(checkpoint.state_dict)
    module.train()
    engine = SegmentationEngine(checkpoint, device="cpu", precision="fp32", model=module)
    assert engine.model is module and engine.backend == "torch"
    assert "model=" in engine.fallback_reason  # auto would have converted a checkpoint's own model
    frame = random_frame(64, 128, seed=8)
    reference = SegmentationEngine(
        checkpoint, device="cpu", precision="fp32", backend="torch"
    ).segment(frame, with_confidence=True)
    result = engine.segment(frame, with_confidence=True)
    assert (
        module.training
    )  # restored after the call, which ran in eval mode (BatchNorm statistics):
    assert np.array_equal(result.labels, reference.labels)
    with pytest.raises(BackendError, match="torch backend only"):
        SegmentationEngine(
            checkpoint, device="cpu", precision="fp32", model=module, backend="openvino"
        )


def test_release_frees_the_model_and_refuses_further_frames():
    engine = SegmentationEngine(make_checkpoint(), device="cpu", precision="fp32", backend="torch")
    engine.segment(random_frame(32, 32))
    engine.release()
    assert engine.model is None
    with pytest.raises(RuntimeError, match="released"):
        engine.segment(random_frame(32, 32))


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(BackendError, match="unknown backend 'onnx'.*torch, openvino"):
        SegmentationEngine(make_checkpoint(), device="cpu", precision="fp32", backend="onnx")


UNFLUSHED_RUN = """
import sys, cv2, numpy as np, torch
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.weights_import import import_weights
checkpoint = import_weights("espnet", "cityscapes", sys.argv[1])
engine = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32",
                            flush_denormals=False)
labels = engine.segment(cv2.imread(sys.argv[2]), "bgr").labels
assert (torch.tensor([1e-40]) * 1.0).item() != 0.0, "denormals were flushed in the unflushed run"
np.save(sys.argv[3], labels)
"""


@pytest.mark.slow
def test_denormal_flush_keeps_every_label_of_published_espnet_p2q8_on_the_real_frame(
    shared, tmp_path
):
    """The flush makes the published weights fast on a CPU; it must not change one label."""
    from video_seg_ros.weights_import import import_weights

    weights = require_shared_file(shared, "weights/espnet/espnet_p_2_q_8.pth")
    frame_path = require_shared_file(
        shared, "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"
    )
    # The flush is per thread and sticks, so the unflushed run needs a process of its own.
    subprocess.run(
        [
            sys.executable,
            "-c",
            UNFLUSHED_RUN,
            str(weights),
            str(frame_path),
            str(tmp_path / "unflushed.npy"),
        ],
        check=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    flushed = (
        SegmentationEngine(
            import_weights("espnet", "cityscapes", weights),
            device="cpu",
            backend="torch",
            precision="fp32",
        )
        .segment(cv2.imread(str(frame_path)), "bgr")
        .labels
    )
    assert (torch.tensor([1e-40]) * 1.0).item() == 0.0
    assert np.array_equal(flushed, np.load(tmp_path / "unflushed.npy"))


def test_channel_max_is_torch_max_with_the_first_index_on_ties():
    scores = torch.randn(2, 19, 9, 13)
    scores[0, :, 0, 0] = 0.0  # every class tied: the first one wins, as with torch.max
    scores[1, 3:7, 2, 5] = scores[1, :, 2, 5].max() + 1.0  # a tie between classes 3..6
    values, index = channel_max(scores)
    expected_values, expected_index = scores.max(dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(index, expected_index)
    assert index[0, 0, 0] == 0 and index[1, 2, 5] == 3
