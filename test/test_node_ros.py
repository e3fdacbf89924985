"""video_seg_node as a real ROS 2 process: topics, parameters, services, bad input, shutdown.

Two node processes start once for the module (in parallel, ~10-20 s on a busy 2-core machine):
- ``seg_buffered``: raw input, reliable QoS, a frame queue of 8 (deterministic counts), all outputs;
- ``seg_live``: compressed input, best-effort camera QoS, keep-latest (frame_queue_size 1).
Both use a small random-init ESPNet checkpoint, so the tests check plumbing, not accuracy
(test_node_espnet_exact.py checks the published labels against the engine with real weights).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_support import (NodeProcess, RosProbe, diagnostics_values, image_message,  # noqa: E402
                         make_tiny_checkpoint, write_params_file)
from video_seg_ros.frames import list_frames, read_rgb  # noqa: E402
from video_seg_ros.image_encoding import compressed_fields, image_fields  # noqa: E402
from video_seg_ros.labels import CITYSCAPES, IGNORE_ID, colorize  # noqa: E402

FRAME_SIZE = (256, 128)  # width, height of the test frames
STARTUP_TIMEOUT = 120.0
ANSWER_TIMEOUT = 30.0
CLASS_IDS = set(range(len(CITYSCAPES.names))) | {IGNORE_ID}


def _sequence_frames(shared_path, count=6):
    """Consecutive real video frames (Cityscapes sequence) at FRAME_SIZE, or a moving pattern."""
    if shared_path is not None:
        root = shared_path / "data" / "cityscapes_sequences" / "aachen_000000"
        records = list_frames(root) if root.is_dir() else []
        if len(records) >= count:
            return [cv2.resize(read_rgb(r.path), FRAME_SIZE, interpolation=cv2.INTER_AREA)
                    for r in records[:count]]
    width, height = FRAME_SIZE
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(x + 4 * i) % 256, (y * 2) % 256, ((x + y + 8 * i) // 2) % 256], axis=2).astype(np.uint8)
            for i in range(count)]


class _Stamps:
    """Strictly increasing stamps 50 ms apart, so the gap rule does not fire by accident."""

    def __init__(self):
        self.value = 1000.0

    def next(self, step=0.05):
        self.value += step
        return round(self.value, 3)


def _key(msg):
    return msg.header.stamp.sec, msg.header.stamp.nanosec


@dataclass
class Session:
    probe: RosProbe
    buffered: NodeProcess
    live: NodeProcess
    image_pub: object
    compressed_pub: object
    labels: list
    live_labels: list
    color: list
    overlay: list
    confidence: list
    consistency: list
    diagnostics: list
    frames: list
    stamps: _Stamps

    def answer(self, msg, labels=None, timeout=ANSWER_TIMEOUT, publisher=None):
        """Publish ``msg`` and wait for the labels carrying its stamp."""
        labels = self.labels if labels is None else labels
        key = _key(msg)
        (publisher or self.image_pub).publish(msg)
        return self.probe.wait_for(lambda: next((m for m in labels if _key(m) == key), None), timeout)

    def diag(self, node: NodeProcess, condition=lambda values: True, timeout=ANSWER_TIMEOUT):
        """The newest diagnostics of ``node`` for which ``condition`` holds (waits for one)."""

        def find():
            for array in reversed(self.diagnostics):
                values = diagnostics_values(array, node.name)
                if values is not None and condition(values):
                    return values
            return None

        return self.probe.wait_for(find, timeout)

    def set_parameters(self, node: NodeProcess, **values):
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        response = self.probe.call(SetParameters, node.topic("set_parameters"), request)
        assert response is not None, "set_parameters service did not answer"
        return response.results


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from video_seg_ros.shared_data import shared_dir

    tmp = tmp_path_factory.mktemp("node_ros")
    checkpoint = str(make_tiny_checkpoint(tmp / "tiny.pt", size=(64, 32)))
    common = {"checkpoint": checkpoint, "device": "cpu", "diagnostics_period_s": 0.3, "cpu_threads": 1}
    buffered = NodeProcess(
        write_params_file(tmp / "buffered.yaml", {
            **common, "input_qos": "reliable", "frame_queue_size": 8, "publish_confidence": True,
            "consistency_stride": 1, "max_input_pixels": 200_000, "reset_on_gap_s": 1.0}),
        tmp / "buffered.log", remaps={"image": "/test_cam/image"}, name="seg_buffered")
    live = NodeProcess(
        write_params_file(tmp / "live.yaml", {**common, "use_compressed": True, "consistency_metric": False}),
        tmp / "live.log", remaps={"image": "/test_cam_live/image"}, name="seg_live")
    probe = RosProbe()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    result = Session(
        probe=probe, buffered=buffered, live=live,
        image_pub=probe.publisher(Image, "/test_cam/image", 10),
        compressed_pub=probe.publisher(CompressedImage, "/test_cam_live/image/compressed", qos_profile_sensor_data),
        labels=probe.collect(Image, buffered.topic("labels")),
        live_labels=probe.collect(Image, live.topic("labels")),
        color=probe.collect(Image, buffered.topic("color")),
        overlay=probe.collect(Image, buffered.topic("overlay")),
        confidence=probe.collect(Image, buffered.topic("confidence")),
        consistency=probe.collect(Float32, buffered.topic("consistency"), keep=lambda m: m.data),
        diagnostics=probe.collect(DiagnosticArray, "/diagnostics"),
        frames=_sequence_frames(shared_dir()), stamps=_Stamps(),
    )
    result.label_info = probe.collect(String, buffered.topic("label_info"), latched)
    try:
        for node, publisher in ((buffered, result.image_pub), (live, result.compressed_pub)):
            ready = probe.wait_for(lambda: publisher.get_subscription_count() > 0 or not node.alive(),
                                   STARTUP_TIMEOUT)
            assert ready and node.alive(), f"{node.name} did not start:\n{node.output()[-3000:]}"
        yield result
    finally:
        probe.close()
        for node in (buffered, live):
            node.stop()


def test_labels_carry_the_input_header_size_and_class_ids(session):
    for encoding in ("rgb8", "bgr8", "rgba8", "mono8"):
        rgb = session.frames[0]
        pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 1],
                  "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])}[encoding]
        msg = image_message(np.ascontiguousarray(pixels), encoding, session.stamps.next(), frame_id=f"cam_{encoding}")
        labels = session.answer(msg)
        assert labels is not None, f"no labels for a {encoding} frame:\n{session.buffered.output()[-2000:]}"
        assert labels.header.frame_id == f"cam_{encoding}"
        assert (labels.width, labels.height, labels.encoding) == (*FRAME_SIZE, "mono8")
        assert labels.step == labels.width and len(labels.data) == labels.width * labels.height
        assert set(np.unique(np.frombuffer(labels.data, np.uint8)).tolist()) <= CLASS_IDS


def test_rgb_and_bgr_inputs_of_one_frame_give_identical_labels(session):
    rgb = session.frames[1]
    first = session.answer(image_message(rgb, "rgb8", session.stamps.next()))
    second = session.answer(image_message(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", session.stamps.next()))
    assert first is not None and second is not None
    assert bytes(first.data) == bytes(second.data)


def test_class_map_is_latched_as_json_with_names_and_colours(session):
    assert session.probe.wait_for(lambda: session.label_info, ANSWER_TIMEOUT), "no ~/label_info"
    import json

    info = json.loads(session.label_info[0].data)
    assert info["ignore_id"] == IGNORE_ID and info["label_set"] == "cityscapes"
    assert [c["name"] for c in info["classes"]] == list(CITYSCAPES.names)
    assert info["classes"][0]["color"] == list(CITYSCAPES.palette[0])


def test_color_overlay_and_confidence_match_the_labels(session):
    results = session.set_parameters(session.buffered, publish_overlay=True, overlay_alpha=1.0)
    assert all(r.successful for r in results), [r.reason for r in results]
    msg = image_message(session.frames[2], "rgb8", session.stamps.next())
    labels_msg = session.answer(msg)
    key = _key(msg)

    def by_stamp(messages):
        return session.probe.wait_for(lambda: next((m for m in messages if _key(m) == key), None), ANSWER_TIMEOUT)

    color, overlay, confidence = by_stamp(session.color), by_stamp(session.overlay), by_stamp(session.confidence)
    assert color is not None and overlay is not None and confidence is not None
    labels = np.frombuffer(labels_msg.data, np.uint8).reshape(FRAME_SIZE[1], FRAME_SIZE[0])
    expected_color = colorize(labels, CITYSCAPES.palette_array())
    for view in (color, overlay):
        assert (view.encoding, view.width, view.height) == ("rgb8", *FRAME_SIZE)
    color_pixels = np.frombuffer(color.data, np.uint8).reshape(expected_color.shape)
    assert np.array_equal(color_pixels, expected_color)
    overlay_pixels = np.frombuffer(overlay.data, np.uint8).reshape(expected_color.shape)
    labelled = labels != IGNORE_ID
    assert np.array_equal(overlay_pixels[labelled], expected_color[labelled])  # alpha 1.0
    assert confidence.encoding == "32FC1"
    values = np.frombuffer(confidence.data, np.float32)
    assert values.size == labels.size and values.min() > 0.0 and values.max() <= 1.0 + 1e-6


def test_invalid_and_read_only_parameter_changes_are_rejected_with_a_reason(session):
    alpha, checkpoint, stride = session.set_parameters(
        session.buffered, overlay_alpha=1.5, checkpoint="/elsewhere.pt", consistency_stride=0)
    for result in (alpha, checkpoint, stride):
        assert not result.successful and result.reason
    assert "read-only" in checkpoint.reason.lower() or "read_only" in checkpoint.reason.lower()
    # The node still answers after the rejected changes.
    assert session.answer(image_message(session.frames[0], "rgb8", session.stamps.next())) is not None


def test_burst_of_bad_messages_is_rejected_and_counted_while_good_frames_are_answered(session):
    before = session.diag(session.buffered, lambda v: int(v["processed"]) > 0)
    good = session.frames[3]
    width, height = FRAME_SIZE

    def raw(**fields):
        base = image_fields(good, "rgb8")
        base.update(fields)
        msg = image_message(good, "rgb8", session.stamps.next())
        for name, value in base.items():
            setattr(msg, name, value)
        return msg

    big = np.zeros((400, 600, 3), np.uint8)  # 240000 pixels > max_input_pixels = 200000
    bad = [
        raw(encoding="yuv422"),
        raw(data=bytes(width * height * 3 - 7)),
        raw(height=0, width=0, step=0, data=b""),
        raw(step=width),  # shorter than a row of rgb8
        image_message(big, "rgb8", session.stamps.next()),
        image_message(np.zeros((1, 1, 3), np.uint8), "rgb8", session.stamps.next()),
    ]
    for msg in bad:
        session.image_pub.publish(msg)
    answered = session.answer(image_message(good, "rgb8", session.stamps.next()))
    assert answered is not None, session.buffered.output()[-2000:]
    assert session.buffered.alive()
    expected = {"unsupported_encoding": 1, "bad_length": 1, "empty": 1, "bad_step": 1, "too_large": 1, "too_small": 1}
    after = session.diag(session.buffered, lambda v: int(v["rejected"]) - int(before["rejected"]) >= len(bad))
    assert after is not None, f"rejections missing from diagnostics: before {before}, now {session.diag(session.buffered)}"
    for reason, count in expected.items():
        assert int(after.get(f"rejected_{reason}", 0)) - int(before.get(f"rejected_{reason}", 0)) == count, reason
    assert int(after["dropped"]) == int(before["dropped"])  # the queue of 8 held them all
    warned = [diagnostics_values(a, "seg_buffered") for a in session.diagnostics]
    assert any(v and v["_level"] == 1 and "rejected" in v["_message"] for v in warned), "no WARN status"
    assert "rejected a frame" in session.buffered.output()  # logged (throttled)


def test_reset_service_answers_success_and_is_counted(session):
    before = session.diag(session.buffered)
    response = session.probe.call(Trigger, session.buffered.topic("reset"))
    assert response is not None and response.success and response.message
    assert session.answer(image_message(session.frames[0], "rgb8", session.stamps.next())) is not None
    after = session.diag(session.buffered, lambda v: int(v.get("resets_service", 0)) > int(before.get("resets_service", 0)))
    assert after is not None and "reset service" in after["last_reset_reason"]


@pytest.mark.parametrize("kind", ["time_backwards", "gap", "size_change"])
def test_state_is_reset_on_time_jumps_gaps_and_size_changes(session, kind):
    before = session.diag(session.buffered)
    frame = session.frames[0]
    assert session.answer(image_message(frame, "rgb8", session.stamps.next())) is not None
    if kind == "time_backwards":  # a bag starting over
        msg = image_message(frame, "rgb8", session.stamps.value - 60.0)
    elif kind == "gap":
        msg = image_message(frame, "rgb8", session.stamps.next(step=5.0))
    else:
        msg = image_message(np.ascontiguousarray(frame[::2, ::2]), "rgb8", session.stamps.next())
    assert session.answer(msg) is not None
    if kind == "size_change":  # and back to the usual size for the other tests
        assert session.answer(image_message(frame, "rgb8", session.stamps.next())) is not None
    after = session.diag(session.buffered, lambda v: int(v.get(f"resets_{kind}", 0)) > int(before.get(f"resets_{kind}", 0)))
    assert after is not None, f"no {kind} reset in diagnostics"
    assert int(after["resets"]) > int(before["resets"])


def test_consistency_metric_is_published_per_frame_and_in_diagnostics(session):
    count = len(session.consistency)
    for frame in session.frames:
        assert session.answer(image_message(frame, "rgb8", session.stamps.next(step=0.06))) is not None
    assert session.probe.wait_for(lambda: len(session.consistency) >= count + len(session.frames) - 1, ANSWER_TIMEOUT)
    assert all(0.0 <= value <= 1.0 for value in session.consistency[count:])
    values = session.diag(session.buffered, lambda v: v["running_tc"] != "")
    assert values is not None and 0.0 <= float(values["running_tc"]) <= 1.0


def test_diagnostics_report_counts_latency_device_and_model(session):
    values = session.diag(session.buffered, lambda v: int(v["processed"]) >= 5)
    assert values is not None
    assert int(values["received"]) >= int(values["processed"]) + int(values["rejected"])
    assert values["device"] == "cpu" and values["model"].startswith("espnet")
    assert float(values["latency_p95_ms"]) >= float(values["latency_p50_ms"]) > 0.0
    assert float(values["model_p50_ms"]) > 0.0


def test_compressed_input_is_segmented_and_corrupt_payloads_are_rejected(session):
    frame = session.frames[0]
    msg = CompressedImage(**compressed_fields(frame, "rgb", "jpeg"))
    stamp = session.stamps.next()
    msg.header = image_message(frame[:2, :2], "rgb8", stamp, frame_id="cam_jpeg").header
    labels = session.answer(msg, labels=session.live_labels, publisher=session.compressed_pub)
    assert labels is not None, session.live.output()[-2000:]
    assert (labels.width, labels.height, labels.header.frame_id) == (*FRAME_SIZE, "cam_jpeg")
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg at all")
    corrupt.header = image_message(frame[:2, :2], "rgb8", session.stamps.next()).header
    session.compressed_pub.publish(corrupt)
    values = session.diag(session.live, lambda v: int(v.get("rejected_corrupt", 0)) >= 1)
    assert values is not None and session.live.alive()


def test_keep_latest_drops_old_frames_and_answers_the_newest(session):
    frame = session.frames[0]
    payload = compressed_fields(frame, "rgb", "jpeg")
    before = session.diag(session.live)
    stamps = [session.stamps.next(step=0.01) for _ in range(20)]
    for stamp in stamps:  # much faster than the model runs
        msg = CompressedImage(**payload)
        msg.header = image_message(frame[:2, :2], "rgb8", stamp).header
        session.compressed_pub.publish(msg)
    newest = (int(stamps[-1]), int(round((stamps[-1] - int(stamps[-1])) * 1e9)))
    assert session.probe.wait_for(lambda: any(_key(m) == newest for m in session.live_labels), ANSWER_TIMEOUT)
    after = session.diag(session.live, lambda v: int(v["processed"]) > int(before["processed"]))
    processed = int(after["processed"]) - int(before["processed"])
    dropped = int(after["dropped"]) - int(before["dropped"])
    assert dropped >= 1 and processed < len(stamps)


def test_sigint_and_sigterm_shut_the_node_down_cleanly(session):
    assert session.live.stop(signal.SIGTERM) == 0, session.live.output()[-2000:]
    assert session.buffered.stop(signal.SIGINT) == 0, session.buffered.output()[-2000:]
    for node in (session.live, session.buffered):
        assert "Traceback" not in node.output()
