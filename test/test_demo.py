"""video-seg-demo: the pipeline's commands (tools/demo_pipeline.py), the latency split of the
report (tools/demo_report.py) and one short real run through ROS 2 processes (tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from video_seg_ros.tools import demo, demo_pipeline
from video_seg_ros.tools.demo_report import distribution, latency_split

MS = 1_000_000  # ns


def test_latency_split_separates_the_queue_wait_from_the_nodes_own_time():
    # Published every 100 ms; the node needs 250 ms per frame, so frames queue behind each other.
    publish = {stamp: stamp * 100 * MS for stamp in range(4)}
    receive = {stamp: (stamp + 1) * 250 * MS for stamp in range(4)}
    split = latency_split(publish, receive)
    assert split["end_to_end"] == [250.0, 400.0, 550.0, 700.0]
    assert split["queue_wait"] == [0.0, 150.0, 300.0, 450.0]
    assert split["latency"] == [250.0] * 4  # the node's time per frame, not the growing queue


def test_latency_split_of_a_node_that_keeps_up_has_no_queue_wait_and_skips_lost_frames():
    publish = {1: 0, 2: 200 * MS, 3: 400 * MS}
    receive = {1: 50 * MS, 3: 460 * MS, 99: 500 * MS}  # 2 lost; 99 was never published
    split = latency_split(publish, receive)
    assert split == {"latency": [50.0, 60.0], "queue_wait": [0.0, 0.0], "end_to_end": [50.0, 60.0]}
    assert distribution([]) == {"mean": None, "p50": None, "p95": None, "max": None}
    assert distribution(split["latency"])["max"] == 60.0


def test_a_compressed_bag_topic_is_fed_as_image_transport_compressed(tmp_path):
    compressed = demo_pipeline.node_spec(tmp_path / "p.yaml", "/camera/image_raw/compressed")
    assert compressed.remappings == {"image": "/camera/image_raw"}
    assert compressed.parameters == {"image_transport": "compressed"}
    command = compressed.command("python")
    assert command[:3] == ["python", "-m", "video_seg_ros.ros.executable"]
    assert command[3:] == [
        "--ros-args",
        "--params-file",
        str(tmp_path / "p.yaml"),
        "-r",
        "image:=/camera/image_raw",
        "-p",
        "image_transport:=compressed",
    ]
    assert "use_compressed" not in " ".join(command)  # the deprecated parameter
    raw = demo_pipeline.node_spec(tmp_path / "p.yaml", "/camera/image_raw")
    assert raw.parameters == {} and raw.remappings == {"image": "/camera/image_raw"}


def test_the_recorder_waits_longer_than_the_demo_for_the_nodes_outputs(tmp_path):
    startup = 120.0
    spec = demo_pipeline.recorder_spec(tmp_path / "rec", 120, 5.0, 24.0, startup, tmp_path)
    wait = float(spec.arguments[spec.arguments.index("--wait") + 1])
    timeout = float(spec.arguments[spec.arguments.index("--timeout") + 1])
    # Else the recorder gives up first and the demo reports its exit instead of the node's log.
    assert wait >= startup + 30
    assert timeout > wait + 24.0
    assert "--ready-file" not in spec.arguments  # the supervisor waits for the ready line


def test_the_demo_waits_for_the_line_the_recorder_prints_when_ready():
    pytest.importorskip("rclpy", reason="video_seg_ros.ros.recorder needs rclpy")
    from video_seg_ros.ros.recorder import READY_PREFIX

    line = f"{READY_PREFIX}recording /video_seg_node/labels, /diagnostics"
    assert re.search(demo_pipeline.RECORDER_READY_PATTERN, line)
    assert not re.search(demo_pipeline.RECORDER_READY_PATTERN, "recording /diagnostics [x]")


def test_replay_parameters_are_node_parameters_and_drop_no_frame(tmp_path):
    import yaml

    from video_seg_ros.ros.parameters import PARAMETERS

    overrides = demo_pipeline.replay_parameters(
        "default", "cpu", "auto", 500, temporal={"temporal_mode": "fuse"}
    )
    assert set(overrides) <= set(PARAMETERS)
    assert overrides["frame_queue_size"] == demo_pipeline.MAX_NODE_QUEUE
    assert overrides["input_qos"] == "reliable" and overrides["temporal_mode"] == "fuse"
    written = yaml.safe_load(demo_pipeline.write_node_parameters(tmp_path, overrides).read_text())
    values = written["/**"]["ros__parameters"]
    assert {key: values[key] for key in overrides} == overrides
    assert "image_transport" in values  # the rest comes from config/video_seg.yaml


def test_demo_py_keeps_only_the_command_line_and_the_flow():
    source = Path(demo.__file__).read_text()
    assert len(source.splitlines()) < 450
    # All frame reading in one function (prepare_input), through the one frame-stream module.
    assert source.count("from video_seg_ros.streams import") == 1
    assert "def prepare_input(" in source
