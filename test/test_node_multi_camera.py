"""Several cameras in one video_seg_node process (parameter ``cameras``), as real ROS 2 processes.

One node serves four cameras with one model that has a memory (random memory layers, so earlier
frames visibly change the labels):
- ``front`` and ``left`` (different frame sizes): headers and sizes per stream, memory, TC,
  resets and camera_info kept per camera, frames batched together;
- ``idle``: nobody subscribes to its outputs, so its frames are not segmented;
- ``aux``: its input reliability comes from ``qos_overrides`` (best effort) instead of
  ``input_qos: reliable``.
"""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float32  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_support import (  # noqa: E402
    NodeProcess,
    RosProbe,
    diagnostics_values,
    image_message,
    make_tiny_memory_checkpoint,
    write_params_file,
)

pytestmark = pytest.mark.ros

NODE = "seg_multi"
SIZES = {"front": (96, 48), "left": (64, 40), "idle": (64, 32), "aux": (64, 32)}  # width, height
STARTUP_TIMEOUT = 240.0
ANSWER_TIMEOUT = 30.0
STALE_S = 2.0
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _frames(camera: str, count: int = 4) -> list[np.ndarray]:
    width, height = SIZES[camera]
    rng = np.random.default_rng(sum(map(ord, camera)))
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def _key(msg):
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class Rig:
    """The node process, the probe and one publisher/collector set per camera."""

    def __init__(self, probe: RosProbe, node: NodeProcess):
        self.probe, self.node = probe, node
        self.stamps = {camera: 1000.0 for camera in SIZES}
        self.pubs = {
            camera: probe.publisher(Image, f"/mc_{camera}/image", RELIABLE)
            for camera in ("front", "left", "idle")
        }
        self.labels = {
            camera: probe.collect(Image, node.topic(f"{camera}/labels"))
            for camera in ("front", "left")
        }
        self.consistency = {
            camera: probe.collect(
                Float32, node.topic(f"{camera}/consistency"), keep=lambda m: m.data
            )
            for camera in ("front", "left")
        }
        self.camera_info = probe.collect(CameraInfo, node.topic("front/camera_info"))
        self.diagnostics = probe.collect(DiagnosticArray, "/diagnostics")

    def message(
        self, camera: str, pixels: np.ndarray, step: float = 0.05, stamp: float | None = None
    ):
        if stamp is None:
            self.stamps[camera] = round(self.stamps[camera] + step, 3)
            stamp = self.stamps[camera]
        return image_message(pixels, "rgb8", stamp, frame_id=f"{camera}_cam")

    def send(self, camera: str, pixels: np.ndarray, **kwargs):
        """Publish a frame to ``camera`` and return its labels (None on timeout)."""
        return self.send_together({camera: pixels}, **kwargs)[camera]

    def send_together(self, frames: dict[str, np.ndarray], **kwargs) -> dict:
        """Publish one frame per camera at once (so they are batched) and wait for every answer."""
        messages = {
            camera: self.message(camera, pixels, **kwargs) for camera, pixels in frames.items()
        }
        for camera, msg in messages.items():
            self.pubs[camera].publish(msg)
        answers = {}
        for camera, msg in messages.items():
            key = _key(msg)
            answers[camera] = self.probe.wait_for(
                lambda: next((m for m in self.labels[camera] if _key(m) == key), None),
                ANSWER_TIMEOUT,
            )
        return answers

    def status(self, camera: str, condition=lambda values: True, timeout=ANSWER_TIMEOUT):
        """The newest diagnostics of ``camera`` (published after this call) for which
        ``condition`` holds."""
        seen = len(self.diagnostics)
        name = f"{NODE}: {camera} segmentation"

        def find():
            for array in reversed(self.diagnostics[seen:]):
                values = diagnostics_values(array, name=name)
                if values is not None and condition(values):
                    return values
            return None

        values = self.probe.wait_for(find, timeout)
        assert values is not None, (
            f"no matching diagnostics for {camera}:\n{self.node.output()[-2000:]}"
        )
        return values

    def reset(self, service: str) -> None:
        response = self.probe.call(Trigger, self.node.topic(service))
        assert response is not None and response.success, f"{service} did not answer"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi_camera")
    checkpoint = make_tiny_memory_checkpoint(tmp / "memory.pt")
    params = write_params_file(
        tmp / "multi.yaml",
        {
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "backend": "torch",
            "cpu_threads": 1,
            "cameras": list(SIZES),
            "input_qos": "reliable",
            "frame_queue_size": 8,
            "consistency_stride": 1,
            "diagnostics_period_s": 0.2,
            "diagnostics_stale_s": STALE_S,
            "reset_on_gap_s": 1.0,
            "qos_overrides": {"/mc_aux/image": {"subscription": {"reliability": "best_effort"}}},
        },
    )
    remaps = {f"{camera}/image": f"/mc_{camera}/image" for camera in SIZES}
    remaps.update({f"{camera}/camera_info": f"/mc_{camera}/camera_info" for camera in SIZES})
    node = NodeProcess(params, tmp / "multi.log", remaps=remaps, name=NODE)
    probe = RosProbe("multi_camera_probe")
    try:
        rig = Rig(probe, node)
        for camera in ("front", "left"):
            ready = probe.wait_for(
                lambda: rig.pubs[camera].get_subscription_count() > 0 or not node.alive(),
                STARTUP_TIMEOUT,
            )
            assert ready and node.alive(), f"{NODE} did not start:\n{node.output()[-3000:]}"
            # The node must also have discovered our label subscriptions, else it skips the frame.
            answered = None
            for _ in range(20):
                answered = rig.send(camera, _frames(camera)[0])
                if answered is not None:
                    break
            assert answered is not None, node.output()[-3000:]
        yield rig
    finally:
        probe.close()
        code = node.stop(timeout=60.0)
        assert code == 0 and "Traceback" not in node.output(), node.output()[-3000:]


