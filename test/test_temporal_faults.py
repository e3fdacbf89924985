"""Temporal state under faults, at engine level (no ROS): cameras never mix, and a stream's whole
state (model memory, fused probabilities, keyframe clock) is dropped when its time runs backwards
(a looping bag: never fuse across the loop), its frame size changes, it goes stale and returns, or
a reset is asked for.

"Dropped" is checked the strict way: the frame after the fault gives exactly the labels and
confidence a fresh stream gives that frame, and it is a keyframe that started afresh. Real tiny
models: a random-init ESPNet with a random LMANet memory (memory visibly changes labels) and a
confident ESPNet for fusion; real OpenCV DIS flow on a panning texture.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from checkpoints import random_memory_checkpoint, tiny_espnet
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.ros.pipeline import OutputRequest, ResetPolicy, StreamPipeline
from video_seg_ros.temporal import GUARD_REASONS

HEIGHT, WIDTH = 48, 96
#: (name, temporal mode, memory model?) of every engine the faults are checked on.
SETUPS = [
    ("memory", "off", True),
    ("fuse", "fuse", False),
    ("adaptive", "adaptive", False),
    ("memory+fuse", "fuse", True),
]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _confident_checkpoint():
    checkpoint = tiny_espnet(size=(64, 32))
    checkpoint.state_dict["classifier.weight"] = checkpoint.state_dict["classifier.weight"] * 300.0
    return checkpoint


@pytest.fixture(scope="module", params=SETUPS, ids=[setup[0] for setup in SETUPS])
def engine(request):
    _, mode, memory = request.param
    # Adaptive: only the frame count (every 3rd) and the stream start make keyframes, so that a
    # frame after a fault is a keyframe only because the state was dropped.
    temporal = (
        {
            "mode": mode,
            "max_interval": 3,
            "keyframe_confidence": 0.0,
            "keyframe_motion": 0.0,
            "max_interval_s": 0.0,
            "keyframe_error_share": 1.0,
        }
        if mode == "adaptive"
        else mode
    )
    checkpoint = random_memory_checkpoint() if memory else _confident_checkpoint()
    return SegmentationEngine(
        checkpoint, device="cpu", precision="fp32", backend="torch", temporal=temporal
    )


def panning(count, seed=0, size=(HEIGHT, WIDTH), start=0):
    """``count`` frames of a camera panning 2 px per frame over a smooth texture."""
    height, width = size
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(
        rng.integers(0, 256, (height + 16, width + 2 * count + start + 8, 3), dtype=np.uint8),
        (0, 0),
        3,
    )
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    return [
        np.ascontiguousarray(texture[8 : 8 + height, start + 2 * i : start + 2 * i + width])
        for i in range(count)
    ]


def run(engine, stream, frame, stamp=None):
    return engine.segment_batch(
        [frame],
        "rgb",
        with_confidence=True,
        streams=[stream],
        stamps=None if stamp is None else [stamp],
    )[0]


def fresh(engine, frame, stamp=None):
    """What a stream that never saw a frame gives ``frame``."""
    return run(engine, object(), frame, stamp)  # a new key: a stream of its own


def through(pipeline, frame, stamp):
    """One frame through a camera's pipeline (its reset policy first), with confidence."""
    return pipeline.segment(Frame(frame, "rgb", "rgb8"), stamp, OutputRequest(confidence=True))


def same(a, b) -> bool:
    return np.array_equal(a.labels, b.labels) and np.allclose(
        a.confidence, b.confidence, atol=1e-6
    )


def warm(engine, stream, frames, stamps):
    """Segment ``frames``; returns the results (the history the fault must then forget)."""
    return [run(engine, stream, frame, stamp) for frame, stamp in zip(frames, stamps)]


def history_matters(engine, frames, stamps, probe):
    """The stream's state changes the result of ``probe`` (else a reset could not be seen)."""
    warm(engine, "history", frames, stamps)
    changed = not same(run(engine, "history", probe, stamps[-1] + 0.05), fresh(engine, probe))
    engine.reset("history")
    return changed


def test_cameras_never_mix_state(engine):
    a, b = panning(8, seed=0), panning(8, seed=5, size=(40, 72))
    alone = [run(engine, "a_alone", frame, 0.05 * i) for i, frame in enumerate(a)]
    mixed = []
    for i in range(8):
        mixed.append(run(engine, "a", a[i], 0.05 * i))
        run(
            engine, "b", b[i], 100.0 - i
        )  # another camera, another size, its stamps going backwards
    assert all(same(x, y) for x, y in zip(alone, mixed))
    # Batched together (one network call for both cameras): the same per-camera histories (up to
    # the float rounding of a batch of two).
    engine.reset()
    together = [
        engine.segment_batch(
            [a[i], b[i]], "rgb", True, streams=["a", "b"], stamps=[0.05 * i, 1.0]
        )[0]
        for i in range(8)
    ]
    # A shared OpenCV DIS object once carried buffers from camera b's frame size into camera a's
    # flow (3 % of a's labels changed); each stream now has its own.
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(alone, together))
    assert all(np.allclose(x.confidence, y.confidence, atol=1e-4) for x, y in zip(alone, together))


