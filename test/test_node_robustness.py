"""video_seg_node keeps going and keeps count when things go wrong, as a real ROS 2 process.

One ``video_seg_node`` (the plain executable: ``autostart`` true, so it is already active and
still answers lifecycle transitions) serves two cameras, ``front`` and ``back``:
- frames on which processing fails (2x2 pixels: the TC metric's optical flow raises) reject
  only ``front``'s frames, as ``internal_error``; ``back`` is answered in the same batches;
- the camera named in diagnostics (``hardware_id``) is the frame_id of the last processed frame,
  not of a rejected one;
- every received frame is accounted for (processed, skipped, rejected or dropped), also the
  frames still waiting when the node is deactivated.
"""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
pytest.importorskip(
    "lifecycle_msgs", reason="lifecycle_msgs (ros-lifecycle-msgs) is not installed"
)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_support import (  # noqa: E402
    NodeProcess,
    RosProbe,
    newest_diagnostics,
    image_message,
    make_tiny_checkpoint,
    write_params_file,
)

NODE = "seg_robust"
CAMERAS = ("front", "back")
FRAME = (64, 48)  # width, height
STARTUP_TIMEOUT = 240.0
ANSWER_TIMEOUT = 30.0
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _pixels(seed: int, scale: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (FRAME[1] * scale, FRAME[0] * scale, 3), dtype=np.uint8)


def _key(msg):
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def _accounted(values) -> int:
    return sum(
        int(values[key]) for key in ("processed", "dropped", "rejected", "skipped_no_subscriber")
    )


class Rig:
    def __init__(self, probe: RosProbe, node: NodeProcess):
        self.probe, self.node = probe, node
        self.stamp = 500.0
        self.pubs = {c: probe.publisher(Image, f"/rb_{c}/image", RELIABLE) for c in CAMERAS}
        self.labels = {c: probe.collect(Image, node.topic(f"{c}/labels")) for c in CAMERAS}
        self.diagnostics = probe.collect(DiagnosticArray, "/diagnostics")

    def publish(self, camera: str, pixels: np.ndarray, frame_id: str):
        self.stamp = round(self.stamp + 0.05, 3)
        msg = image_message(pixels, "rgb8", self.stamp, frame_id=frame_id)
        self.pubs[camera].publish(msg)
        return msg

    def answered(self, camera: str, msg, timeout: float = ANSWER_TIMEOUT):
        return self.probe.wait_for(
            lambda: any(_key(m) == _key(msg) for m in self.labels[camera]), timeout
        )

    def status(self, camera: str, condition=lambda values: True, timeout=ANSWER_TIMEOUT):
        """The newest diagnostics of ``camera`` published after this call that satisfy
        ``condition``."""
        seen = len(self.diagnostics)

        name = f"{NODE}: {camera} segmentation"
        values = self.probe.wait_for(
            lambda: newest_diagnostics(self.diagnostics, name, condition, seen), timeout
        )
        assert values is not None, (
            f"no matching diagnostics for {camera}:\n{self.node.output()[-3000:]}"
        )
        return values

    def change(self, transition: int) -> bool:
        response = self.probe.call(
            ChangeState,
            self.node.topic("change_state"),
            ChangeState.Request(transition=Transition(id=transition)),
        )
        assert response is not None, self.node.output()[-2000:]
        return response.success

    def state(self) -> int:
        response = self.probe.call(GetState, self.node.topic("get_state"))
        assert response is not None, self.node.output()[-2000:]
        return response.current_state.id


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robustness")
    checkpoint = make_tiny_checkpoint(tmp / "tiny.pt")
    params = write_params_file(
        tmp / "robust.yaml",
        {
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "backend": "torch",
            "cpu_threads": 1,
            "cameras": list(CAMERAS),
            "input_qos": "reliable",
            "frame_queue_size": 8,
            "diagnostics_period_s": 0.2,
            "diagnostics_stale_s": 0.0,
            "reset_on_gap_s": 0.0,
            "consistency_stride": 1,
        },
    )
    remaps = {f"{c}/image": f"/rb_{c}/image" for c in CAMERAS}
    remaps.update({f"{c}/camera_info": f"/rb_{c}/camera_info" for c in CAMERAS})
    node = NodeProcess(params, tmp / "robust.log", remaps=remaps, name=NODE)
    probe = RosProbe("robustness_probe")
    try:
        rig = Rig(probe, node)
        for camera in CAMERAS:
            ready = probe.wait_for(
                lambda: rig.pubs[camera].get_subscription_count() > 0 or not node.alive(),
                STARTUP_TIMEOUT,
            )
            assert ready and node.alive(), f"{NODE} did not start:\n{node.output()[-3000:]}"
            # The node must also have discovered our label subscriptions, else it skips frames.
            for attempt in range(20):
                if rig.answered(
                    camera, rig.publish(camera, _pixels(attempt), f"{camera}_cam"), 2.0
                ):
                    break
            else:
                raise AssertionError(node.output()[-3000:])
        yield rig
    finally:
        probe.close()
        code = node.stop(timeout=60.0)
        assert code == 0, node.output()[-3000:]


