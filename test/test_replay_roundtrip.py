"""Bag replay with real ROS 2 processes: video-seg-play -> video_seg_node -> video-seg-record,
and the demo.

Every process is a real rclpy process in a private ROS domain (test/ros_support.py); the model is a
tiny random-init checkpoint, so the tests measure plumbing (counts, stamps, sizes, exit codes), not
accuracy.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip(
    "rclpy",
    reason="rclpy is not installed: the replay tests need ROS 2 (pip wheels or a sourced install)",
)

from checkpoints import make_tiny_espnet_checkpoint  # noqa: E402
from ros_support import NodeProcess, RosProbe, ros_environment, write_params_file  # noqa: E402

from video_seg_ros.bags import read_images  # noqa: E402
from video_seg_ros.engine import SegmentationEngine  # noqa: E402
from video_seg_ros.evaluation import evaluate_recording  # noqa: E402
from video_seg_ros.streams import BagStream  # noqa: E402
from video_seg_ros.processes import LoggedProcess  # noqa: E402
from video_seg_ros.tools import demo, demo_pipeline, make_bag  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


def _frames_folder(root: Path, count: int, size=(64, 48)) -> Path:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for index in range(count):
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        cv2.imwrite(
            str(root / f"frame_{index:04d}.png"),
            cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC),
        )
    return root


def _bag(tmp_path: Path, count: int, rate: float = 10.0) -> Path:
    bag = tmp_path / "input_bag"
    assert (
        make_bag.main(
            [
                str(_frames_folder(tmp_path / "frames", count)),
                "-o",
                str(bag),
                "--rate",
                str(rate),
                "--quiet",
            ]
        )
        == 0
    )
    return bag


def _start(module: str, args: list[str], log: Path) -> LoggedProcess:
    return LoggedProcess(
        [sys.executable, "-m", module, *args], log, env=ros_environment(), cwd=REPO
    )


def _wait(process: LoggedProcess, timeout: float) -> int:
    """The exit code; a process still running after ``timeout`` is stopped and fails the test."""
    code = process.wait(timeout)
    if code is None:
        process.stop()
        pytest.fail(f"{process.command[2]} did not finish in {timeout} s:\n{process.output()}")
    process.stop()  # already exited: closes its log file
    return code


def test_player_publishes_every_frame_with_its_stamp_and_pixels_paced_by_the_bag(tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    bag = _bag(tmp_path, 6, rate=10.0)
    expected = list(read_images(bag))
    with RosProbe("player_probe") as probe:
        received = probe.collect(
            Image,
            "/camera/image_raw",
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
            keep=lambda m: (
                m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                m.height,
                m.width,
                bytes(m.data),
            ),
        )
        log = tmp_path / "player.log"
        # --rate is in Hz: the 10 Hz bag played at 20 Hz, i.e. twice as fast.
        player = _start(
            "video_seg_ros.tools.play_bag",
            [
                str(bag),
                "--rate",
                "20",
                "--wait-for-subscribers",
                "20",
                "--log",
                str(tmp_path / "play.json"),
            ],
            log,
        )
        assert _wait(player, 60) == 0, log.read_text()
        assert probe.wait_for(lambda: len(received) >= 6, 10), f"got {len(received)} of 6 frames"
    assert [r[0] for r in received] == [e.stamp_ns for e in expected]
    for (_, height, width, data), image in zip(received, expected):
        assert (height, width) == image.pixels.shape[:2]
        assert data == image.pixels.tobytes()
    report = json.loads((tmp_path / "play.json").read_text())
    assert report["published"] == {"/camera/image_raw": 6}
    assert report["speed"] == pytest.approx(2.0)
    publish_gaps = np.diff([m["publish_ns"] for m in report["messages"]]) / 1e6
    assert (publish_gaps > 35).all(), publish_gaps  # 100 ms apart in the bag, played twice as fast


def test_player_node_recorder_round_trip_loses_no_frame(tmp_path):
    frames = 8
    bag = _bag(tmp_path, frames)
    params = write_params_file(
        tmp_path / "params.yaml",
        {
            "checkpoint": str(make_tiny_espnet_checkpoint(tmp_path / "tiny.pt")),
            "device": "cpu",
            "input_qos": "reliable",
            "frame_queue_size": 50,
            "consistency_stride": 1,
        },
    )
    ready, recorded, pngs = tmp_path / "ready", tmp_path / "recorded", tmp_path / "pngs"
    recorder_log = tmp_path / "recorder.log"
    recorder = _start(
        "video_seg_ros.tools.record",
        [
            "-o",
            str(recorded),
            "--png",
            str(pngs),
            "--color",
            "--consistency",
            "--limit",
            str(frames),
            "--timeout",
            "120",
            "--wait",
            "90",
            "--ready-file",
            str(ready),
            "--report",
            str(tmp_path / "record.json"),
        ],
        recorder_log,
    )
    node = NodeProcess(params, tmp_path / "node.log", remaps={"image": "/camera/image_raw"})
    try:
        # The ready file appears once every subscription reported its DDS match with the node.
        assert RosProbe.wait_for(ready.exists, 90), (
            f"recorder never matched the node:\n{node.output()}"
        )
        player_log = tmp_path / "player.log"
        player = _start(
            "video_seg_ros.tools.play_bag", [str(bag), "--wait-for-subscribers", "20"], player_log
        )
        assert _wait(player, 60) == 0, player_log.read_text()
        assert _wait(recorder, 90) == 0, recorder_log.read_text()
    finally:
        node_code = node.stop()
        recorder.stop(signal.SIGKILL, timeout=5)
    assert node_code == 0, node.output()

    inputs = list(read_images(bag))
    labels = list(read_images(recorded, "/video_seg_node/labels"))
    assert [image.stamp_ns for image in labels] == [image.stamp_ns for image in inputs]
    for image in labels:
        assert image.encoding == "mono8" and image.pixels.shape == (48, 64)
        assert (
            image.pixels.max() < 19 or image.pixels.max() == 255
        )  # class ids of the 19-class model
        png = cv2.imread(
            str(pngs / "video_seg_node__labels" / f"{image.stamp_ns:019d}.png"),
            cv2.IMREAD_UNCHANGED,
        )
        np.testing.assert_array_equal(png, image.pixels)
    colours = list(read_images(recorded, "/video_seg_node/color"))
    assert colours and {c.stamp_ns for c in colours} <= {i.stamp_ns for i in inputs}
    assert all(c.pixels.shape == (48, 64, 3) for c in colours)
    index = json.loads((pngs / "index.json").read_text())
    assert index["topics"]["/video_seg_node/labels"]["count"] == frames
    consistency = (pngs / "video_seg_node__consistency.jsonl").read_text().splitlines()
    assert consistency and all(0.0 <= json.loads(line)["data"] <= 1.0 for line in consistency)


def test_demo_replays_the_sample_through_the_node_and_writes_its_reports(tmp_path, capsys):
    checkpoint = make_tiny_espnet_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "demo"
    code = demo.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--limit",
            "6",
            "--size",
            "64x32",
            "--replay-hz",
            "10",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed
    # --quiet: no progress bar of the replay, the segmenting or the scoring
    assert "it/s" not in captured.err and "frame/s" not in captured.err, captured.err
    assert "segmented:" not in captured.err and "score:" not in captured.err
    assert "6/6 segmented, 0 lost" in printed
    for line in (  # the node's own latency is reported apart from the wait in the queue
        "latency     publish -> labels received, less the queue wait: p50 ",
        "queue wait  behind earlier frames",
        "end to end  publish -> labels received: p50 ",
    ):
        assert line in printed
    summary = json.loads((out / "summary.json").read_text())
    results = summary["results"]
    assert results["frames_lost"] == 0 and results["frames_segmented"] == 6
    # The ROS round trip changes no label: the figures equal the in-process engine's on the same
    # frames, scored by the same evaluator.
    engine = SegmentationEngine(str(checkpoint), device="cpu", precision="fp32")
    sample_labels = _sample_labels(6, (64, 32))
    frames = list(BagStream(out / "input_bag", "/camera/image_raw", sample_labels))
    predictions = {frame.stamp_ns: engine.segment(frame.rgb).labels for frame in frames}
    expected = evaluate_recording(frames, predictions, engine.class_names)
    assert results["tc_pairs"] == 5 and results["tc"] == round(expected.tc, 5)
    assert results["labelled_frames"] == 6 and results["miou"] == round(expected.miou, 5)
    # The node's own model time is a part of every frame's publish -> labels latency.
    latency = results["latency_ms"]
    assert 0 < results["node_model_ms_p50"] <= latency["p50"] <= latency["p95"]
    for key in ("latency_ms", "queue_wait_ms", "end_to_end_ms"):
        assert set(results[key]) == {"mean", "p50", "p95", "max"}, key
    assert results["end_to_end_ms"]["max"] >= latency["max"] > 0
    logs = out / "logs"
    assert {"node.log", "recorder.log", "player.log"} <= {p.name for p in logs.iterdir()}
    assert re.search(
        demo_pipeline.RECORDER_READY_PATTERN, (logs / "recorder.log").read_text(), re.MULTILINE
    )
    assert summary["exit_codes"] == {"player": 0, "node": 0, "recorder": 0}
    assert (
        summary["precision"] == "fp32" and summary["backend"] and summary["cpu"]
    )  # figures are fp32 by default
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, frame = video.read()
    assert ok and frame.shape == (32, 64, 3)
    plot = cv2.imread(str(out / "tc_over_time.png"))
    assert plot is not None and plot.shape[1] > 400
    markdown = (out / "summary.md").read_text()
    assert "TC over time" in markdown and "queue wait" in markdown


def _sample_labels(count: int, size: tuple[int, int]) -> dict:
    """Frame key -> labels of the demo's synthetic sample (as the demo generates it at 17 Hz)."""
    from video_seg_ros.synthetic import DEMO_SEED, demo_sequence, frame_stem

    return {
        frame_stem(DEMO_SEED, frame.index): frame.labels
        for frame in demo_sequence(num_frames=count, width=size[0], height=size[1], fps=17.0)
    }