def test_each_camera_gets_labels_with_its_own_header_and_size(rig):
    answers = rig.send_together({"front": _frames("front")[1], "left": _frames("left")[1]})
    for camera, labels in answers.items():
        assert labels is not None, f"no labels for {camera}:\n{rig.node.output()[-2000:]}"
        assert labels.header.frame_id == f"{camera}_cam"
        assert (labels.width, labels.height, labels.encoding) == (*SIZES[camera], "mono8")
        assert _key(labels) == (
            int(rig.stamps[camera]),
            int(round((rig.stamps[camera] % 1) * 1e9)),
        )
    front = rig.status("front", lambda v: v["_hardware_id"] == "front_cam")
    assert front["camera"] == "front" and front["input_topic"] == "/mc_front/image"
    assert front["device"] == "cpu" and front["temporal_model"] == "True"


def test_frames_of_one_camera_never_touch_another_cameras_memory_or_tc(rig):
    previous, current = _frames("left")[2], _frames("left")[3]
    rig.reset("left/reset")
    fresh = rig.send("left", current)  # empty memory

    def left_after_history(other_camera_frames):
        rig.reset("left/reset")
        for _ in range(2):
            assert rig.send("left", previous) is not None
        before = rig.status("left", lambda v: v["frames_since_reset"] == "2")
        tc_messages = len(rig.consistency["left"])
        for pixels in other_camera_frames:
            assert rig.send("front", pixels) is not None
        if other_camera_frames:  # front's frames did not reach left's state
            after = rig.status("left")
            assert (after["frames_since_reset"], after["tc_pairs"], after["processed"]) == (
                before["frames_since_reset"],
                before["tc_pairs"],
                before["processed"],
            )
            assert len(rig.consistency["left"]) == tc_messages
        # The last left frame goes out in one batch with a front frame.
        return rig.send_together({"left": current, "front": _frames("front")[0]})["left"]

    alone = left_after_history([])
    with_front = left_after_history(_frames("front"))
    assert fresh is not None and alone is not None and with_front is not None
    assert bytes(alone.data) != bytes(fresh.data), (
        "the memory has no effect: this test would prove nothing"
    )
    assert bytes(with_front.data) == bytes(alone.data)
    assert rig.status("left", lambda v: v["frames_since_reset"] == "3")["tc_pairs"] == "2"


def test_a_reset_or_time_jump_on_one_camera_leaves_the_other_alone(rig):
    assert rig.send("left", _frames("left")[0]) is not None
    assert rig.send("front", _frames("front")[0]) is not None
    left = rig.status("left", lambda v: int(v["frames_since_reset"]) >= 1)
    front = rig.status("front")

    rig.reset("front/reset")
    assert rig.send("front", _frames("front")[1]) is not None
    backwards = rig.message("front", _frames("front")[2], stamp=rig.stamps["front"] - 30.0)
    rig.stamps["front"] -= 30.0
    rig.pubs["front"].publish(backwards)
    assert rig.probe.wait_for(
        lambda: any(_key(m) == _key(backwards) for m in rig.labels["front"]), ANSWER_TIMEOUT
    )

    front_after = rig.status(
        "front",
        lambda v: (
            int(v.get("resets_time_backwards", 0)) > int(front.get("resets_time_backwards", 0))
        ),
    )
    assert int(front_after["resets_service"]) == int(front.get("resets_service", 0)) + 1
    assert front_after["frames_since_reset"] == "1"  # cleared before the backwards frame
    left_after = rig.status("left")
    for key in ("frames_since_reset", "tc_pairs", "resets", "processed"):
        assert left_after[key] == left[key], key

    rig.reset("reset")  # ~/reset: every camera
    answers = rig.send_together({"front": _frames("front")[3], "left": _frames("left")[3]})
    assert all(answers.values())
    for camera in ("front", "left"):
        assert rig.status(camera, lambda v: v["frames_since_reset"] == "1")[
            "last_reset_reason"
        ].startswith("~/reset")


