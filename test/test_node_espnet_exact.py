"""With real published weights, the node publishes exactly the core engine's labels.

Skips without ../shared. The full 2048x1024 frame crosses process boundaries, so this also checks
that the Fast DDS large-image profile (config/fastdds_large_images.xml) delivers it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from shared_data import require_shared_file  # noqa: E402
from ros_support import NodeProcess, RosProbe, image_message, write_params_file  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FRAME = "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"
GROUND_TRUTH = "data/cityscapes_val/gtFine/frankfurt_000001_058914_gtFine_labelTrainIds.png"
WEIGHTS = "weights/espnet/espnet_p_2_q_8.pth"


def test_published_labels_equal_the_engine_output_for_a_real_cityscapes_frame(shared, tmp_path):
    from sensor_msgs.msg import Image

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.frames import read_label, read_rgb
    from video_seg_ros.weights_import import import_weights

    frame_path = require_shared_file(shared, FRAME)
    weights = require_shared_file(shared, WEIGHTS)
    checkpoint = import_weights("espnet", "cityscapes", weights)
    checkpoint_path = checkpoint.save(tmp_path / "espnet_city.pt")
    params = write_params_file(
        tmp_path / "params.yaml",
        {
            "checkpoint": str(checkpoint_path),
            "device": "cpu",
            "backend": "torch",
            "precision": "fp32",
            "input_qos": "reliable",
            "frame_queue_size": 2,
            "consistency_metric": False,
            "publish_color": False,
        },
    )
    node = NodeProcess(
        params, tmp_path / "node.log", remaps={"image": "/exact_cam/image"}, name="seg_exact"
    )
    try:
        frame = read_rgb(frame_path)  # (1024, 2048, 3) RGB
        expected = (
            SegmentationEngine(checkpoint, device="cpu", precision="fp32", backend="torch")
            .segment(frame, "rgb")
            .labels
        )
        with RosProbe("exact_probe") as probe:
            received = probe.collect(Image, node.topic("labels"))
            publisher = probe.publisher(Image, "/exact_cam/image", 2)
            assert (
                probe.wait_for(
                    lambda: publisher.get_subscription_count() > 0 or not node.alive(), 300.0
                )
                and node.alive()
            ), node.output()[-3000:]
            # Until the node has discovered the labels subscription it skips frames
            # (nobody listens).
            for attempt in range(10):
                publisher.publish(
                    image_message(frame, "rgb8", 1.5 + attempt, frame_id="frankfurt")
                )
                if probe.wait_for(lambda: received, 30.0):
                    break
            assert received, "no labels:\n" + node.output()[-3000:]
    finally:
        code = node.stop(timeout=60.0)
    assert code == 0, node.output()[-3000:]
    labels_msg = received[0]
    assert (labels_msg.width, labels_msg.height, labels_msg.header.frame_id) == (
        2048,
        1024,
        "frankfurt",
    )
    published = np.frombuffer(labels_msg.data, np.uint8).reshape(1024, 2048)
    assert np.array_equal(published, expected), (
        f"{np.mean(published != expected):.2%} pixels differ"
    )
    truth = read_label(require_shared_file(shared, GROUND_TRUTH), "trainids")
    valid = truth != 255
    assert np.mean(published[valid] == truth[valid]) > 0.90  # the published model, working