def test_player_and_recorder_reject_bad_arguments_with_a_clear_message(tmp_path):
    bag = _bag(tmp_path, 1)
    log = tmp_path / "player.log"
    player = _start("video_seg_ros.tools.play_bag", [str(bag), "--topic", "/no/such/topic"], log)
    assert _wait(player, 60) == 1  # run-time failure
    assert (
        "has no topic /no/such/topic" in log.read_text() and "/camera/image_raw" in log.read_text()
    )
    log = tmp_path / "player_dir.log"
    player = _start("video_seg_ros.tools.play_bag", [str(tmp_path / "frames")], log)
    assert _wait(player, 60) == 1
    assert "not a rosbag2 folder" in log.read_text()
    log = tmp_path / "player_usage.log"
    player = _start("video_seg_ros.tools.play_bag", [str(bag), "--speed", "0"], log)
    assert _wait(player, 60) == 2  # usage error
    assert "must be positive" in log.read_text()
    log = tmp_path / "recorder.log"
    recorder = _start("video_seg_ros.tools.record", ["--limit", "1"], log)
    assert _wait(recorder, 60) == 2
    assert "-o/--output" in log.read_text()
    log = tmp_path / "recorder_wait.log"
    recorder = _start(
        "video_seg_ros.tools.record", ["-o", str(tmp_path / "never"), "--wait", "1"], log
    )
    assert _wait(recorder, 60) == 1
    assert "no publisher on /video_seg_node/labels" in log.read_text()
    assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_bag_type_hashes_match_the_installed_ros_messages(tmp_path):
    """ros2 bag play checks a topic's type hash (RIHS01) against the installed message
    definition."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    frames = _frames_folder(tmp_path / "frames", 1)
    metadata = ""
    for name, options in (("raw", []), ("compressed", ["--compressed", "--camera-info"])):
        assert make_bag.main([str(frames), "-o", str(tmp_path / name), "--quiet", *options]) == 0
        metadata += (tmp_path / name / "metadata.yaml").read_text()
    with RosProbe("hash_probe") as probe:
        for topic, msg_type in (
            ("/hash/image", Image),
            ("/hash/compressed", CompressedImage),
            ("/hash/info", CameraInfo),
        ):
            probe.publisher(msg_type, topic)
            info = probe.node.get_publishers_info_by_topic(topic)[0]
            assert str(info.topic_type_hash) in metadata, (topic, str(info.topic_type_hash))


def test_player_loops_until_interrupted_and_still_writes_its_report(tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    bag = _bag(tmp_path, 3, rate=20.0)
    with RosProbe("loop_probe") as probe:
        received = probe.collect(
            Image,
            "/camera/image_raw",
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
            keep=lambda m: m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
        )
        log = tmp_path / "player.log"
        player = _start(
            "video_seg_ros.tools.play_bag",
            [
                str(bag),
                "--loop",
                "--wait-for-subscribers",
                "20",
                "--log",
                str(tmp_path / "play.json"),
            ],
            log,
        )
        assert probe.wait_for(lambda: len(received) >= 7, 60), log.read_text()
        player.process.send_signal(signal.SIGINT)
        assert _wait(player, 30) == 0, log.read_text()
    stamps = [image.stamp_ns for image in read_images(bag)]
    assert received[:7] == (stamps * 3)[:7]  # the same three frames, in order, again and again
    report = json.loads((tmp_path / "play.json").read_text())
    assert report["loops"] >= 2 and report["total"] >= 7
