"""Temporal fusion and the adaptive keyframe clock (video_seg_ros.temporal) through the real
engine.

Tiny random-init ESPNets on 96x48 frames with real OpenCV DIS flow: a confident one (its classifier
scaled so that the softmax is peaked, as a trained model's is) and one with an LMANet memory. The
frames are a smooth texture panning 2 px per frame, so the flow is known and easy. Every engine
runs fp32 explicitly (this CPU has native bf16, which ``auto`` would pick). The node tests at the
end run the real rclpy node in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from checkpoints import random_memory_checkpoint, tiny_espnet
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.labels import CITYSCAPES
from video_seg_ros.metrics import OnlineConsistency
from video_seg_ros.ros.pipeline import StreamPipeline
from video_seg_ros.temporal import TemporalSettings, TemporalSettingsError

HEIGHT, WIDTH = 48, 96
#: Adaptive settings in which only the frame count makes keyframes (apart from start and scene
#: cuts).
COUNT_ONLY = {"keyframe_confidence": 0.0, "keyframe_motion": 0.0, "max_interval_s": 0.0}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def engine(checkpoint, temporal="off", backend="torch", **kwargs) -> SegmentationEngine:
    return SegmentationEngine(
        checkpoint, device="cpu", precision="fp32", backend=backend, temporal=temporal, **kwargs
    )


def _texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(
        rng.integers(0, 256, (HEIGHT + 16, WIDTH + 124, 3), dtype=np.uint8), (0, 0), 3
    )
    return cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)


def panning(count: int, seed: int = 0, start: int = 0) -> list[np.ndarray]:
    """``count`` frames of a camera panning 2 px per frame over a smooth texture."""
    texture = _texture(seed)
    return [
        np.ascontiguousarray(texture[8 : 8 + HEIGHT, start + 2 * i : start + 2 * i + WIDTH])
        for i in range(count)
    ]


def noise(seed: int) -> np.ndarray:
    """A frame unrelated to any other: a scene cut."""
    return np.random.default_rng(1000 + seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


# ---- fusion ------------------------------------------------------------------------------------
def test_fusing_a_static_scene_converges_to_the_per_frame_probabilities(confident):
    frame = panning(1)[0]
    fused = engine(
        confident, {"mode": "fuse", "fusion_weight": 0.7, "label_stickiness": 0.0}
    )  # plain blend
    per_frame = engine(confident)
    expected = per_frame.segment(frame, with_confidence=True)
    first = fused.segment(frame, with_confidence=True)
    assert np.array_equal(first.labels, expected.labels)  # no history yet: the per-frame result
    for _ in range(14):
        result = fused.segment(frame, with_confidence=True)
    assert result.flow is not None and np.abs(result.flow).max() < 0.5  # DIS sees no motion
    logits = per_frame._runner.run(per_frame.preprocess([frame]))
    state = fused.stream_state()
    # 0.3^14 of the first frame's mix is left: the fixed point is the frame's own softmax.
    assert torch.allclose(state.fused, torch.softmax(logits[0].float(), dim=0), atol=1e-4)
    assert np.mean(result.labels == expected.labels) >= 0.999
    assert np.allclose(result.confidence, expected.confidence, atol=1e-3)


@pytest.mark.parametrize(
    "temporal",
    [
        {"mode": "fuse", "fusion_weight": 1.0},
        {"mode": "adaptive", "fusion_weight": 1.0, "max_interval": 1},
        {"mode": "fuse", "fusion_weight": 1.0, "confidence_weighting": True},
    ],
)
def test_fusion_weight_one_gives_exactly_the_per_frame_labels(confident, temporal):
    fused, per_frame = engine(confident, temporal), engine(confident)
    for frame in panning(5):
        result = fused.segment(frame, with_confidence=True)
        expected = per_frame.segment(frame, with_confidence=True)
        assert result.keyframe
        assert np.array_equal(result.labels, expected.labels)
        assert np.array_equal(result.confidence, expected.confidence)
    assert result.flow is not None  # the flow still ran (the online TC reuses it)


def test_fusion_reduces_label_flicker_on_a_noisy_static_scene(confident):
    """Sensor noise on a still camera: per-frame labels flicker, fused labels much less."""
    rng = np.random.default_rng(3)
    still = panning(1)[0].astype(np.float32)
    frames = [
        np.clip(still + rng.normal(0.0, 12.0, still.shape), 0, 255).astype(np.uint8)
        for _ in range(10)
    ]
    changed = {}
    for name, temporal in (("off", "off"), ("fuse", {"mode": "fuse", "fusion_weight": 0.5})):
        segmenter = engine(confident, temporal)
        labels = [segmenter.segment(frame).labels for frame in frames]
        changed[name] = np.mean([np.mean(a != b) for a, b in zip(labels, labels[1:])])
    assert changed["off"] > 0.1, (
        "the per-frame labels do not flicker: the test would prove nothing"
    )
    assert changed["fuse"] < 0.7 * changed["off"], changed


def test_label_stickiness_holds_labels_against_noise_in_fuse_mode_only(confident):
    """Hysteresis on top of the blend: fewer label changes on a noisy still scene; the adaptive
    clock's keyframes are not held back (they correct what propagation let drift)."""
    rng = np.random.default_rng(4)
    still = panning(1)[0].astype(np.float32)
    frames = [
        np.clip(still + rng.normal(0.0, 12.0, still.shape), 0, 255).astype(np.uint8)
        for _ in range(10)
    ]

    def label_changes(temporal):
        segmenter = engine(confident, temporal)
        labels = [segmenter.segment(frame).labels for frame in frames]
        return np.mean([np.mean(a != b) for a, b in zip(labels, labels[1:])]), labels

    plain, _ = label_changes({"mode": "fuse", "fusion_weight": 0.6, "label_stickiness": 0.0})
    sticky, _ = label_changes({"mode": "fuse", "fusion_weight": 0.6, "label_stickiness": 0.2})
    assert plain > 0.02, "the plain blend does not flicker here: the test would prove nothing"
    assert sticky < 0.7 * plain, (sticky, plain)
    adaptive = {"mode": "adaptive", "max_interval": 1, "fusion_weight": 0.6}
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            label_changes({**adaptive, "label_stickiness": 0.0})[1],
            label_changes({**adaptive, "label_stickiness": 0.5})[1],
        )
    )