def test_the_plain_executable_starts_active_with_a_read_only_autostart(rig):
    assert rig.state() == State.PRIMARY_STATE_ACTIVE
    response = rig.probe.call(
        GetParameters, rig.node.topic("get_parameters"), GetParameters.Request(names=["autostart"])
    )
    assert response is not None and response.values[0].bool_value is True
    refused = rig.probe.call(
        SetParameters,
        rig.node.topic("set_parameters"),
        SetParameters.Request(
            parameters=[
                ParameterMsg(name="autostart", value=ParameterValue(type=1, bool_value=False))
            ]
        ),
    )
    assert refused is not None and not refused.results[0].successful
    assert "read-only" in refused.results[0].reason


def test_a_failure_on_one_camera_rejects_only_its_frames_and_keeps_the_last_good_frame_id(rig):
    # 2x2 frames are valid input, but the online TC's optical flow (OpenCV DIS) fails on the
    # second one: an error the node has no special case for.
    tiny = np.full((2, 2, 3), 128, dtype=np.uint8)
    assert rig.answered("front", rig.publish("front", tiny, "front_tiny_ok"))
    before = rig.status("front", lambda v: v["_hardware_id"] == "front_tiny_ok")
    failing = []
    for seed in range(4):
        failing.append(rig.publish("front", tiny, "front_failing"))
        back = rig.publish("back", _pixels(20 + seed), "back_cam")  # often in the same batch
        assert rig.answered("back", back), rig.node.output()[-3000:]  # the other camera goes on
    front = rig.status(
        "front",
        lambda v: (
            int(v.get("rejected_internal_error", 0)) >= len(failing)
            and _accounted(v) == int(v["received"])
        ),
    )
    assert "OpenCV" in front["last_reject_reason"], front["last_reject_reason"]
    assert front["_hardware_id"] == "front_tiny_ok"  # rejected frames do not rename the camera
    assert int(front["processed"]) == int(before["processed"])
    assert not any(rig.answered("front", msg, 0.2) for msg in failing)
    back_status = rig.status("back", lambda v: _accounted(v) == int(v["received"]))
    assert (
        "rejected_internal_error" not in back_status and back_status["_hardware_id"] == "back_cam"
    )
    assert "(internal_error)" in rig.node.output() and rig.node.alive()

    # A full-size frame (a size change resets the camera's state) goes through again.
    assert rig.answered("front", rig.publish("front", _pixels(30), "front_again"))
    rig.status("front", lambda v: v["_hardware_id"] == "front_again")


def test_frames_waiting_at_deactivate_are_counted_as_dropped(rig):
    large = np.ascontiguousarray(np.tile(_pixels(40), (6, 6, 1)))
    rig.publish("front", large, "front_cam")  # keeps the worker busy while the others queue
    for seed in range(6):
        rig.publish("front", _pixels(50 + seed), "front_cam")
        rig.publish("back", _pixels(60 + seed), "back_cam")
    assert rig.change(Transition.TRANSITION_DEACTIVATE)
    assert rig.state() == State.PRIMARY_STATE_INACTIVE
    for camera in CAMERAS:
        values = rig.status(camera, lambda v: v["_message"].startswith("inactive"))
        assert _accounted(values) == int(values["received"]), values
    assert rig.change(Transition.TRANSITION_ACTIVATE)
    assert rig.state() == State.PRIMARY_STATE_ACTIVE
    for seed in range(20):  # active again: frames are answered
        if rig.answered("back", rig.publish("back", _pixels(70 + seed), "back_cam"), 1.0):
            break
    else:
        raise AssertionError(rig.node.output()[-3000:])
