"""launch_testing: launch/video_seg.launch.py starts a single-camera node, a two-camera node and
a managed node (``lifecycle:=true``, which activates itself through its ``autostart`` parameter)
that segment frames and exit cleanly.

Needs a ROS 2 install with launch, launch_ros and launch_testing (``colcon test`` or
``launch_test test/test_video_seg_launch.py``; plain pytest also runs it through the
launch_testing pytest plugin). Without them, this module is skipped with that reason; the same
behaviour is covered on pip-only machines by the rclpy process tests (test_node_ros.py,
test_node_multi_camera.py, test_node_lifecycle.py, test_replay_roundtrip.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

_REASON = (
    "launch / launch_ros / launch_testing are not installed (pip-only ROS 2); this launch_testing "
    "test runs on a ROS 2 install (colcon test)"
)
launch = pytest.importorskip("launch", reason=_REASON)
launch_ros = pytest.importorskip("launch_ros", reason=_REASON)
pytest.importorskip("launch_testing", reason=_REASON)

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_support import image_message, make_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.ros

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "video_seg.launch.py"
INPUT_TOPIC = "/launch_test/image_raw"
NAMESPACE = "launch_test"
LABELS_TOPIC = f"/{NAMESPACE}/video_seg_node/labels"
FRAME_SIZE = (96, 64)  # width, height
MULTI_NAMESPACE = "launch_multi"
LIFECYCLE_NAMESPACE = "launch_lifecycle"
LIFECYCLE_INPUT_TOPIC = "/launch_lifecycle_in/image"
#: camera -> (input topic given by image_topics, frame size)
MULTI_CAMERAS = {
    "front": ("/launch_multi_in/front", (96, 64)),
    "left": ("/launch_multi_in/left", (64, 48)),
}


@pytest.mark.launch_test
def generate_test_description():
    checkpoint = make_tiny_checkpoint(
        Path(tempfile.mkdtemp(prefix="video_seg_launch_")) / "tiny.pt"
    )
    node_launch = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "image": INPUT_TOPIC,
            "namespace": NAMESPACE,
            "checkpoint": str(checkpoint),
            "device": "cpu",
        }.items(),
    )
    multi_launch = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "namespace": MULTI_NAMESPACE,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "cameras": "[" + ",".join(MULTI_CAMERAS) + "]",
            "image_topics": "[" + ",".join(t for t, _ in MULTI_CAMERAS.values()) + "]",
        }.items(),
    )
    managed_launch = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={
            "image": LIFECYCLE_INPUT_TOPIC,
            "namespace": LIFECYCLE_NAMESPACE,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "lifecycle": "true",
        }.items(),
    )
    return launch.LaunchDescription(
        [node_launch, multi_launch, managed_launch, launch_testing.actions.ReadyToTest()]
    ), {}


class TestNodeSegmentsFrames(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.probe = rclpy.create_node("video_seg_launch_probe")

    @classmethod
    def tearDownClass(cls):
        cls.probe.destroy_node()
        rclpy.shutdown()

    def test_labels_carry_the_input_stamp_and_size_and_diagnostics_report_them(self):
        labels, diagnostics = [], []
        self.probe.create_subscription(
            Image,
            LABELS_TOPIC,
            labels.append,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        publisher = self.probe.create_publisher(Image, INPUT_TOPIC, 10)
        rng = np.random.default_rng(0)
        sent = []
        deadline = time.monotonic() + 120.0  # model load on a slow CI machine
        while time.monotonic() < deadline and len(labels) < 3:
            stamp = 1000.0 + len(sent) * 0.1
            frame = rng.integers(0, 256, (FRAME_SIZE[1], FRAME_SIZE[0], 3), dtype=np.uint8)
            if publisher.get_subscription_count() > 0:
                publisher.publish(image_message(frame, "rgb8", stamp))
                sent.append(round(stamp * 1e9))
            rclpy.spin_once(self.probe, timeout_sec=0.1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not any(
            "segmentation" in s.name
            and any(kv.key == "processed" and kv.value not in ("", "0") for kv in s.values)
            for d in diagnostics
            for s in d.status
        ):
            rclpy.spin_once(self.probe, timeout_sec=0.1)

        self.assertGreaterEqual(len(labels), 3, "no labels from the launched node")
        for message in labels:
            stamp = message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
            self.assertIn(stamp, sent)
            self.assertEqual((message.width, message.height), FRAME_SIZE)
            self.assertEqual(message.encoding, "mono8")
        statuses = [s for d in diagnostics for s in d.status if "segmentation" in s.name]
        self.assertTrue(statuses, "no segmentation status on /diagnostics")
        processed = max(
            int(kv.value)
            for s in statuses
            for kv in s.values
            if kv.key == "processed" and kv.value.isdigit()
        )
        self.assertGreaterEqual(processed, 1)

    def test_one_process_serves_two_cameras_each_with_its_own_header_and_size(self):
        labels = {camera: [] for camera in MULTI_CAMERAS}
        publishers = {}
        for camera, (topic, _) in MULTI_CAMERAS.items():
            self.probe.create_subscription(
                Image,
                f"/{MULTI_NAMESPACE}/video_seg_node/{camera}/labels",
                labels[camera].append,
                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
            )
            publishers[camera] = self.probe.create_publisher(Image, topic, 10)
        rng = np.random.default_rng(1)
        deadline = time.monotonic() + 120.0
        count = 0
        while time.monotonic() < deadline and not all(len(v) >= 2 for v in labels.values()):
            count += 1
            for camera, (_, (width, height)) in MULTI_CAMERAS.items():
                if publishers[camera].get_subscription_count() > 0:
                    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                    publishers[camera].publish(
                        image_message(frame, "rgb8", 1000.0 + count * 0.1, frame_id=camera)
                    )
            rclpy.spin_once(self.probe, timeout_sec=0.1)
        for camera, (_, size) in MULTI_CAMERAS.items():
            self.assertGreaterEqual(len(labels[camera]), 2, f"no labels for camera {camera}")
            for message in labels[camera]:
                self.assertEqual(message.header.frame_id, camera)
                self.assertEqual((message.width, message.height), size)

    def test_the_managed_node_activates_itself_with_autostart(self):
        labels = []
        self.probe.create_subscription(
            Image,
            f"/{LIFECYCLE_NAMESPACE}/video_seg_node/labels",
            labels.append,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        publisher = self.probe.create_publisher(Image, LIFECYCLE_INPUT_TOPIC, 10)
        rng = np.random.default_rng(2)
        deadline = time.monotonic() + 120.0
        count = 0
        while time.monotonic() < deadline and not labels:
            count += 1
            if publisher.get_subscription_count() > 0:  # subscribed only once active
                frame = rng.integers(0, 256, (FRAME_SIZE[1], FRAME_SIZE[0], 3), dtype=np.uint8)
                publisher.publish(image_message(frame, "rgb8", 1000.0 + count * 0.1))
            rclpy.spin_once(self.probe, timeout_sec=0.1)
        self.assertTrue(labels, "the lifecycle node started with autostart:=true never answered")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_nodes_exit_cleanly(self, proc_info):
        # launch stops them with SIGINT, which the node turns into a normal exit: status 0 only.
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