def test_pixels_the_warp_cannot_explain_take_the_current_frame(confident):
    """After a scene cut the previous probabilities must not leak into the new scene."""
    cut = noise(0)
    expected = engine(confident).segment(cut).labels
    agreement = {}
    for threshold in (24.0, 0.0):  # 0 switches the photometric check off
        # A low weight: wherever the warp is trusted the history dominates.
        fused = engine(
            confident, {"mode": "fuse", "fusion_weight": 0.2, "warp_error_threshold": threshold}
        )
        for frame in panning(3):
            fused.segment(frame)
        agreement[threshold] = np.mean(fused.segment(cut).labels == expected)
    assert agreement[24.0] > 0.9 and agreement[0.0] < 0.6, agreement


def test_frames_too_small_for_optical_flow_are_segmented_on_their_own(confident):
    fused, per_frame = engine(confident, "adaptive"), engine(confident)
    for frame in [noise(0)[:8, :10]] * 3:  # DIS needs 12 pixels a side
        result = fused.segment(frame)
        assert result.keyframe and result.flow is None
        assert np.array_equal(result.labels, per_frame.segment(frame).labels)


# ---- resets -------------------------------------------------------------------------------------
def _fill(pipeline: StreamPipeline, frames, stamp: float = 10.0) -> float:
    for frame in frames:
        stamp += 0.05
        pipeline.segment(Frame(frame, "rgb", "rgb8"), stamp)
    return stamp


