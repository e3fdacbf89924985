"""Denormal flush and precision choice of SegmentationEngine on the torch backend: none of these
needs OpenVINO (the OpenVINO bf16 test stays in test_backends.py).

The CPU-capability probe is set through ``runtime.NATIVE_BF16_ENV``, so both answers are tested on
any CPU; bf16 is asserted by agreement with fp32, never by equality.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import torch

from checkpoints import near_tie_espnet, tiny_espnet, unconvertible_checkpoint
from video_seg_ros import runtime
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.runtime import PrecisionError


def noise_frames(
    count: int, height: int = 64, width: int = 128, seed: int = 0
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


# ---- denormals ----------------------------------------------------------------------------------
def denormals_survive() -> bool:
    """Whether this thread (and its OpenMP team: the tensor is large enough to be split) keeps
    denormals."""
    big = torch.full((1 << 20,), 3e-39)
    return bool((torch.tensor([1e-40]) * 1.0).item() != 0.0) or bool(((big * 1.0) != 0).any())


@pytest.fixture
def unflushed():
    """This thread with denormals computed (skips where the CPU cannot flush them); flushed
    after."""
    if not runtime.flush_denormals(False):
        pytest.skip("this CPU cannot flush denormals (no DAZ/FTZ)")
    yield
    runtime.flush_denormals(True)


def test_engine_creation_flushes_denormals_in_the_thread_and_its_openmp_team(unflushed):
    assert denormals_survive()
    SegmentationEngine(tiny_espnet(), device="cpu", backend="torch")
    assert not denormals_survive()


def test_segmenting_in_a_worker_thread_flushes_denormals_there(unflushed):
    engine = SegmentationEngine(tiny_espnet(), device="cpu", backend="torch")
    seen = {}

    def worker():
        runtime.flush_denormals(False)
        seen["before"] = denormals_survive()
        engine.segment(noise_frames(1, 32, 64)[0])
        seen["after"] = denormals_survive()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"before": True, "after": False}


def test_engine_can_leave_denormals_alone_for_measuring_the_unflushed_path(unflushed):
    engine = SegmentationEngine(
        tiny_espnet(), device="cpu", backend="torch", flush_denormals=False
    )
    engine.segment(noise_frames(1, 32, 64)[0])
    assert denormals_survive()


# ---- precision ----------------------------------------------------------------------------------
@pytest.fixture(params=[False, True], ids=["no-native-bf16", "native-bf16"])
def bf16_probe(request, monkeypatch):
    """The CPU-capability probe answering no / yes (what ``auto`` decides on), on any CPU."""
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1" if request.param else "0")
    return request.param


def test_bf16_is_refused_on_a_cpu_without_native_bf16_and_auto_means_fp32(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "0")
    refusal = r"native bf16 \(AMX-BF16 or AVX512-BF16\).*emulated.*'fp32' or 'auto'"
    with pytest.raises(PrecisionError, match=refusal):
        SegmentationEngine(tiny_espnet(), device="cpu", backend="torch", precision="bf16")
    engine = SegmentationEngine(tiny_espnet(), device="cpu", backend="torch", cache_dir=tmp_path)
    assert engine.precision == "fp32"
    assert engine.precision_decision.reason.startswith("auto: fp32 on ")
    assert "no native bf16" in engine.describe()["cpu"]
    assert not (tmp_path / "precision").exists()  # nothing to gate


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(PrecisionError, match="CUDA only"):
        SegmentationEngine(tiny_espnet(), device="cpu", backend="torch", precision="fp16")


def test_auto_keeps_bf16_only_where_it_passes_the_gate_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1")
    kept = SegmentationEngine(
        tiny_espnet(size=(128, 64)),
        device="cpu",
        backend="torch",
        cache_dir=tmp_path,
        min_agreement=0.9,
    )
    assert kept.precision == "bf16" and kept.precision_decision.fallback is None
    assert kept.precision_decision.agreement >= 0.9
    assert "calibration frames" in kept.precision_decision.reason
    exact = SegmentationEngine(
        tiny_espnet(size=(128, 64)), device="cpu", backend="torch", precision="fp32"
    )
    for frame in noise_frames(2):
        a, b = (
            exact.segment(frame, with_confidence=True),
            kept.segment(frame, with_confidence=True),
        )
        assert np.mean(a.labels == b.labels) >= 0.9
        assert np.abs(a.confidence - b.confidence).max() < 0.05

    refused = SegmentationEngine(
        near_tie_espnet(size=(128, 64)), device="cpu", backend="torch", cache_dir=tmp_path
    )
    decision = refused.precision_decision
    assert refused.precision == "fp32" and decision.requested == "auto"
    assert decision.agreement < 0.9 and "below the 99.0% gate; running fp32" in decision.fallback
    assert refused.describe()["precision_fallback"] == decision.fallback


def test_an_explicit_bf16_below_the_gate_still_runs_and_warns(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="video_seg_ros.precision"):
        engine = SegmentationEngine(
            near_tie_espnet(), device="cpu", backend="torch", precision="bf16", cache_dir=tmp_path
        )
    assert engine.precision == "bf16" and engine.precision_decision.fallback is None
    assert any("below the 99.0% gate" in record.getMessage() for record in caplog.records)
    assert engine.segment(noise_frames(1, 32, 64)[0]).labels.shape == (32, 64)


def test_the_gate_decision_is_cached_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1")
    first = SegmentationEngine(
        tiny_espnet(), device="cpu", backend="torch", cache_dir=tmp_path, min_agreement=0.5
    )
    (entry,) = (tmp_path / "precision").iterdir()
    assert json.loads(entry.read_text())["agreement"] == pytest.approx(
        first.precision_decision.agreement
    )
    # A second engine reads the stored figure instead of measuring (the edited figure proves it).
    entry.write_text(json.dumps({"agreement": 0.25, "precision": "bf16", "frames": 4}))
    second = SegmentationEngine(
        tiny_espnet(), device="cpu", backend="torch", cache_dir=tmp_path, min_agreement=0.5
    )
    assert second.precision == "fp32" and "25.00%" in second.precision_decision.fallback


def test_a_model_without_a_bf16_kernel_runs_fp32_under_auto_and_never_raises(
    bf16_probe, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING):
        engine = SegmentationEngine(
            unconvertible_checkpoint(), device="cpu", backend="auto", cache_dir=tmp_path
        )
    assert (engine.backend, engine.precision) == ("torch", "fp32")
    fallback = engine.precision_decision.fallback
    if bf16_probe:  # fp32 chosen at construction, with the reason logged and reported
        assert "erfcx" in fallback and "running fp32" in fallback
        assert any(
            "bf16 cannot run this model" in record.getMessage() for record in caplog.records
        )
    else:
        assert fallback is None
    for frame in noise_frames(3, 32, 64):
        assert engine.segment(frame).labels.shape == (32, 64)


def test_an_explicit_bf16_that_cannot_run_the_model_fails_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.NATIVE_BF16_ENV, "1")
    refusal = r"'bf16' cannot run this model here.*erfcx.*'fp32' or 'auto'"
    with pytest.raises(PrecisionError, match=refusal):
        SegmentationEngine(
            unconvertible_checkpoint(),
            device="cpu",
            backend="torch",
            precision="bf16",
            cache_dir=tmp_path,
        )


def test_default_calibration_frames_are_generated_once_and_read_back(monkeypatch, tmp_path):
    """The synthetic calibration frames are kept in the cache folder (a node's start no longer
    generates them); a damaged file is made again."""
    from video_seg_ros import precision
    from video_seg_ros.synthetic import generator

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    precision._synthetic_frames.cache_clear()
    made = precision.calibration_frames(96, 48)
    (stored,) = (tmp_path / "video_seg_ros" / "calibration").glob("synthetic-*.npz")
    assert len(made) == len(precision.CALIBRATION_SEEDS) and made[0].shape == (48, 96, 3)

    def no_generator(*args, **kwargs):
        raise AssertionError("the calibration frames were generated again")

    monkeypatch.setattr(generator, "generate_sequence", no_generator)
    precision._synthetic_frames.cache_clear()
    for read, original in zip(precision.calibration_frames(96, 48), made, strict=True):
        np.testing.assert_array_equal(read, original)

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stored.write_bytes(b"not an npz")
    precision._synthetic_frames.cache_clear()
    for again, original in zip(precision.calibration_frames(96, 48), made, strict=True):
        np.testing.assert_array_equal(again, original)
    precision._synthetic_frames.cache_clear()  # other tests see their own cache folder
