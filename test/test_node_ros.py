"""video_seg_node as a real ROS 2 process: topics, parameters, services, bad input, shutdown.

Two node processes start once for the module (in parallel, ~10-20 s on a busy 2-core machine):
- ``seg_buffered``: raw input, reliable QoS, a frame queue of 8 (deterministic counts), all
  outputs;
- ``seg_live``: compressed input (``image_transport: compressed``), reliable QoS (so every
  published frame is received and the keep-latest counts add up exactly), keep-latest
  (frame_queue_size 1).
Both use the tests' tiny random-init ESPNet, so the tests check plumbing, not accuracy
(test_node_espnet_exact.py checks the published labels against the engine with real weights);
expected outputs are computed here with the same checkpoint. Each test leaves the nodes' parameters
and frame size as it found them (the ``restore`` fixture), so the tests pass in any order; the
shutdown signals are tested on their own processes in test_node_startup.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_support import (  # noqa: E402
    NodeProcess,
    RosProbe,
    diagnostics_values,
    newest_diagnostics,
    image_message,
    make_tiny_checkpoint,
    write_params_file,
)
from shared_data import shared_dir  # noqa: E402
from video_seg_ros.frames import list_frames, read_rgb  # noqa: E402
from video_seg_ros.image_encoding import compressed_fields, image_fields  # noqa: E402
from video_seg_ros.labels import CITYSCAPES, IGNORE_ID, colorize  # noqa: E402
from video_seg_ros.runtime import NATIVE_BF16_ENV  # noqa: E402

pytestmark = pytest.mark.ros

FRAME_SIZE = (256, 128)  # width, height of the test frames
STARTUP_TIMEOUT = 240.0  # torch import alone takes a minute on a loaded 2-core machine
ANSWER_TIMEOUT = 30.0
CLASS_IDS = set(range(len(CITYSCAPES.names))) | {IGNORE_ID}
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: Run-time parameters the tests change, at the values the nodes start with.
DEFAULTS = {"publish_overlay": False, "overlay_alpha": 0.5}


def _sequence_frames(shared_path, count=6):
    """Consecutive real video frames (Cityscapes sequence) at FRAME_SIZE, or a moving pattern."""
    if shared_path is not None:
        root = shared_path / "data" / "cityscapes_sequences" / "aachen_000000"
        records = list_frames(root) if root.is_dir() else []
        if len(records) >= count:
            return [
                cv2.resize(read_rgb(r.path), FRAME_SIZE, interpolation=cv2.INTER_AREA)
                for r in records[:count]
            ]
    width, height = FRAME_SIZE
    y, x = np.mgrid[0:height, 0:width]
    return [
        np.stack([(x + 4 * i) % 256, (y * 2) % 256, ((x + y + 8 * i) // 2) % 256], axis=2).astype(
            np.uint8
        )
        for i in range(count)
    ]


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
    checkpoint: str

    def answer(self, msg, labels=None, timeout=ANSWER_TIMEOUT, publisher=None):
        """Publish ``msg`` and wait for the labels carrying its stamp."""
        labels = self.labels if labels is None else labels
        key = _key(msg)
        (publisher or self.image_pub).publish(msg)
        return self.probe.wait_for(
            lambda: next((m for m in labels if _key(m) == key), None), timeout
        )

    def diag(
        self, node: NodeProcess, condition=lambda values: True, timeout=ANSWER_TIMEOUT, fresh=False
    ):
        """The newest diagnostics of ``node`` for which ``condition`` holds (waits for one; fails
        the test when none comes). ``fresh``: only a status published after this call."""
        seen = len(self.diagnostics) if fresh else 0

        name = f"{node.name}: segmentation"
        values = self.probe.wait_for(
            lambda: newest_diagnostics(self.diagnostics, name, condition, seen), timeout
        )
        if values is None:
            newest = next(
                (
                    v
                    for v in (
                        diagnostics_values(a, name=f"{node.name}: segmentation")
                        for a in reversed(self.diagnostics)
                    )
                    if v
                ),
                None,
            )
            raise AssertionError(
                f"no matching diagnostics from {node.name}; newest: {newest}\n"
                f"{node.output()[-2000:]}"
            )
        return values

    def set_parameters(self, node: NodeProcess, **values):
        request = SetParameters.Request(
            parameters=[
                Parameter(name, value=value).to_parameter_msg() for name, value in values.items()
            ]
        )
        response = self.probe.call(SetParameters, node.topic("set_parameters"), request)
        assert response is not None, "set_parameters service did not answer"
        return response.results


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node_ros")
    checkpoint = str(make_tiny_checkpoint(tmp / "tiny.pt", size=(64, 32)))
    common = {
        "checkpoint": checkpoint,
        "device": "cpu",
        "backend": "torch",
        "diagnostics_period_s": 0.3,
        "cpu_threads": 1,
    }
    buffered = NodeProcess(
        write_params_file(
            tmp / "buffered.yaml",
            {
                **common,
                "input_qos": "reliable",
                "frame_queue_size": 8,
                "publish_confidence": True,
                "consistency_stride": 1,
                "max_input_pixels": 200_000,
                "reset_on_gap_s": 1.0,
            },
        ),
        tmp / "buffered.log",
        remaps={"image": "/test_cam/image"},
        name="seg_buffered",
        env={NATIVE_BF16_ENV: "0"},
    )  # `auto` means fp32: its labels are compared exactly
    live = NodeProcess(
        write_params_file(
            tmp / "live.yaml",
            {
                **common,
                "image_transport": "compressed",
                "input_qos": "reliable",
                "consistency_metric": False,
            },
        ),
        tmp / "live.log",
        remaps={"image": "/test_cam_live/image"},
        name="seg_live",
        env={NATIVE_BF16_ENV: "1"},
    )  # `auto` gates bf16 (labels only checked for arriving)
    probe = RosProbe()
    latched = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    result = Session(
        probe=probe,
        buffered=buffered,
        live=live,
        image_pub=probe.publisher(Image, "/test_cam/image", RELIABLE),
        compressed_pub=probe.publisher(
            CompressedImage, "/test_cam_live/image/compressed", RELIABLE
        ),
        labels=probe.collect(Image, buffered.topic("labels")),
        live_labels=probe.collect(Image, live.topic("labels")),
        color=probe.collect(Image, buffered.topic("color")),
        overlay=probe.collect(Image, buffered.topic("overlay")),
        confidence=probe.collect(Image, buffered.topic("confidence")),
        consistency=probe.collect(Float32, buffered.topic("consistency"), keep=lambda m: m.data),
        diagnostics=probe.collect(DiagnosticArray, "/diagnostics"),
        frames=_sequence_frames(shared_dir()),
        stamps=_Stamps(),
        checkpoint=checkpoint,
    )
    result.label_info = probe.collect(String, buffered.topic("label_info"), latched)
    try:
        for node, publisher in ((buffered, result.image_pub), (live, result.compressed_pub)):
            ready = probe.wait_for(
                lambda: publisher.get_subscription_count() > 0 or not node.alive(), STARTUP_TIMEOUT
            )
            assert ready and node.alive(), f"{node.name} did not start:\n{node.output()[-3000:]}"
        # The nodes skip frames while they have not yet discovered our label subscriptions.
        for labels, publisher, make in (
            (result.labels, result.image_pub, _raw),
            (result.live_labels, result.compressed_pub, _jpeg),
        ):
            assert any(
                result.answer(make(result, result.frames[0]), labels, 2.0, publisher) is not None
                for _ in range(20)
            ), "the nodes never answered"
        yield result
    finally:
        probe.close()
        codes = [
            node.stop(timeout=60.0) for node in (buffered, live)
        ]  # both, before any assertion
        assert codes == [0, 0], (codes, buffered.output()[-1000:], live.output()[-1000:])


def _raw(session, pixels, **kwargs):
    return image_message(pixels, "rgb8", session.stamps.next(), **kwargs)


def _jpeg(session, pixels, stamp=None):
    msg = CompressedImage(**compressed_fields(pixels, "rgb", "jpeg"))
    msg.header = image_message(
        pixels[:2, :2], "rgb8", session.stamps.next() if stamp is None else stamp
    ).header
    return msg


@pytest.fixture
def restore(session):
    """Puts the run-time parameters and the frame size back, whatever the test did."""
    yield
    for node in (session.buffered, session.live):
        results = session.set_parameters(node, **DEFAULTS)
        assert all(r.successful for r in results)
    assert (
        session.answer(_raw(session, session.frames[0])) is not None
    )  # the usual frame size again


def test_labels_carry_the_input_header_size_and_class_ids(session):
    for encoding in ("rgb8", "bgr8", "rgba8", "mono8"):
        rgb = session.frames[0]
        pixels = {
            "rgb8": rgb,
            "bgr8": rgb[..., ::-1],
            "mono8": rgb[..., 1],
            "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        }[encoding]
        msg = image_message(
            np.ascontiguousarray(pixels),
            encoding,
            session.stamps.next(),
            frame_id=f"cam_{encoding}",
        )
        labels = session.answer(msg)
        assert labels is not None, (
            f"no labels for a {encoding} frame:\n{session.buffered.output()[-2000:]}"
        )
        assert labels.header.frame_id == f"cam_{encoding}"
        assert (labels.width, labels.height, labels.encoding) == (*FRAME_SIZE, "mono8")
        assert labels.step == labels.width and len(labels.data) == labels.width * labels.height
        assert set(np.unique(np.frombuffer(labels.data, np.uint8)).tolist()) <= CLASS_IDS


def test_rgb_and_bgr_inputs_of_one_frame_give_identical_labels(session):
    rgb = session.frames[1]
    first = session.answer(image_message(rgb, "rgb8", session.stamps.next()))
    second = session.answer(
        image_message(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", session.stamps.next())
    )
    assert first is not None and second is not None
    assert bytes(first.data) == bytes(second.data)


def test_class_map_is_latched_as_json_with_names_and_colours(session):
    assert session.probe.wait_for(lambda: session.label_info, ANSWER_TIMEOUT), "no ~/label_info"
    import json

    info = json.loads(session.label_info[0].data)
    assert info["ignore_id"] == IGNORE_ID and info["label_set"] == "cityscapes"
    assert [c["name"] for c in info["classes"]] == list(CITYSCAPES.names)
    assert info["classes"][0]["color"] == list(CITYSCAPES.palette[0])


def test_color_overlay_and_confidence_match_the_labels_and_the_engine(session, restore):
    results = session.set_parameters(session.buffered, publish_overlay=True, overlay_alpha=1.0)
    assert all(r.successful for r in results), [r.reason for r in results]
    msg = image_message(session.frames[2], "rgb8", session.stamps.next())
    labels_msg = session.answer(msg)
    key = _key(msg)

    def by_stamp(messages):
        return session.probe.wait_for(
            lambda: next((m for m in messages if _key(m) == key), None), ANSWER_TIMEOUT
        )

    color, overlay, confidence = (
        by_stamp(session.color),
        by_stamp(session.overlay),
        by_stamp(session.confidence),
    )
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
    values = np.frombuffer(confidence.data, np.float32).reshape(labels.shape)
    expected = _engine(session).segment(session.frames[2], "rgb", with_confidence=True)
    assert np.array_equal(labels, expected.labels)
    np.testing.assert_allclose(values, expected.confidence, rtol=0, atol=1e-5)


def _engine(session):
    import torch

    from video_seg_ros.engine import SegmentationEngine

    torch.set_num_threads(1)  # as the node runs it (cpu_threads: 1)
    return SegmentationEngine(session.checkpoint, device="cpu", backend="torch", precision="fp32")


def test_invalid_and_read_only_parameter_changes_are_rejected_with_a_reason(session):
    alpha, checkpoint, stride = session.set_parameters(
        session.buffered, overlay_alpha=1.5, checkpoint="/elsewhere.pt", consistency_stride=0
    )
    for result in (alpha, checkpoint, stride):
        assert not result.successful and result.reason
    assert "read-only" in checkpoint.reason.lower() or "read_only" in checkpoint.reason.lower()
    # The node still answers after the rejected changes.
    assert (
        session.answer(image_message(session.frames[0], "rgb8", session.stamps.next())) is not None
    )


def test_burst_of_bad_messages_is_rejected_and_counted_while_good_frames_are_answered(
    session, restore
):
    before = session.diag(
        session.buffered, lambda v: _accounted(v) == int(v["received"]), fresh=True
    )
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
    expected = {
        "unsupported_encoding": 1,
        "bad_length": 1,
        "empty": 1,
        "bad_step": 1,
        "too_large": 1,
        "too_small": 1,
    }
    after = session.diag(
        session.buffered, lambda v: int(v["rejected"]) - int(before["rejected"]) >= len(bad)
    )
    assert after is not None, (
        f"rejections missing from diagnostics: before {before}, "
        f"now {session.diag(session.buffered)}"
    )
    for reason, count in expected.items():
        assert (
            int(after.get(f"rejected_{reason}", 0)) - int(before.get(f"rejected_{reason}", 0))
            == count
        ), reason
    assert int(after["dropped"]) == int(before["dropped"])  # the queue of 8 held them all
    warned = [
        diagnostics_values(a, name="seg_buffered: segmentation") for a in session.diagnostics
    ]
    # WARN when the good frame went through in the same period as the bad ones, else ERROR.
    assert any(v and v["_level"] in (1, 2) and "rejected" in v["_message"] for v in warned), (
        "no WARN or ERROR status"
    )
    assert "rejected a frame" in session.buffered.output()  # logged (throttled)


def test_reset_service_answers_success_and_is_counted(session):
    before = session.diag(
        session.buffered, lambda v: _accounted(v) == int(v["received"]), fresh=True
    )
    response = session.probe.call(Trigger, session.buffered.topic("reset"))
    assert response is not None and response.success and response.message
    assert (
        session.answer(image_message(session.frames[0], "rgb8", session.stamps.next())) is not None
    )
    after = session.diag(
        session.buffered,
        lambda v: int(v.get("resets_service", 0)) > int(before.get("resets_service", 0)),
    )
    assert after["last_reset_reason"] == "~/reset service called"


@pytest.mark.parametrize("kind", ["time_backwards", "gap", "size_change"])
def test_state_is_reset_on_time_jumps_gaps_and_size_changes(session, restore, kind):
    before = session.diag(
        session.buffered, lambda v: _accounted(v) == int(v["received"]), fresh=True
    )
    frame = session.frames[0]
    assert session.answer(image_message(frame, "rgb8", session.stamps.next())) is not None
    if kind == "time_backwards":  # a bag starting over
        msg = image_message(frame, "rgb8", session.stamps.value - 60.0)
    elif kind == "gap":
        msg = image_message(frame, "rgb8", session.stamps.next(step=5.0))
    else:
        msg = image_message(np.ascontiguousarray(frame[::2, ::2]), "rgb8", session.stamps.next())
    assert session.answer(msg) is not None
    after = session.diag(
        session.buffered,
        lambda v: int(v.get(f"resets_{kind}", 0)) > int(before.get(f"resets_{kind}", 0)),
    )
    assert after is not None, f"no {kind} reset in diagnostics"
    assert int(after["resets"]) > int(before["resets"])


def test_consistency_metric_equals_the_metric_computed_on_the_published_labels(session):
    from video_seg_ros.metrics import OnlineConsistency

    response = session.probe.call(
        Trigger, session.buffered.topic("reset")
    )  # TC starts from this frame
    assert response is not None and response.success
    count = len(session.consistency)
    expected = OnlineConsistency(
        len(CITYSCAPES.names), stride=1, max_width=320, preset="ultrafast"
    )
    published = []
    for frame in session.frames:
        labels = session.answer(image_message(frame, "rgb8", session.stamps.next(step=0.06)))
        assert labels is not None
        sample = expected.update(
            frame, np.frombuffer(labels.data, np.uint8).reshape(frame.shape[:2])
        )
        if sample is not None and sample.tc is not None:
            published.append(sample.tc)
    assert len(published) >= 1, "no frame pair with labelled pixels: nothing was compared"
    assert session.probe.wait_for(
        lambda: len(session.consistency) >= count + len(published), ANSWER_TIMEOUT
    )
    assert session.consistency[count:] == pytest.approx(published, abs=1e-6)
    values = session.diag(session.buffered, lambda v: v["tc_pairs"] == str(expected.pairs))
    assert float(values["running_tc"]) == pytest.approx(
        expected.running_tc, abs=0.005
    )  # printed with 2 decimals


def test_diagnostics_report_counts_latency_device_and_model(session):
    before = session.diag(
        session.buffered, lambda v: _accounted(v) == int(v["received"]), fresh=True
    )
    assert session.answer(_raw(session, session.frames[0], frame_id="diag_cam")) is not None
    # The worker counts a frame as processed just after publishing its labels: wait for that.
    values = session.diag(
        session.buffered,
        lambda v: (
            v["_hardware_id"] == "diag_cam" and int(v["processed"]) == int(before["processed"]) + 1
        ),
    )
    assert (
        values["_name"] == "seg_buffered: segmentation"
    )  # no leading slash, as diagnostic_updater
    # One more frame received, and every received frame has exactly one fate.
    assert int(values["received"]) == int(before["received"]) + 1
    assert int(values["received"]) == (
        int(values["processed"])
        + int(values["rejected"])
        + int(values["dropped"])
        + int(values["skipped_no_subscriber"])
    ), values
    assert (values["device"], values["backend"], values["precision"]) == ("cpu", "torch", "fp32")
    assert (
        values["precision_reason"].startswith("auto: fp32 on ")
        and "(no native bf16)" in values["precision_reason"]
    )
    assert values["precision_fallback"] == ""
    assert values["model"].startswith("espnet")
    # Each frame's latency (callback to published) contains its model time, so the medians
    # are ordered too.
    model_p50, latency_p50, latency_p95 = (
        float(values[key]) for key in ("model_p50_ms", "latency_p50_ms", "latency_p95_ms")
    )
    assert 0.0 < model_p50 <= latency_p50 <= latency_p95, values


def test_diagnostics_say_which_precision_auto_chose_on_a_bf16_cpu_and_why(session):
    """The live node's probe says native bf16: `auto` measured bf16 against fp32 at start-up and
    kept it only if it passed the gate; either way the diagnostics say what runs and why."""
    assert session.answer(
        _jpeg(session, session.frames[0]), session.live_labels, publisher=session.compressed_pub
    )
    values = session.diag(session.live)
    assert (
        values["precision"] in ("bf16", "fp32")
        and "calibration frames" in values["precision_reason"]
    )
    agreement = float(values["precision_agreement"])
    if values["precision"] == "bf16":
        assert agreement >= 0.99 and values["precision_fallback"] == ""
    else:
        assert agreement < 0.99 and values["precision_fallback"].endswith("running fp32")
    assert (
        f"precision {values['precision']}: " in session.live.output()
    )  # the start-up line says it too


def test_compressed_input_is_segmented_and_corrupt_payloads_are_rejected(session):
    frame = session.frames[0]
    msg = _jpeg(session, frame)
    msg.header.frame_id = "cam_jpeg"
    labels = session.answer(msg, labels=session.live_labels, publisher=session.compressed_pub)
    assert labels is not None, session.live.output()[-2000:]
    assert (labels.width, labels.height, labels.header.frame_id) == (*FRAME_SIZE, "cam_jpeg")
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg at all")
    corrupt.header = image_message(frame[:2, :2], "rgb8", session.stamps.next()).header
    session.compressed_pub.publish(corrupt)
    session.diag(session.live, lambda v: int(v.get("rejected_corrupt", 0)) >= 1)
    assert session.live.alive()


def test_a_period_in_which_every_frame_was_rejected_is_an_error(session):
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg at all")
    before = session.diag(session.live, lambda v: _accounted(v) == int(v["received"]), fresh=True)
    seen = len(session.diagnostics)

    def error_status():
        """Publishes one more bad frame on each poll until a whole period saw only bad ones."""
        for array in session.diagnostics[seen:]:
            values = diagnostics_values(array, name="seg_live: segmentation")
            if (
                values
                and values["_level"] == 2
                and int(values["rejected"]) > int(before["rejected"])
            ):
                return values
        corrupt.header = image_message(
            session.frames[0][:2, :2], "rgb8", session.stamps.next()
        ).header
        session.compressed_pub.publish(corrupt)
        return None

    error = session.probe.wait_for(error_status, ANSWER_TIMEOUT, interval=0.05)
    assert error is not None, (
        f"no ERROR status while only bad frames came:\n{session.live.output()[-2000:]}"
    )
    assert error["_message"].startswith("every frame of the last period was rejected")
    assert session.answer(
        _jpeg(session, session.frames[0]), session.live_labels, publisher=session.compressed_pub
    )
    session.diag(
        session.live, lambda v: v["_level"] == 0
    )  # and OK again once a frame goes through


def _accounted(values) -> int:
    """Frames with a known fate: every received frame ends as exactly one of these."""
    return sum(
        int(values[key]) for key in ("processed", "dropped", "rejected", "skipped_no_subscriber")
    )


def test_keep_latest_drops_waiting_frames_and_answers_the_newest(session):
    before = session.diag(session.live, lambda v: _accounted(v) == int(v["received"]), fresh=True)
    # One large frame keeps the worker busy while 8 small ones arrive (within a few milliseconds).
    # 9 frames in all: within the reliable reader's depth of 10, so none is lost before the node's
    # callback sees it and every one is counted as processed or dropped.
    large = np.ascontiguousarray(np.tile(session.frames[0], (6, 6, 1)))
    burst = [_jpeg(session, large, session.stamps.next(step=0.01))]
    burst += [_jpeg(session, session.frames[0], session.stamps.next(step=0.01)) for _ in range(8)]
    for msg in burst:
        session.compressed_pub.publish(msg)
    newest = _key(burst[-1])
    assert session.probe.wait_for(
        lambda: any(_key(m) == newest for m in session.live_labels), ANSWER_TIMEOUT
    ), (newest, [_key(m) for m in session.live_labels][-5:], session.diag(session.live))
    after = session.diag(
        session.live,
        lambda v: (
            int(v["received"]) - int(before["received"]) == len(burst)
            and _accounted(v) == int(v["received"])
        ),
    )
    processed = int(after["processed"]) - int(before["processed"])
    dropped = int(after["dropped"]) - int(before["dropped"])
    assert processed + dropped == len(
        burst
    )  # reliable QoS: every frame arrived, each one counted once
    assert dropped >= 1, "no frame waited while the large one was segmented"
    answered = [_key(m) for m in session.live_labels if _key(m) in {_key(b) for b in burst}]
    assert (
        answered == sorted(answered) and answered[-1] == newest
    )  # never an older frame after a newer one