def _assert_has_history(state):
    """After 4 frames with ADAPTIVE_EVERY_OTHER: keyframes 0 and 2 in the memory, frame 3
    warped."""
    assert len(state.memory) == 2 and state.previous_grey is not None and state.fused is not None
    assert state.flow is not None and state.frames == 4 and state.frames_since_keyframe == 1
    assert state.last_keyframe_stamp is not None


ADAPTIVE_EVERY_OTHER = {
    "mode": "adaptive",
    "max_interval": 2,
    "keyframe_error_share": 1.0,
    **COUNT_ONLY,
}


@pytest.mark.parametrize("kind", ["engine_reset_stream", "engine_reset_all"])
def test_an_engine_reset_clears_every_part_of_the_stream_state(memory_checkpoint, kind):
    segmenter = engine(memory_checkpoint, ADAPTIVE_EVERY_OTHER)
    pipeline = StreamPipeline(segmenter, stream="front")
    _fill(pipeline, panning(4))
    state = segmenter.stream_state("front")
    _assert_has_history(state)
    segmenter.reset("front" if kind == "engine_reset_stream" else None)
    assert len(state.memory) == 0
    assert (
        state.previous_grey,
        state.fused,
        state.flow,
        state.frame_size,
        state.last_keyframe_stamp,
    ) == (None, None, None, None, None)
    assert state.frames == state.frames_since_keyframe == 0
    assert segmenter.temporal_stats("front")["frames"] == 4  # diagnostics outlive resets


