"""The node's ROS-free core (video_seg_ros.ros.pipeline): queueing, reset policy, stats,
outputs, diagnostics."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.image_encoding import Frame
from video_seg_ros.labels import CITYSCAPES, IGNORE_ID, colorize
from video_seg_ros.metrics import OnlineConsistency
from video_seg_ros.ros.frame_queue import FrameQueue
from video_seg_ros.ros.pipeline import (
    NodePipeline,
    OutputRequest,
    ResetPolicy,
    StreamItem,
    StreamPipeline,
    segment_streams,
)
from video_seg_ros.ros.stream_stats import StreamStats


def test_keep_latest_queue_replaces_the_waiting_frame_and_counts_the_drop():
    queue = FrameQueue(capacity=1)
    assert queue.put("frame 1") == 0
    assert queue.put("frame 2") == 1
    assert queue.put("frame 3") == 1
    assert queue.get(timeout=0.1) == "frame 3"
    assert queue.get(timeout=0.01) is None


def test_buffered_queue_drops_the_oldest_when_full():
    queue = FrameQueue(capacity=3)
    dropped = sum(queue.put(i) for i in range(5))
    assert dropped == 2
    assert [queue.get(0.01) for _ in range(3)] == [2, 3, 4]


def test_queue_close_wakes_a_waiting_consumer():
    queue = FrameQueue()
    result = []
    consumer = threading.Thread(target=lambda: result.append(queue.get(timeout=10.0)))
    consumer.start()
    queue.close()
    consumer.join(timeout=2.0)
    assert not consumer.is_alive() and result == [None]
    with pytest.raises(ValueError):
        FrameQueue(capacity=0)


def test_queue_keeps_one_keep_latest_slot_per_camera_and_hands_out_one_frame_of_each():
    queue = FrameQueue(capacity=1)
    assert queue.put("front 1", "front") == 0
    assert queue.put("left 1", "left") == 0  # another camera: nothing dropped
    assert queue.put("front 2", "front") == 1
    assert queue.get_batch(timeout=0.1) == [("front", "front 2"), ("left", "left 1")]
    assert queue.get_batch(timeout=0.01) == []
    buffered = FrameQueue(capacity=3)
    for i in range(2):
        buffered.put(f"front {i}", "front")
    buffered.put("left 0", "left")
    assert buffered.get_batch(0.01) == [
        ("front", "front 0"),
        ("left", "left 0"),
    ]  # a camera's frames in order
    assert buffered.clear() == {"front": 1} and len(buffered) == 0  # counted per camera


def test_dropped_items_pass_their_knowledge_to_the_successor():
    merged = []
    queue = FrameQueue(
        capacity=1, on_drop=lambda dropped, successor: merged.append((dropped, successor))
    )
    queue.put("a")
    queue.put("b")
    assert merged == [("a", "b")]
    buffered = FrameQueue(
        capacity=2, on_drop=lambda dropped, successor: merged.append((dropped, successor))
    )
    for item in "xyz":
        buffered.put(item)
    assert merged[-1] == ("x", "y")  # y is now the oldest waiting item


def test_gap_rule_follows_the_camera_stream_not_the_processed_frames():
    policy = ResetPolicy(gap_s=1.0)
    policy.check(1.0, (4, 4), "rgb8", input_gap_s=0.0)
    # A slow device skipped frames: processed stamps 3 s apart, camera frames 50 ms apart.
    assert policy.check(4.0, (4, 4), "rgb8", input_gap_s=0.05) is None
    assert policy.check(9.0, (4, 4), "rgb8", input_gap_s=2.5)[0] == "gap"


def test_reset_policy_reasons():
    policy = ResetPolicy(gap_s=1.0)
    assert policy.check(10.0, (4, 4), "rgb8") is None
    assert policy.check(10.5, (4, 4), "rgb8") is None
    assert policy.check(10.2, (4, 4), "rgb8")[0] == "time_backwards"
    assert policy.check(12.0, (4, 4), "rgb8")[0] == "gap"
    assert policy.check(12.1, (8, 4), "rgb8")[0] == "size_change"
    assert policy.check(12.2, (8, 4), "bgr8")[0] == "encoding_change"
    policy.gap_s = 0.0  # disabled
    assert policy.check(100.0, (8, 4), "bgr8") is None


def test_stats_percentiles_fps_and_new_rejections():
    stats = StreamStats()
    for i in range(10):
        stats.on_received(dropped=1 if i % 2 else 0)
        stats.on_processed(latency_ms=10.0 + i, model_ms=5.0, done_at=100.0 + 0.1 * i)
    stats.on_rejected("bad_length", "data has 3 bytes")
    stats.on_skipped()
    first = stats.snapshot(now=101.0)
    assert (first["received"], first["processed"], first["dropped"], first["rejected"]) == (
        10,
        10,
        5,
        1,
    )
    assert (
        first["skipped"],
        first["new_skipped"],
        first["new_received"],
        first["new_processed"],
    ) == (1, 1, 10, 10)
    assert first["latency_p50_ms"] == pytest.approx(14.5)
    assert first["fps"] == pytest.approx(10.0)
    assert first["new_rejected"] == 1 and first["rejected_by_reason"] == {"bad_length": 1}
    second = stats.snapshot(now=101.0)
    assert (
        second["new_rejected"] == second["new_received"] == 0
    )  # WARN clears once the bad input stops


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def engine(tiny_espnet_checkpoint):
    return SegmentationEngine(
        str(tiny_espnet_checkpoint), device="cpu", precision="fp32", backend="torch"
    )


def _frame(seed=0, size=(40, 64), encoding="rgb8"):
    pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    return Frame(pixels, encoding[:3], encoding)


def test_pipeline_labels_match_the_engine_and_views_use_the_palette(engine):
    pipeline = StreamPipeline(engine)
    frame = _frame()
    request = OutputRequest(color=True, overlay=True, overlay_alpha=1.0, confidence=True)
    result = pipeline.segment(frame, 1.0, request)
    expected = engine.segment(frame.pixels, "rgb")
    assert np.array_equal(result.labels, expected.labels)
    assert (
        result.confidence.shape == frame.pixels.shape[:2] and result.confidence.dtype == np.float32
    )
    pipeline.render(frame, result, request)
    assert np.array_equal(result.extras["color"], colorize(result.labels, engine.palette_table))
    labelled = result.labels != IGNORE_ID
    assert np.array_equal(result.extras["overlay"][labelled], result.extras["color"][labelled])


def test_pipeline_reports_why_it_reset(engine):
    pipeline = StreamPipeline(engine, reset_gap_s=0.5)
    assert pipeline.segment(_frame(), 1.0).reset is None
    assert pipeline.segment(_frame(), 0.5).reset[0] == "time_backwards"
    pipeline.request_reset("service", "asked")
    assert pipeline.segment(_frame(), 0.6).reset == ("service", "asked")
    assert pipeline.segment(_frame(), 0.7).reset is None


def test_pipeline_bgr_frame_gives_the_same_labels_as_rgb(engine):
    pipeline = StreamPipeline(engine)
    rgb = _frame(seed=3)
    bgr = Frame(np.ascontiguousarray(rgb.pixels[..., ::-1]), "bgr", "bgr8")
    first = pipeline.segment(rgb, 1.0).labels
    assert np.array_equal(first, pipeline.segment(bgr, 1.1).labels)


def test_pipeline_consistency_is_measured_every_stride_frames(engine):
    consistency = OnlineConsistency(len(CITYSCAPES.names), stride=2, max_width=64)
    pipeline = StreamPipeline(engine, consistency=consistency)
    frame = _frame(seed=5)
    samples = []
    for i in range(5):
        result = pipeline.segment(frame, 1.0 + 0.1 * i)
        samples.append(pipeline.measure(frame, result.labels))
    measured = [s for s in samples if s is not None]
    assert len(measured) == 2  # frames 2 and 4 (a static scene's TC of 1: test_metrics.py)
    pipeline.reset()
    assert consistency.pairs == 0


def test_large_image_profile_is_found_and_a_user_profile_wins():
    from video_seg_ros.ros.dds import PROFILE_ENV, fastdds_profile_path, large_image_environment

    profile = fastdds_profile_path()
    assert profile is not None and profile.name == "fastdds_large_images.xml"
    text = profile.read_text()
    assert (
        "<segment_size>67108864</segment_size>" in text
        and "<maxMessageSize>16777216</maxMessageSize>" in text
    )
    assert large_image_environment({})[PROFILE_ENV] == str(profile)
    assert large_image_environment({PROFILE_ENV: "/mine.xml"})[PROFILE_ENV] == "/mine.xml"


@pytest.fixture(scope="module")
def memory_engine(tmp_path_factory):
    """A tiny ESPNet with an LMANet memory whose layers are random, so memory visibly matters."""
    from ros_support import make_tiny_memory_checkpoint

    path = make_tiny_memory_checkpoint(tmp_path_factory.mktemp("mem") / "memory.pt")
    engine = SegmentationEngine(str(path), device="cpu", precision="fp32", backend="torch")
    assert engine.is_temporal
    return engine


def test_temporal_state_switch_and_reset_control_the_model_memory(memory_engine):
    previous, current = _frame(seed=10), _frame(seed=11)
    memory_engine.reset()
    without_memory = memory_engine.segment(current.pixels, "rgb").labels

    def after_history(pipeline, stamp=1.0):
        for i in range(2):
            pipeline.segment(previous, stamp + 0.1 * i)
        return pipeline.segment(current, stamp + 0.2)

    pipeline = StreamPipeline(memory_engine, temporal_state=True)
    pipeline.reset()
    with_memory = after_history(pipeline).labels
    assert not np.array_equal(with_memory, without_memory)  # the memory of earlier frames is used

    pipeline.temporal_state = False  # memory switched off at run time: every frame from scratch
    assert np.array_equal(after_history(pipeline, 2.0).labels, without_memory)

    pipeline.temporal_state = True
    for i in range(2):
        pipeline.segment(previous, 3.0 + 0.1 * i)
    pipeline.request_reset("service", "test")
    assert np.array_equal(pipeline.segment(current, 3.2).labels, without_memory)


def test_cameras_batched_together_keep_their_own_memory_resets_and_tc(memory_engine):
    """segment_streams: one batch of two cameras gives each the labels it would get alone."""
    previous, current = _frame(seed=20), _frame(seed=21)
    other = [_frame(seed=30 + i, size=(24, 48)) for i in range(3)]  # another camera, another size

    def camera(name):
        return StreamPipeline(
            memory_engine,
            consistency=OnlineConsistency(len(CITYSCAPES.names), max_width=64),
            stream=name,
        )

    memory_engine.reset()
    alone = camera("alone")
    for i in range(2):
        alone.segment(previous, 1.0 + 0.1 * i)
    expected = alone.segment(current, 1.2).labels
    fresh = camera("fresh").segment(current, 1.0).labels
    assert not np.array_equal(expected, fresh), (
        "memory has no effect: the test would prove nothing"
    )

    front, left = camera("front"), camera("left")
    for i in range(2):
        results = segment_streams(
            [
                (front, previous, 1.0 + 0.1 * i, None, None),
                (left, other[i], 5.0 + 0.1 * i, None, None),
            ]
        )
        assert [r.labels.shape for r in results] == [(40, 64), (24, 48)]
    left.request_reset("service", "test")  # a reset of left ...
    last = segment_streams([(front, current, 1.2, None, None), (left, other[2], 4.0, None, None)])
    assert np.array_equal(
        last[0].labels, expected
    )  # ... and left's frames never reached front's memory
    assert last[0].reset is None and last[1].reset == ("service", "test")
    assert (front.frames_since_reset, left.frames_since_reset) == (3, 1)
    with pytest.raises(ValueError, match="one frame per stream"):
        segment_streams([(front, current, 1.3, None, None), (front, current, 1.4, None, None)])


def _settings(**changes):
    from video_seg_ros.ros.parameters import PARAMETERS

    return {**{name: spec.default for name, spec in PARAMETERS.items()}, **changes}


def _camera(engine, name):
    return StreamPipeline(
        engine, consistency=OnlineConsistency(len(engine.class_names), max_width=64), stream=name
    )


def test_node_pipeline_applies_every_run_time_setting_to_every_camera(engine):
    streams = {name: _camera(engine, name) for name in ("front", "left")}
    pipeline = NodePipeline(engine, streams, _settings(consistency_metric=False))
    pipeline.apply(
        _settings(
            consistency_metric=False,
            reset_on_gap_s=2.5,
            consistency_stride=7,
            temporal_state=False,
        )
    )
    for stream in streams.values():
        assert (stream.policy.gap_s, stream.consistency.stride, stream.temporal_state) == (
            2.5,
            7,
            False,
        )
    pipeline.apply(_settings(consistency_metric=False, consistency_stride=1))
    front = streams["front"]
    for i in range(2):  # pairs measured while the metric is off are not kept when it comes back
        front.measure(_frame(seed=i), front.segment(_frame(seed=i), 1.0 + 0.1 * i).labels)
    assert front.consistency.pairs == 1
    pipeline.apply(_settings(consistency_metric=True))
    assert front.consistency.pairs == 0 and pipeline.settings["consistency_metric"] is True


def test_node_pipeline_renders_measures_and_keeps_a_failure_to_its_camera(engine):
    streams = {name: _camera(engine, name) for name in ("front", "left")}
    pipeline = NodePipeline(engine, streams, _settings(consistency_stride=1))
    request = OutputRequest(color=True, overlay=True)
    tiny = Frame(np.full((2, 2, 3), 128, np.uint8), "rgb", "rgb8")
    outcomes = []
    for i in range(2):  # 2x2 frames: the TC metric's optical flow fails on the second one
        outcomes = pipeline.process(
            [
                StreamItem(streams["front"], tiny, 1.0 + 0.1 * i, request),
                StreamItem(streams["left"], _frame(seed=i), 1.0 + 0.1 * i, request),
            ]
        )
    failed, result = outcomes
    assert isinstance(failed, Exception)
    assert set(result.extras) == {"color", "overlay"} and result.tc is not None
    assert np.array_equal(result.extras["color"], colorize(result.labels, engine.palette_table))


def test_diagnostics_levels_and_values_come_from_the_counters(engine):
    from video_seg_ros.ros.diagnostics import ERROR, OK, WARN, camera_status

    stream = _camera(engine, None)
    stats = StreamStats()
    settings = _settings()
    level, message, values = camera_status(
        "", "/image", stats.snapshot(), stream, engine, settings, active=False, quiet_s=0.0
    )
    assert (level, message) == (OK, "inactive: not subscribed to the camera")
    stats.on_received()
    stats.on_rejected("internal_error", "error: flow failed")
    level, message, values = camera_status(
        "", "/image", stats.snapshot(), stream, engine, settings, active=True, quiet_s=0.0
    )
    assert level == ERROR and message.endswith("error: flow failed")
    assert values["rejected_internal_error"] == "1" and values["received"] == "1"
    stats.on_received()
    stats.on_rejected("too_small", "tiny")
    stats.on_received()
    stats.on_processed(5.0, 4.0)
    level, message, values = camera_status(
        "", "/image", stats.snapshot(), stream, engine, settings, active=True, quiet_s=0.0
    )
    assert (
        level == WARN and "rejected 1 frame(s)" in message and values["latency_p50_ms"] == "5.00"
    )
