"""video_seg_lifecycle_node as a real ROS 2 process, driven through ~/change_state and ~/get_state.

Two processes start in parallel: ``seg_managed`` (a usable configuration; ``autostart`` false, so
it starts unconfigured) goes through configure -> activate -> deactivate -> activate -> deactivate
-> cleanup -> configure -> activate -> shutdown, with labels flowing only while active;
``seg_broken`` (a missing checkpoint) shows that a failing configure answers FAILURE, says why in
the log and leaves the node unconfigured.
"""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
pytest.importorskip(
    "lifecycle_msgs", reason="lifecycle_msgs (ros-lifecycle-msgs) is not installed"
)

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_support import (  # noqa: E402
    NodeProcess,
    RosProbe,
    image_message,
    lifecycle_node_command,
    make_tiny_checkpoint,
    write_params_file,
)

pytestmark = pytest.mark.ros

STARTUP_TIMEOUT = 240.0
ANSWER_TIMEOUT = 30.0
FRAME = (64, 48)  # width, height
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _frame(seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (FRAME[1], FRAME[0], 3), dtype=np.uint8)


def _key(msg):
    return msg.header.stamp.sec, msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    checkpoint = make_tiny_checkpoint(tmp / "tiny.pt")
    common = {
        "device": "cpu",
        "backend": "torch",
        "cpu_threads": 1,
        "input_qos": "reliable",
        "frame_queue_size": 8,
        "diagnostics_period_s": 0.3,
    }
    managed = NodeProcess(
        write_params_file(tmp / "managed.yaml", {**common, "checkpoint": str(checkpoint)}),
        tmp / "managed.log",
        remaps={"image": "/lc_cam/image"},
        name="seg_managed",
        command=lifecycle_node_command(),
    )
    broken = NodeProcess(
        write_params_file(tmp / "broken.yaml", {**common, "checkpoint": str(tmp / "missing.pt")}),
        tmp / "broken.log",
        name="seg_broken",
        command=lifecycle_node_command(),
    )
    probe = RosProbe("lifecycle_probe")
    try:
        yield probe, managed, broken
    finally:
        probe.close()
        for node in (managed, broken):
            node.stop()


def _state(probe, node) -> int:
    response = probe.call(GetState, node.topic("get_state"), timeout=STARTUP_TIMEOUT)
    assert response is not None, (
        f"{node.name}: ~/get_state did not answer:\n{node.output()[-2000:]}"
    )
    return response.current_state.id


def _change(probe, node, transition: int) -> bool:
    response = probe.call(
        ChangeState,
        node.topic("change_state"),
        ChangeState.Request(transition=Transition(id=transition)),
        timeout=STARTUP_TIMEOUT,
    )
    assert response is not None, (
        f"{node.name}: ~/change_state did not answer:\n{node.output()[-2000:]}"
    )
    return response.success


def test_labels_flow_only_while_the_node_is_active(nodes):
    probe, node, _ = nodes
    publisher = probe.publisher(Image, "/lc_cam/image", RELIABLE)
    labels = probe.collect(Image, node.topic("labels"))
    stamp = [100.0]

    def publish(seed):
        stamp[0] = round(stamp[0] + 0.05, 3)
        msg = image_message(_frame(seed), "rgb8", stamp[0], frame_id="lc")
        publisher.publish(msg)
        return msg

    def answered(msg, timeout=ANSWER_TIMEOUT):
        return probe.wait_for(lambda: any(_key(m) == _key(msg) for m in labels), timeout)

    def activate_and_answer():
        assert _change(probe, node, Transition.TRANSITION_ACTIVATE)
        assert _state(probe, node) == State.PRIMARY_STATE_ACTIVE
        assert probe.wait_for_subscriber(publisher, ANSWER_TIMEOUT), node.output()[-2000:]
        for attempt in range(20):  # until the node has discovered our labels subscription
            if answered(publish(attempt), 2.0):
                return
        raise AssertionError(f"no labels while active:\n{node.output()[-2000:]}")

    def deactivate_and_send():
        """Deactivate, then publish frames that must never be answered."""
        assert _change(probe, node, Transition.TRANSITION_DEACTIVATE)
        assert _state(probe, node) == State.PRIMARY_STATE_INACTIVE
        assert probe.wait_for(lambda: publisher.get_subscription_count() == 0, ANSWER_TIMEOUT), (
            "the image subscription outlived deactivate"
        )
        return [publish(seed) for seed in range(3)]

    assert _state(probe, node) == State.PRIMARY_STATE_UNCONFIGURED
    autostart = probe.call(
        GetParameters, node.topic("get_parameters"), GetParameters.Request(names=["autostart"])
    )
    assert autostart is not None and autostart.values[0].bool_value is False  # the executable's
    assert publisher.get_subscription_count() == 0
    assert _change(probe, node, Transition.TRANSITION_CONFIGURE)
    assert _state(probe, node) == State.PRIMARY_STATE_INACTIVE
    assert publisher.get_subscription_count() == 0  # configured, not yet subscribed

    activate_and_answer()
    unanswered = deactivate_and_send()
    activate_and_answer()  # a frame sent after re-activation is answered ...
    unanswered += deactivate_and_send()
    # ... and nothing sent while inactive ever was (it would have come first: the queue is FIFO).
    assert not [m for m in unanswered if any(_key(m) == _key(label) for label in labels)]

    assert _change(probe, node, Transition.TRANSITION_CLEANUP)
    assert _state(probe, node) == State.PRIMARY_STATE_UNCONFIGURED
    assert probe.wait_for(
        lambda: probe.node.count_publishers(node.topic("labels")) == 0, ANSWER_TIMEOUT
    ), "cleanup left the labels publisher"
    assert "cleanup: done" in node.output()

    assert _change(probe, node, Transition.TRANSITION_CONFIGURE)  # the model is built again
    activate_and_answer()
    assert _change(probe, node, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert node.wait_exit(ANSWER_TIMEOUT) == 0, node.output()[-2000:]
    assert "Traceback" not in node.output()


def test_a_failing_configure_answers_failure_with_the_reason_and_stays_unconfigured(nodes):
    probe, _, node = nodes
    assert _state(probe, node) == State.PRIMARY_STATE_UNCONFIGURED
    assert not _change(probe, node, Transition.TRANSITION_CONFIGURE)
    assert _state(probe, node) == State.PRIMARY_STATE_UNCONFIGURED
    lines = [line for line in node.output().splitlines() if "configure failed" in line]
    assert len(lines) == 1 and "[ERROR]" in lines[0] and "checkpoint not found" in lines[0], (
        node.output()
    )
    assert _change(probe, node, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert node.wait_exit(ANSWER_TIMEOUT) == 0, node.output()[-2000:]