@pytest.mark.parametrize("kind", ["service", "time_backwards", "gap", "size_change"])
def test_every_pipeline_reset_clears_the_whole_state_and_the_next_frame_starts_fresh(
    memory_checkpoint, kind
):
    segmenter = engine(memory_checkpoint, ADAPTIVE_EVERY_OTHER)
    consistency = OnlineConsistency(len(CITYSCAPES.names), max_width=64)
    pipeline = StreamPipeline(segmenter, reset_gap_s=1.0, consistency=consistency, stream="front")
    frames = panning(5)
    stamp = _fill(pipeline, frames[:4])
    for frame in frames[:4]:
        pipeline.measure(Frame(frame, "rgb", "rgb8"), np.zeros((HEIGHT, WIDTH), np.uint8))
    _assert_has_history(segmenter.stream_state("front"))
    assert consistency.pairs == 3
    last, stamp = frames[4], stamp + 0.05
    if kind == "service":
        pipeline.request_reset("service", "asked")
    elif kind == "time_backwards":
        stamp -= 5.0
    elif kind == "gap":
        stamp += 3.0
    else:
        last = cv2.resize(last, (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    result = pipeline.segment(Frame(last, "rgb", "rgb8"), stamp)
    assert result.reset is not None and result.reset[0] == kind
    state = segmenter.stream_state("front")
    # Only the frame after the reset is in the state: one memory entry, a keyframe, no flow.
    assert (state.frames, state.frames_since_keyframe, len(state.memory)) == (1, 0, 1)
    assert result.keyframe and result.flow is None and state.last_keyframe_stamp == stamp
    assert consistency.pairs == 0
    fresh = engine(memory_checkpoint, ADAPTIVE_EVERY_OTHER).segment(last).labels
    assert np.array_equal(result.labels, fresh)


def test_a_reset_of_one_camera_leaves_the_other_cameras_state_alone(memory_checkpoint):
    segmenter = engine(memory_checkpoint, ADAPTIVE_EVERY_OTHER)
    front = StreamPipeline(segmenter, reset_gap_s=1.0, stream="front")
    left = StreamPipeline(segmenter, reset_gap_s=1.0, stream="left")
    stamp = _fill(front, panning(4))
    _fill(left, panning(4, seed=5))
    state = segmenter.stream_state("left")
    _assert_has_history(state)
    before = (
        state.fused.clone(),
        state.previous_grey.copy(),
        state.frames,
        state.frames_since_keyframe,
        len(state.memory),
        [f.keys.clone() for f in state.memory.frames],
    )
    front.segment(Frame(panning(1)[0], "rgb", "rgb8"), stamp - 5.0)  # time jump on front
    small = cv2.resize(panning(1)[0], (WIDTH // 2, HEIGHT // 2))
    front.segment(Frame(small, "rgb", "rgb8"), stamp)  # size change on front
    front.request_reset("service", "front only")
    front.segment(Frame(small, "rgb", "rgb8"), stamp + 0.05)
    assert segmenter.stream_state("front").frames == 1
    assert torch.equal(state.fused, before[0]) and np.array_equal(state.previous_grey, before[1])
    assert (state.frames, state.frames_since_keyframe, len(state.memory)) == before[2:5]
    assert all(torch.equal(f.keys, k) for f, k in zip(state.memory.frames, before[5]))


# ---- the adaptive clock -------------------------------------------------------------------------
def test_adaptive_clock_runs_the_network_at_start_every_max_interval_on_a_cut_and_after_a_reset(
    confident,
):
    segmenter = engine(confident, {"mode": "adaptive", "max_interval": 4, **COUNT_ONLY})
    frames = panning(8)
    keyframes = [segmenter.segment(frame).keyframe for frame in frames]
    assert keyframes == [True, False, False, False, True, False, False, False]
    stats = segmenter.temporal_stats()
    assert (stats["frames"], stats["keyframes"], stats["keyframe_share"]) == (8, 2, 0.25)
    assert stats["reasons"] == {"start": 1, "interval": 1}
    segmenter.reset()
    for frame in frames[:2]:
        segmenter.segment(frame)
    assert segmenter.segment(noise(1)).keyframe  # a scene cut, 2 frames after a keyframe
    assert segmenter.temporal_stats()["reasons"]["scene_change"] == 1
    segmenter.segment(frames[0])  # also a cut (back to the pan), so the clock restarts here
    assert not segmenter.segment(frames[0]).keyframe
    segmenter.reset()
    assert segmenter.segment(frames[1]).keyframe
    assert segmenter.temporal_stats()["reasons"]["start"] == 3
    # Every frame got an output at its own size, network or not.
    assert segmenter.segment(frames[2]).labels.shape == (HEIGHT, WIDTH)


def test_adaptive_clock_time_limit_follows_the_frame_stamps(confident):
    segmenter = engine(
        confident,
        {
            "mode": "adaptive",
            "max_interval": 100,
            "keyframe_confidence": 0.0,
            "keyframe_motion": 0.0,
            "max_interval_s": 0.25,
        },
    )
    keyframes = [
        segmenter.segment(frame, stamp=0.1 * i).keyframe for i, frame in enumerate(panning(7))
    ]
    assert keyframes == [True, False, False, True, False, False, True]
    assert segmenter.segment(panning(8)[7], stamp=0.0).keyframe  # time went backwards: a new start
    stats = segmenter.temporal_stats()
    assert stats["reasons"]["time"] == 2 and stats["reasons"]["start"] == 2
    assert stats["resets"] == {"time_backwards": 1}


def test_low_predicted_confidence_makes_a_keyframe(confident):
    demanding = {
        "mode": "adaptive",
        "max_interval": 100,
        "keyframe_motion": 0.0,
        "max_interval_s": 0.0,
        "keyframe_confidence": 0.99,
    }  # above any warped confidence of this model
    segmenter = engine(confident, demanding)
    assert all(segmenter.segment(frame).keyframe for frame in panning(3))
    assert segmenter.temporal_stats()["reasons"] == {"start": 1, "confidence": 2}


# ---- memory models and backends -----------------------------------------------------------------
def test_memory_model_memory_lives_in_the_stream_state_and_follows_the_clock(memory_checkpoint):
    frames = panning(5)
    plain = engine(memory_checkpoint)
    exact = engine(memory_checkpoint, {"mode": "fuse", "fusion_weight": 1.0})
    for frame in frames:
        assert np.array_equal(exact.segment(frame).labels, plain.segment(frame).labels)
    fresh = engine(memory_checkpoint).segment(frames[-1]).labels
    assert not np.array_equal(plain.segment(frames[-1]).labels, fresh), "memory has no effect here"
    fused = engine(memory_checkpoint, {"mode": "fuse", "fusion_weight": 0.7})
    results = [fused.segment(frame) for frame in frames]
    assert len(fused.stream_state().memory) == 2 and all(r.keyframe for r in results)
    # Adaptive: the memory sees keyframes only.
    adaptive = engine(memory_checkpoint, {"mode": "adaptive", "max_interval": 3, **COUNT_ONLY})
    for frame in frames[:3]:
        adaptive.segment(frame)
    assert len(adaptive.stream_state().memory) == 1
    adaptive.segment(frames[3])
    assert len(adaptive.stream_state().memory) == 2


@pytest.fixture(scope="session")
def openvino_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino_conversions")


@pytest.mark.openvino
def test_openvino_with_fusion_gives_the_torch_labels(confident, openvino_cache):
    pytest.importorskip("openvino", reason="openvino is not installed (requirements.txt pins it)")
    settings = {"mode": "fuse", "fusion_weight": 0.7}
    reference = engine(confident, settings)
    converted = engine(confident, settings, backend="openvino", cache_dir=openvino_cache)
    assert converted.backend == "openvino"
    for frame in panning(5) + [noise(2)]:
        a, b = (
            reference.segment(frame, with_confidence=True),
            converted.segment(frame, with_confidence=True),
        )
        assert np.mean(a.labels == b.labels) >= 0.999
        assert np.abs(a.confidence - b.confidence).max() < 1e-3
    assert converted.temporal_stats()["keyframes"] == 6


@pytest.mark.openvino
def test_openvino_memory_model_with_adaptive_clock_follows_torch(openvino_cache):
    pytest.importorskip("openvino", reason="openvino is not installed (requirements.txt pins it)")
    checkpoint = random_memory_checkpoint()  # 64x32: once a SIGFPE in the exporter (test_export)
    settings = {"mode": "adaptive", "max_interval": 2, "fusion_weight": 0.7, **COUNT_ONLY}
    reference = engine(checkpoint, settings)
    converted = engine(checkpoint, settings, backend="openvino", cache_dir=openvino_cache)
    for frame in panning(5):
        a, b = reference.segment(frame), converted.segment(frame)
        assert a.keyframe == b.keyframe
        assert np.mean(a.labels == b.labels) >= 0.999
    assert len(converted.stream_state().memory) == 2  # keyframes 0, 2, 4; memory length 2
    converted.reset()
    assert len(converted.stream_state().memory) == 0


# ---- the online TC reuses the fusion's flow -----------------------------------------------------
def test_online_tc_reuses_the_fusion_flow_instead_of_computing_a_second_one(confident):
    frames = [Frame(frame, "rgb", "rgb8") for frame in panning(6)]
    measured = {}
    for mode in ("off", "fuse"):
        consistency = OnlineConsistency(len(CITYSCAPES.names), stride=1, max_width=64)
        segmenter = engine(confident, {"mode": mode, "fusion_weight": 1.0})
        pipeline = StreamPipeline(segmenter, consistency=consistency)
        for i, frame in enumerate(frames):
            result = pipeline.segment(frame, 1.0 + 0.05 * i)
            pipeline.measure(frame, result.labels, result.flow)
        measured[mode] = (consistency.pairs, consistency.flows_computed, consistency.running_tc)
    assert measured["off"][:2] == (5, 5)  # no fusion: the metric computes its own flow
    assert measured["fuse"][:2] == (5, 0)  # fusion: one flow per frame, shared
    # Same labels (weight 1), flows of the same motion: the same TC within flow noise.
    assert abs(measured["off"][2] - measured["fuse"][2]) < 0.05, measured


# ---- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, named",
    [
        ("blend", "mode"),
        ({"fusion_weight": 1.5}, "fusion_weight"),
        ({"max_interval": 0}, "max_interval"),
        ({"flow_width": 8}, "flow_width"),
        ({"flow_preset": "slow"}, "flow_preset"),
        ({"keyframe_error_share": -0.1}, "keyframe_error_share"),
        ({"max_interval_s": -1.0}, "max_interval_s"),
        ({"confidence_weighting": "yes"}, "confidence_weighting"),
        ({"weight": 0.5}, "weight"),
        ({"label_stickiness": 1.5}, "label_stickiness"),
        ({"keyframe_lag": -1}, "keyframe_lag"),
        ({"keyframe_lag": 1.5}, "keyframe_lag"),
    ],
)
def test_bad_temporal_settings_are_refused_naming_the_setting(confident, value, named):
    with pytest.raises(TemporalSettingsError, match=rf"^{named} ") as error:
        engine(confident, value)
    assert error.value.field == named
    running = engine(confident, "fuse")
    with pytest.raises(ValueError, match=named):
        running.set_temporal(value)
    assert running.temporal == TemporalSettings(mode="fuse")  # the old settings stay


def test_settings_change_at_run_time_from_the_next_frame(confident):
    segmenter = engine(confident)
    frames = panning(4)
    assert segmenter.segment(frames[0]).flow is None
    segmenter.set_temporal({"mode": "adaptive", "max_interval": 10, **COUNT_ONLY})
    assert segmenter.temporal.mode == "adaptive"
    assert segmenter.segment(frames[1]).keyframe  # no fused state from mode off: a fresh start
    assert not segmenter.segment(frames[2]).keyframe
    segmenter.set_temporal(segmenter.temporal.replace(fusion_weight=0.5))  # keeps the fused state
    assert not segmenter.segment(frames[3]).keyframe
    segmenter.set_temporal(
        segmenter.temporal.replace(probability_width=32)
    )  # another grid: restart
    result = segmenter.segment(frames[3])
    assert result.keyframe and segmenter.stream_state().fused.shape[-1] == 32
    segmenter.set_temporal("off")
    assert segmenter.segment(frames[0]).flow is None and segmenter.stream_state().fused is None


# ---- the evaluator and video-seg-eval -----------------------------------------------------------
def _write_two_sequences(root) -> Path:
    """seqA frames 0..3 and seqB frames 0..1 (CamVid-style names), panning."""
    for name, count, seed in (("seqA", 4, 0), ("seqB", 2, 7)):
        for number, frame in enumerate(panning(count, seed=seed)):
            path = root / "images" / f"{name}_{number:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return root / "images"


def test_evaluator_restarts_the_temporal_state_at_every_sequence_and_reports_the_network_share(
    tmp_path, confident
):
    from video_seg_ros.evaluation_report import evaluate_folder

    images = _write_two_sequences(tmp_path)
    segmenter = engine(confident, {"mode": "adaptive", "max_interval": 3, **COUNT_ONLY})
    report = evaluate_folder(segmenter, images, progress=False)
    # seqA: K n n K, seqB: K n (a fresh start, not the 2nd frame after seqA's keyframe).
    assert [row["keyframe"] for row in report["per_frame"]] == [
        True,
        False,
        False,
        True,
        True,
        False,
    ]
    assert report["keyframe_share"] == 0.5 and report["temporal"]["mode"] == "adaptive"
    assert segmenter.temporal_stats()["reasons"] == {"start": 2, "interval": 1}


def test_video_seg_eval_takes_the_temporal_options(tmp_path, confident, capsys):
    from video_seg_ros.tools.evaluate import main

    images, checkpoint = _write_two_sequences(tmp_path), confident.save(tmp_path / "confident.pt")
    common = [
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(images),
        "--backend",
        "torch",
        "--precision",
        "fp32",
        "-q",
    ]
    assert (
        main(
            [
                *common,
                "--temporal",
                "adaptive",
                "--keyframe-max-interval",
                "2",
                "--fusion-weight",
                "0.6",
                "-o",
                str(tmp_path / "report.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["temporal"]["fusion_weight"] == 0.6 and report["temporal"]["max_interval"] == 2
    keyframes = [row["keyframe"] for row in report["per_frame"]]
    assert keyframes[0] and keyframes[4]  # both sequences start with the network
    assert not any(
        not a and not b for a, b in zip(keyframes, keyframes[1:])
    )  # never 2 without network
    assert 0.5 <= report["keyframe_share"] < 1.0
    assert "Temporal adaptive" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_status:
        main([*common, "--fusion-weight", "1.5"])
    assert exit_status.value.code == 2
    assert "--fusion-weight must be between 0 and 1" in capsys.readouterr().err


# ---- the node (real rclpy, in this process) -----------------------------------------------------
@pytest.fixture(scope="module")
def ros_context(tmp_path_factory):
    """rclpy in a private context, and the tiny checkpoint the nodes load."""
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    import rclpy
    from rclpy.context import Context

    from ros_support import configure_this_process, session_domain_id

    configure_this_process()
    checkpoint = str(
        tiny_espnet(size=(64, 32)).save(tmp_path_factory.mktemp("node_temporal") / "tiny.pt")
    )
    context = Context()
    rclpy.init(context=context, domain_id=session_domain_id())
    try:
        yield context, checkpoint
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def ros(ros_context):
    """``start(node_class, **parameters)``: a node of this test, destroyed after it."""
    from rclpy.parameter import Parameter

    context, checkpoint = ros_context
    nodes = []

    def start(node_class, **parameters):
        values = {
            "checkpoint": checkpoint,
            "device": "cpu",
            "backend": "torch",
            "precision": "fp32",
            "cpu_threads": 1,
            **parameters,
        }
        overrides = [Parameter(name, value=value) for name, value in values.items()]
        node = node_class(context=context, parameter_overrides=overrides)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.destroy_node()


@pytest.mark.ros
def test_node_refuses_bad_temporal_parameters_at_start_up_naming_them(ros):
    from video_seg_ros.ros.node import StartupError, VideoSegNode

    with pytest.raises(StartupError, match="temporal_mode must be one of off, fuse, adaptive"):
        ros(VideoSegNode, temporal_mode="blend")
    with pytest.raises(StartupError, match="fusion_flow_width must be 0 .* or at least 16"):
        ros(VideoSegNode, fusion_flow_width=8)
    with pytest.raises(StartupError, match="fusion_weight"):
        ros(VideoSegNode, fusion_weight=1.5)


@pytest.mark.ros
def test_node_changes_temporal_settings_at_run_time_and_refuses_bad_values(ros):
    from rclpy.parameter import Parameter

    from video_seg_ros.ros.node import VideoSegNode

    node = ros(VideoSegNode, temporal_mode="fuse", fusion_weight=0.6)
    assert node.engine.temporal.mode == "fuse" and node.engine.temporal.fusion_weight == 0.6
    for name, value, reason in (
        ("fusion_weight", 1.5, ""),
        ("keyframe_max_interval", 0, ""),
        ("keyframe_lag", -1, ""),
        ("fusion_flow_width", 8, "fusion_flow_width must be 0"),
        ("temporal_mode", "blend", "temporal_mode must be one of"),
    ):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and reason in result.reason, (name, result.reason)
        assert node.get_parameter(name).value != value  # the old value is kept
    assert node.engine.temporal.fusion_weight == 0.6
    result = node.set_parameters(
        [
            Parameter("temporal_mode", value="adaptive"),
            Parameter("keyframe_max_interval", value=3),
            Parameter("keyframe_lag", value=2),
        ]
    )
    assert all(r.successful for r in result)
    temporal = node.engine.temporal
    assert (temporal.mode, temporal.max_interval, temporal.keyframe_lag) == ("adaptive", 3, 2)
    # `ros2 param set ... temporal_mode off` and `-p temporal_mode:=off` arrive as YAML's false.
    assert node.set_parameters([Parameter("temporal_mode", value=False)])[0].successful
    assert node.engine.temporal.mode == "off"
    assert not node.set_parameters([Parameter("temporal_mode", value=True)])[0].successful
    assert ros(VideoSegNode, temporal_mode=False).engine.temporal.mode == "off"


@pytest.mark.ros
def test_node_fuses_shares_the_flow_with_the_online_tc_and_warns_about_flicker(ros):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from ros_support import RosProbe, diagnostics_values, image_message
    from video_seg_ros.ros.node import VideoSegNode

    node = ros(
        VideoSegNode,
        temporal_mode="fuse",
        consistency_stride=1,
        flicker_tc_threshold=0.99,
        diagnostics_period_s=0.2,
        input_qos="reliable",
        frame_queue_size=20,
    )
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    spinning = True

    def spin():
        while spinning:
            executor.spin_once(timeout_sec=0.05)

    import threading

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        with RosProbe("temporal_probe") as probe:
            labels = probe.collect(Image, "/video_seg_node/labels")
            diagnostics = probe.collect(DiagnosticArray, "/diagnostics")
            publisher = probe.publisher(Image, "/image", 10)
            assert probe.wait_for_subscriber(publisher)
            # The node skips frames nobody subscribed to: wait until it sees the probe's
            # subscription.
            outputs = node.cameras[0].publishers["labels"]
            assert probe.wait_for(lambda: outputs.get_subscription_count() > 0, 20.0)
            frames = [noise(i) for i in range(6)]  # unrelated frames: labels flicker, TC is low
            # reliable QoS and a 20-frame queue: every frame arrives without pacing
            for i, frame in enumerate(frames):
                publisher.publish(image_message(frame, "rgb8", 100.0 + 0.05 * i))
            assert probe.wait_for(lambda: len(labels) == len(frames), 30.0), (
                f"{len(labels)} labels"
            )

            def flicker_status():
                for array in reversed(list(diagnostics)):
                    values = diagnostics_values(array)
                    flickering = values and values["_message"].startswith("flicker")
                    if flickering and values["recent_tc_pairs"] == "5":
                        return values
                return None

            status = probe.wait_for(flicker_status, 10.0)
            assert status is not None, [diagnostics_values(a) for a in diagnostics[-2:]]
            assert status["_level"] == 1 and status["temporal_mode"] == "fuse"
            assert status["keyframe_share"] == "1.00"
            # the mean of a max softmax over 20 outputs: between 1/20 and 1
            assert 1 / 20 <= float(status["fused_confidence"]) <= 1.0
            consistency = node.cameras[0].pipeline.consistency
            assert consistency.pairs == 5 and consistency.flows_computed == 0  # one flow per frame
    finally:
        spinning = False
        thread.join(timeout=5.0)
        executor.shutdown()


@pytest.mark.ros
def test_lifecycle_deactivate_clears_the_cameras_temporal_state(ros):
    pytest.importorskip("lifecycle_msgs", reason="lifecycle_msgs is not installed")
    from video_seg_ros.image_encoding import Frame as NodeFrame
    from video_seg_ros.ros.lifecycle_node import VideoSegLifecycleNode

    node = ros(VideoSegLifecycleNode, temporal_mode="fuse")
    node.trigger_configure()
    node.trigger_activate()
    pipeline = node.cameras[0].pipeline
    for i, frame in enumerate(panning(3)):  # the worker's job, done here: no DDS needed
        pipeline.segment(NodeFrame(frame, "rgb", "rgb8"), 5.0 + 0.05 * i)
    state = node.engine.stream_state(pipeline.stream)
    assert state.frames == 3 and state.fused is not None
    node.trigger_deactivate()
    assert state.frames == 0 and state.fused is None and state.previous_grey is None
    assert node.cameras[0].stats.snapshot()["resets_by_reason"] == {"deactivate": 1}
    node.trigger_cleanup()