@pytest.mark.parametrize("fault", ["time_backwards", "size_change", "reset", "stale_gap"])
def test_a_fault_drops_the_whole_state_of_that_camera_only(engine, fault):
    frames, other = panning(10, seed=1), panning(10, seed=2)
    stamps = [100.0 + 0.05 * i for i in range(6)]
    assert history_matters(engine, frames[:6], stamps, frames[6]), "the test could not see a reset"
    pipelines = {
        name: StreamPipeline(engine, reset_gap_s=1.0, stream=name) for name in ("cam", "other")
    }
    for i in range(6):
        for name, sequence in (("cam", frames), ("other", other)):
            through(pipelines[name], sequence[i], stamps[i])
    # What the other camera gives on its own, with no faulty neighbour.
    other_alone = warm(engine, "other_alone", other[:7], stamps + [stamps[-1] + 0.05])
    probe, stamp = frames[6], stamps[-1] + 0.05
    if fault == "time_backwards":
        stamp = 0.0  # the bag looped
    elif fault == "size_change":
        probe = cv2.resize(probe, (WIDTH + 16, HEIGHT + 8), interpolation=cv2.INTER_AREA)
    elif fault == "reset":
        pipelines["cam"].request_reset("service", "reset asked for")
    else:
        stamp = stamps[-1] + 5.0  # quiet for longer than reset_gap_s, then back
    result = through(pipelines["cam"], probe, stamp)
    expected = {
        "time_backwards": "time_backwards",
        "size_change": "size_change",
        "reset": "service",
        "stale_gap": "gap",
    }[fault]
    assert result.reset is not None and result.reset[0] == expected
    assert result.keyframe
    assert same(result, fresh(engine, probe)), f"{fault}: the frame after the fault used old state"
    state = engine.stream_state("cam")
    assert state.frames in (0, 1) and state.frames_since_keyframe == 0
    if engine.temporal.mode != "off":
        assert state.frames == 1 and state.last_keyframe_stamp == stamp
    # The other camera carried on with its own history, untouched by this camera's fault.
    carried = through(pipelines["other"], other[6], stamps[5] + 0.05)
    assert carried.reset is None and same(carried, other_alone[6])
    engine.reset()


@pytest.mark.parametrize("fault", GUARD_REASONS)
def test_engine_drops_state_itself_when_time_runs_backwards_or_the_size_changes(engine, fault):
    """Without any caller policy (the demo, the evaluator, a bench): the engine's own guard."""
    frames = panning(8, seed=3)
    stamps = [10.0 + 0.05 * i for i in range(6)]
    assert history_matters(engine, frames[:6], stamps, frames[6])
    warm(engine, "bag", frames[:6], stamps)
    before = engine.temporal_stats("bag")["resets"].get(fault, 0)
    probe = (
        frames[6]
        if fault == "time_backwards"
        else cv2.resize(frames[6], (WIDTH // 2, HEIGHT // 2))
    )
    stamp = 10.0 if fault == "time_backwards" else stamps[-1] + 0.05
    result = run(engine, "bag", probe, stamp)
    assert result.keyframe and same(result, fresh(engine, probe))
    assert engine.temporal_stats("bag")["resets"][fault] == before + 1
    if engine.temporal.mode != "off":
        assert engine.temporal_stats("bag")["reasons"].get("start", 0) >= 2
    # The stream continues normally after the reset: the next frame is not reset again.
    after = engine.temporal_stats("bag")["resets"]
    run(engine, "bag", probe, stamp + 0.05)
    assert engine.temporal_stats("bag")["resets"] == after
    engine.reset()


def test_frames_of_one_stream_in_one_call_must_continue_each_other(engine):
    frames = panning(2, seed=4)
    with pytest.raises(ValueError, match="time_backwards"):
        engine.segment_batch(frames, "rgb", streams=["s", "s"], stamps=[2.0, 1.0])
    engine.reset()


def test_a_loop_hidden_among_skipped_frames_still_resets():
    """Keep-latest drops frames on a slow device; if the bag loops among the dropped ones, the next
    processed stamp may be later than the previous processed one. The node hands the backwards
    input gap on to the next frame (``merge_input_gaps``); the policy must act on it."""
    policy = ResetPolicy(gap_s=1.0)
    assert policy.check(10.0, (48, 96), "rgb8") is None
    key, message = policy.check(10.5, (48, 96), "rgb8", input_gap_s=-9.95)
    assert key == "time_backwards" and "backwards" in message


def test_looped_gap_survives_dropped_frames():
    from video_seg_ros.ros.frame_queue import merge_input_gaps

    assert merge_input_gaps(-9.95, 0.05) == -9.95  # a loop among dropped frames still shows
    assert merge_input_gaps(0.05, -9.95) == -9.95
    assert merge_input_gaps(3.0, 0.05) == 3.0  # the larger forward gap counts
    assert merge_input_gaps(0.05, 0.1) == 0.1
