"""Backends behind SegmentationEngine: denormal flush, precision refusal, OpenVINO against torch
(published weights, memory models, streams), start-up errors and fallback, TensorRT (CUDA only).

OpenVINO conversions are cached in one temporary folder per test session; models are small
(128x64, or ESPNet p2q3 at 512x256) so that the conversions stay short on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np
import pytest
import torch

from checkpoints import random_memory_checkpoint, tiny_espnet, unconvertible_checkpoint
from shared_data import require_shared_file
from video_seg_ros import runtime
from video_seg_ros.backends import BackendError
from video_seg_ros.engine import SegmentationEngine

openvino = pytest.importorskip(
    "openvino", reason="openvino is not installed (requirements.txt pins it)"
)

pytestmark = pytest.mark.openvino

FRAME = "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conversion_cache")


def frames(count: int, height: int = 64, width: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Unrelated noise frames: a memory of them changes the outputs much more than a smooth
    video."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def memory_checkpoint():
    return random_memory_checkpoint((128, 64), seed=1, scale=2.0)


@pytest.fixture(scope="module", params=["torch", "openvino"])
def memory_engine(request, memory_checkpoint, cache_dir):
    return SegmentationEngine(
        memory_checkpoint,
        device="cpu",
        backend=request.param,
        precision="fp32",
        cache_dir=cache_dir,
    )


# ---- precision ----------------------------------------------------------------------------------
def test_openvino_bf16_agrees_with_fp32_and_shares_the_fp32_conversion(monkeypatch, cache_dir):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1")
    checkpoint = tiny_espnet(size=(128, 64))
    exact = SegmentationEngine(
        checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=cache_dir
    )
    reduced = SegmentationEngine(
        checkpoint, device="cpu", backend="openvino", precision="bf16", cache_dir=cache_dir
    )
    assert (
        reduced._runner.cache_path == exact._runner.cache_path
    )  # one IR, precision chosen when compiling
    assert reduced.precision == "bf16" and reduced.precision_decision.agreement is not None
    for frame in frames(2):
        a, b = (
            exact.segment(frame, with_confidence=True),
            reduced.segment(frame, with_confidence=True),
        )
        assert np.mean(a.labels == b.labels) >= 0.95
        assert np.abs(a.confidence - b.confidence).max() < 0.05


# ---- OpenVINO against torch ---------------------------------------------------------------------
@pytest.mark.slow
def test_openvino_gives_the_torch_labels_for_published_espnet_on_a_real_frame(shared, cache_dir):
    from video_seg_ros.weights_import import import_weights

    weights = require_shared_file(shared, "weights/espnet/espnet_p_2_q_3.pth")
    checkpoint = import_weights("espnet", "cityscapes", weights)
    checkpoint.preprocessing = dataclasses.replace(
        checkpoint.preprocessing, input_width=512, input_height=256
    )
    frame = cv2.imread(str(require_shared_file(shared, FRAME)))
    reference = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32")
    converted = SegmentationEngine(
        checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=cache_dir
    )
    assert converted.backend == "openvino" and converted.precision == "fp32"
    a = reference.segment(frame, "bgr", with_confidence=True)
    b = converted.segment(frame, "bgr", with_confidence=True)
    assert b.labels.shape == (1024, 2048)
    assert np.mean(a.labels == b.labels) >= 0.9999
    assert np.abs(a.confidence - b.confidence).max() < 1e-3


def test_openvino_memory_model_follows_torch_over_a_sequence_with_a_reset(
    memory_checkpoint, cache_dir
):
    reference = SegmentationEngine(
        memory_checkpoint, device="cpu", backend="torch", precision="fp32"
    )
    converted = SegmentationEngine(
        memory_checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=cache_dir
    )
    assert converted.backend == "openvino" and converted.is_temporal
    sequence = frames(5)
    outputs = []
    for i, frame in enumerate(sequence):
        if i == 3:
            reference.reset()
            converted.reset()
        a, b = (
            reference.segment(frame, with_confidence=True),
            converted.segment(frame, with_confidence=True),
        )
        # A random tiny model has near-ties (logits almost equal) everywhere: the strict check is
        # the
        # confidence; a label may flip at a tie (1 of 8192 pixels seen).
        assert np.abs(a.confidence - b.confidence).max() < 1e-4, f"frame {i}"
        assert np.mean(a.labels == b.labels) >= 0.999, f"frame {i}"
        outputs.append(b.labels)
    # The memory matters (so the comparison above covers it) and the reset really empties it.
    fresh = SegmentationEngine(
        memory_checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=cache_dir
    )
    assert (
        np.mean(fresh.segment(sequence[2]).labels != outputs[2]) > 0.05
    )  # frames 0-1 in memory changed frame 2
    assert (
        np.mean(fresh.segment(sequence[3]).labels != outputs[3]) > 0.05
    )  # frame 2 in memory, vs none
    fresh.reset()
    assert np.array_equal(fresh.segment(sequence[3]).labels, outputs[3])


def test_openvino_conversion_is_cached_per_model_and_input_size(tmp_path):
    checkpoint = tiny_espnet(size=(64, 32))
    first = SegmentationEngine(
        checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=tmp_path
    )
    entries = list((tmp_path / "openvino").iterdir())
    assert (
        len(entries) == 1
        and (entries[0] / "model.xml").is_file()
        and (entries[0] / "info.json").is_file()
    )
    second = SegmentationEngine(
        checkpoint, device="cpu", backend="openvino", precision="fp32", cache_dir=tmp_path
    )
    assert second._runner.cache_path == first._runner.cache_path
    assert len(list((tmp_path / "openvino").iterdir())) == 1  # found, not converted again
    other = dataclasses.replace(
        checkpoint, preprocessing=dataclasses.replace(checkpoint.preprocessing, input_width=32)
    )
    SegmentationEngine(
        other, device="cpu", backend="openvino", precision="fp32", cache_dir=tmp_path
    )
    assert len(list((tmp_path / "openvino").iterdir())) == 2
    frame = frames(1, 32, 64)[0]
    assert np.array_equal(first.segment(frame).labels, second.segment(frame).labels)


# ---- streams ------------------------------------------------------------------------------------
def test_openvino_runs_several_frames_one_per_request_with_the_labels_of_single_frames(
    cache_dir,
):
    """Several cameras' frames run one frame per request on the throughput model (no batch-N
    model is compiled) and give exactly the labels of one-frame calls; asked for labels only, the
    graph's own maximum gives the same labels as the engine's over the logits; a caller that
    stops iterating early leaves no request running."""
    engine = SegmentationEngine(
        tiny_espnet(size=(128, 64)),
        device="cpu",
        backend="openvino",
        precision="fp32",
        cache_dir=cache_dir,
    )
    shots = frames(5) + frames(1, 48, 96, seed=3)
    together = engine.segment_batch(shots, with_confidence=True, streams=list("abcdef"))
    alone = [engine.segment(frame, with_confidence=True) for frame in shots]
    for single, batched in zip(alone, together):
        np.testing.assert_array_equal(batched.labels, single.labels)
        np.testing.assert_allclose(batched.confidence, single.confidence, atol=1e-5)
    assert set(engine._runner._compiled) == {(1, "LATENCY", False), (1, "THROUGHPUT", False)}

    labels_only = engine.segment_batch(shots, streams=list("abcdef")) + [engine.segment(shots[0])]
    for single, result in zip(alone + alone[:1], labels_only):
        assert result.confidence is None and result.labels.shape == single.labels.shape
        np.testing.assert_array_equal(result.labels, single.labels)
    assert {(1, "LATENCY", True), (1, "THROUGHPUT", True)} <= set(engine._runner._compiled)
    assert len(np.unique(np.concatenate([r.labels.ravel() for r in labels_only]))) > 1

    stopped = engine._runner.run_frames(engine.preprocess(shots[:4]))
    next(stopped)
    stopped.close()
    again = engine.segment_batch(shots[:4], streams=list("abcd"))
    for single, batched in zip(alone, again):
        np.testing.assert_array_equal(batched.labels, single.labels)


def test_a_frame_of_one_stream_never_changes_another_streams_memory(
    memory_engine, memory_checkpoint
):
    camera_a, camera_b = frames(3, seed=1), frames(3, seed=2)
    alone = SegmentationEngine(memory_checkpoint, device="cpu", backend="torch", precision="fp32")
    expected_b = [alone.segment(frame, with_confidence=True).confidence for frame in camera_b]
    memory_engine.reset()
    interleaved = []
    for frame_a, frame_b in zip(camera_a, camera_b):
        memory_engine.segment_batch([frame_a], streams=["a"])
        interleaved.append(
            memory_engine.segment_batch([frame_b], streams=["b"], with_confidence=True)[
                0
            ].confidence
        )
    for got, want in zip(interleaved, expected_b):
        assert np.allclose(got, want, atol=1e-5)
    # ... and one batch holding both cameras' frames gives the same as separate calls.
    memory_engine.reset()
    together = memory_engine.segment_batch(
        [camera_a[0], camera_b[0], camera_a[1], camera_b[1], camera_b[2]],
        streams=["a", "b", "a", "b", "b"],
        with_confidence=True,
    )
    for got, want in zip([together[1], together[3], together[4]], expected_b):
        assert np.allclose(got.confidence, want, atol=1e-5)


def test_resetting_one_stream_leaves_the_others_memory(memory_engine, memory_checkpoint):
    camera = frames(3, seed=3)
    memory_engine.reset()
    for frame in camera[:2]:
        memory_engine.segment_batch([frame, frame], streams=["kept", "reset"])
    memory_engine.reset(stream="reset")
    kept, reset = memory_engine.segment_batch(
        [camera[2], camera[2]], streams=["kept", "reset"], with_confidence=True
    )
    alone = SegmentationEngine(memory_checkpoint, device="cpu", backend="torch", precision="fp32")
    after_reset = alone.segment(camera[2], with_confidence=True).confidence
    assert np.allclose(reset.confidence, after_reset, atol=1e-5)
    assert not np.allclose(kept.confidence, after_reset, atol=1e-3)


def test_streams_of_different_frame_sizes_come_back_at_their_own_sizes(memory_engine):
    small, large = frames(1, 48, 100, seed=4)[0], frames(1, 130, 260, seed=5)[0]
    results = memory_engine.segment_batch(
        [small, large], streams=["front", "rear"], with_confidence=True
    )
    assert results[0].labels.shape == (48, 100) and results[1].labels.shape == (130, 260)
    assert results[1].confidence.shape == (130, 260)
    with pytest.raises(ValueError, match="one key per frame"):
        memory_engine.segment_batch([small, large], streams=["front"])


# ---- start-up errors and fallback ---------------------------------------------------------------
def test_openvino_requested_for_a_model_it_cannot_convert_fails_at_start_up(tmp_path):
    with pytest.raises(BackendError, match=r"could not be exported to ONNX.*erfcx"):
        SegmentationEngine(
            unconvertible_checkpoint(), device="cpu", backend="openvino", cache_dir=tmp_path
        )


def test_auto_falls_back_to_torch_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="video_seg_ros.engine"):
        engine = SegmentationEngine(
            unconvertible_checkpoint(), device="cpu", backend="auto", cache_dir=tmp_path
        )
    assert engine.backend == "torch"
    assert "erfcx" in engine.fallback_reason
    assert any(
        "erfcx" in record.getMessage() and "torch" in record.getMessage()
        for record in caplog.records
    )
    assert engine.segment(frames(1, 32, 64)[0]).labels.shape == (32, 64)


def test_auto_picks_openvino_on_the_cpu_when_it_converts(cache_dir):
    engine = SegmentationEngine(tiny_espnet(), device="cpu", cache_dir=cache_dir)
    assert engine.backend == "openvino" and engine.fallback_reason is None


# ---- TensorRT -----------------------------------------------------------------------------------
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="TensorRT needs a CUDA device; this machine has none"
)
def test_tensorrt_gives_the_torch_labels(tmp_path):
    pytest.importorskip("tensorrt", reason="the tensorrt wheel is not installed")
    checkpoint = tiny_espnet(size=(128, 64))
    reference = SegmentationEngine(checkpoint, device="cuda", backend="torch", precision="fp32")
    built = SegmentationEngine(
        checkpoint, device="cuda", backend="tensorrt", precision="fp32", cache_dir=tmp_path
    )
    for frame in frames(2):
        assert np.mean(reference.segment(frame).labels == built.segment(frame).labels) >= 0.9999


def test_tensorrt_on_the_cpu_is_refused_with_a_clear_message():
    with pytest.raises(BackendError, match="CUDA devices only"):
        SegmentationEngine(tiny_espnet(), device="cpu", backend="tensorrt")


def test_auto_converts_memory_models_to_openvino_like_any_model(memory_checkpoint, cache_dir):
    engine = SegmentationEngine(
        memory_checkpoint, device="cpu", backend="auto", precision="fp32", cache_dir=cache_dir
    )
    assert engine.backend == "openvino" and engine.is_temporal
    assert engine.fallback_reason is None


def test_the_tools_and_the_node_offer_the_engines_backend_and_precision_names():
    import argparse

    from video_seg_ros.backends import BACKENDS
    from video_seg_ros.ros import parameters
    from video_seg_ros.runtime import PRECISIONS
    from video_seg_ros.tools.arguments import add_engine_arguments

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    choices = {action.dest: tuple(action.choices) for action in parser._actions if action.choices}
    assert choices["backend"] == BACKENDS and "tensorrt" in BACKENDS
    assert choices["precision"] == PRECISIONS
    assert parser.parse_args(["--backend", "tensorrt"]).backend == "tensorrt"
    node = {name: tuple(p.choices) for name, p in parameters.PARAMETERS.items() if p.choices}
    assert node["backend"] == BACKENDS and node["precision"] == PRECISIONS