def test_camera_info_is_republished_with_the_labels_header_and_scaled_to_the_labels(rig):
    width, height = SIZES["front"]
    info = CameraInfo(width=2 * width, height=2 * height, distortion_model="plumb_bob")
    info.k = [200.0, 0.0, 96.0, 0.0, 180.0, 48.0, 0.0, 0.0, 1.0]
    info.p = [200.0, 0.0, 96.0, 10.0, 0.0, 180.0, 48.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info_pub = rig.probe.publisher(CameraInfo, "/mc_front/camera_info", qos_profile_sensor_data)
    assert rig.probe.wait_for_subscriber(info_pub)
    sent = {}  # labels' stamp -> labels of every frame sent so far

    def republished_for_a_sent_frame():
        """A camera_info with the stamp of labels sent, else one more camera_info and frame
        (camera_info is best effort and reaches the node independently of the frames)."""
        found = next((m for m in rig.camera_info if _key(m) in sent), None)
        if found is None:
            info_pub.publish(info)
            answer = rig.send("front", _frames("front")[0])
            assert answer is not None
            sent[_key(answer)] = answer
        return found

    republished = rig.probe.wait_for(republished_for_a_sent_frame, ANSWER_TIMEOUT, interval=0.1)
    assert republished is not None, "no ~/front/camera_info with the stamp of sent labels"
    labels = sent[_key(republished)]
    assert republished.header.frame_id == labels.header.frame_id == "front_cam"
    assert (republished.width, republished.height) == (labels.width, labels.height)
    assert list(republished.k) == [100.0, 0.0, 48.0, 0.0, 90.0, 24.0, 0.0, 0.0, 1.0]
    assert list(republished.p) == [100.0, 0.0, 48.0, 5.0, 0.0, 90.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert republished.distortion_model == "plumb_bob"


def test_a_camera_without_subscribers_is_not_segmented_until_someone_subscribes(rig):
    before = rig.status("idle")
    for pixels in _frames("idle", 3):
        rig.pubs["idle"].publish(rig.message("idle", pixels))
    skipped = rig.status("idle", lambda v: int(v["received"]) == int(before["received"]) + 3)
    assert skipped["processed"] == "0"
    assert int(skipped["skipped_no_subscriber"]) == int(before["skipped_no_subscriber"]) + 3
    assert skipped["_message"] == "no subscriber on any output: inference skipped"

    labels = rig.probe.collect(Image, rig.node.topic("idle/labels"))
    rig.labels["idle"] = labels
    answered = None
    for _ in range(20):  # until the node has discovered the new subscription
        answered = rig.send("idle", _frames("idle")[0])
        if answered is not None:
            break
    assert answered is not None
    resumed = rig.status("idle", lambda v: int(v["processed"]) >= 1)
    assert resumed["resets_idle"] == "1" and "skipped" in resumed["last_reset_reason"]


def test_input_qos_follows_qos_overrides_and_an_incompatible_publisher_is_logged(rig):
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    aux = rig.probe.publisher(
        Image, "/mc_aux/image", best_effort
    )  # override: best effort -> matches
    left = rig.probe.publisher(
        Image, "/mc_left/image", best_effort
    )  # reliable subscription -> incompatible
    assert rig.probe.wait_for_subscriber(aux), (
        "the qos_overrides parameter did not make aux best effort"
    )
    logged = rig.probe.wait_for(
        lambda: "offers QoS incompatible" in rig.node.output(), ANSWER_TIMEOUT
    )
    assert logged, rig.node.output()[-2000:]
    lines = [line for line in rig.node.output().splitlines() if "offers QoS incompatible" in line]
    assert all("/mc_left/image" in line and "RELIABILITY" in line for line in lines), lines
    assert left.get_subscription_count() == 0
    request = GetParameters.Request(
        names=[
            "qos_overrides./mc_aux/image.subscription.reliability",
            "qos_overrides./mc_left/image.subscription.reliability",
        ]
    )
    response = rig.probe.call(GetParameters, rig.node.topic("get_parameters"), request)
    assert [v.string_value for v in response.values] == ["best_effort", "reliable"]


def test_a_camera_that_stops_is_reported_stale(rig):
    assert rig.send("front", _frames("front")[1]) is not None
    live = rig.status("front", lambda v: float(v["seconds_since_frame"]) < 0.5 * STALE_S)
    assert live["_level"] == 0, live
    stale = rig.status("front", lambda v: v["_level"] == 3, timeout=STALE_S + ANSWER_TIMEOUT)
    assert float(stale["seconds_since_frame"]) >= STALE_S
    assert stale["_message"].startswith("no image on /mc_front/image")
