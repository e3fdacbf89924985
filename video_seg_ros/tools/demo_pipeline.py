"""The demo's processes: the node's replay parameters and the node, recorder and player commands
(:class:`ProcessSpec`), in one place for both ``video-seg-demo`` (:func:`run_pipeline` starts them
with :class:`video_seg_ros.processes.Supervisor`) and ``launch/demo.launch.py`` (launch_ros Nodes).

Nothing here imports rclpy, so the launch file and the tests can build the commands anywhere.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from video_seg_ros.bags import bag_info, default_image_topic, topic_rate_hz
from video_seg_ros.config_files import config_file
from video_seg_ros.processes import ProcessFailed, Supervisor
from video_seg_ros.ros.dds import ros_process_environment

PACKAGE = "video_seg_ros"
NODE_NAME = "video_seg_node"
MAX_NODE_QUEUE = 100  # the node's frame_queue_size range
MAX_SECONDS_PER_FRAME = 15.0  # slowest node the demo waits for
#: The recorder waits this much longer for the node's outputs than the demo does, so the demo's
#: own "outputs did not appear" error (with the node's log) always comes first.
RECORDER_GRACE_S = 30.0
#: The line video-seg-record prints once every subscription matched its publisher
#: (video_seg_ros.ros.recorder.READY_PREFIX); the player starts only then.
RECORDER_READY_PATTERN = r"^ready: "
PLAYER_WAIT_FOR_SUBSCRIBERS_S = 30.0
COMPRESSED_SUFFIX = "/compressed"


class DemoError(RuntimeError):
    """The demo cannot run or a process failed; the message says what to look at."""


@dataclass
class DemoInput:
    """What the demo replays and scores: a bag, its frames' labels, and a line describing it."""

    bag: Path
    labels: dict[str, np.ndarray]  # frame key -> (H, W) train ids (may be empty)
    description: str


@dataclass
class ProcessSpec:
    """One process of the pipeline: a console script of this package with its arguments, plus
    ROS arguments (parameters file, ``-p`` parameters, ``-r`` remappings) for the node."""

    name: str  # log and supervisor name
    executable: str  # console script (launch_ros Node ``executable``)
    module: str  # the same program as ``python -m module`` (source checkouts)
    arguments: list[str]
    params_file: Path | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)

    def ros_arguments(self) -> list[str]:
        args = []
        if self.params_file is not None:
            args += ["--params-file", str(self.params_file)]
        for source, target in self.remappings.items():
            args += ["-r", f"{source}:={target}"]
        for name, value in self.parameters.items():
            args += ["-p", f"{name}:={value}"]
        return ["--ros-args", *args] if args else []

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module, *self.arguments, *self.ros_arguments()]


def replay_parameters(
    checkpoint: str,
    device: str,
    upsample: str,
    frames: int,
    backend: str = "auto",
    precision: str = "auto",
    temporal: dict | None = None,
) -> dict:
    """Node parameters for a replay: reliable input, a queue that drops nothing, TC on every frame.
    ``temporal``: node parameters of the temporal fusion (``temporal_mode``, ...) to set as well.

    The node's queue holds at most 100 frames; a longer bag loses none as long as the node keeps
    up with the replay rate on average.
    """
    values = {
        "checkpoint": checkpoint,
        "device": device,
        "upsample": upsample,
        "backend": backend,
        "precision": precision,
        "input_qos": "reliable",
        "frame_queue_size": min(max(frames, 1), MAX_NODE_QUEUE),
        "publish_color": False,
        "publish_overlay": False,
        "consistency_metric": True,
        "consistency_stride": 1,
        # The recorder stops at the last frame's labels: at the default 1 s period a short replay
        # records no status after the first frame and the summary has no node model time.
        "diagnostics_period_s": 0.1,
    }
    values.update(temporal or {})
    return values


def write_node_parameters(out_dir: Path, overrides: dict) -> Path:
    """config/video_seg.yaml with ``overrides`` as ``out_dir/node_params.yaml``."""
    params = yaml.safe_load(config_file("video_seg.yaml").read_text())
    params["/**"]["ros__parameters"].update(overrides)
    path = out_dir / "node_params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def node_input(topic: str) -> tuple[str, dict[str, str]]:
    """The bag's image topic -> (the node's ``image`` remapping, its transport parameter).

    A CompressedImage topic ``X/compressed`` is read as image_transport does: ``image:=X`` with
    ``image_transport: compressed`` (the node appends ``/compressed`` itself).
    """
    if topic.endswith(COMPRESSED_SUFFIX):
        return topic[: -len(COMPRESSED_SUFFIX)], {"image_transport": "compressed"}
    return topic, {}


def node_spec(params_file: Path | None, topic: str) -> ProcessSpec:
    image, parameters = node_input(topic)
    return ProcessSpec(
        "node",
        NODE_NAME,
        "video_seg_ros.ros.executable",
        [],
        params_file,
        parameters,
        {"image": image},
    )


def recorder_wait_s(startup_timeout: float) -> float:
    """How long the recorder waits for the node's outputs: longer than the demo does."""
    return startup_timeout + RECORDER_GRACE_S


def recorder_spec(
    recorded: Path,
    frames: int,
    replay_hz: float,
    playback_s: float,
    startup_timeout: float,
    logs: Path,
) -> ProcessSpec:
    """video-seg-record of the node's labels, consistency and /diagnostics, ``frames`` labels."""
    wait = recorder_wait_s(startup_timeout)
    return ProcessSpec(
        "recorder",
        "video-seg-record",
        "video_seg_ros.tools.record",
        [
            "--node",
            NODE_NAME,
            "--consistency",
            "--topic",
            "/diagnostics",
            "--output",
            str(recorded),
            "--overwrite",
            "--limit",
            str(frames),
            "--wait",
            f"{wait:g}",
            # Generous: on a busy CPU frames queue in the node; the idle timeout ends a stalled run
            "--timeout",
            f"{wait + playback_s + 60 + frames * MAX_SECONDS_PER_FRAME:g}",
            "--idle-timeout",
            f"{max(30.0, 20.0 / replay_hz):g}",
            "--progress-file",
            str(logs / "recorder.progress"),
            "--report",
            str(logs / "recorder.json"),
        ],
    )


def player_spec(bag: Path, topic: str, speed: float, logs: Path) -> ProcessSpec:
    """video-seg-play of the bag's image topic at ``speed`` times its recorded rate."""
    return ProcessSpec(
        "player",
        "video-seg-play",
        "video_seg_ros.tools.play_bag",
        [
            str(bag),
            "--topic",
            topic,
            "--speed",
            f"{speed:.6f}",
            "--wait-for-subscribers",
            f"{PLAYER_WAIT_FOR_SUBSCRIBERS_S:g}",
            "--log",
            str(logs / "player.json"),
        ],
    )


def run_pipeline(
    demo_input: DemoInput,
    out_dir: Path,
    params: Path,
    replay_hz: float,
    domain_id: int,
    startup_timeout: float,
    progress: bool = True,
) -> dict:
    """Start recorder and node, then the player once the recorder is ready; wait for the
    recording; stop everything; return the exit codes and the player's and recorder's reports."""
    info = bag_info(demo_input.bag)
    topic = default_image_topic(demo_input.bag)
    frames = info["topics"][topic]["count"]
    bag_hz = topic_rate_hz(demo_input.bag, topic) or replay_hz
    rate_factor = replay_hz / bag_hz
    playback_s = info["duration_s"] / rate_factor
    logs, recorded = out_dir / "logs", out_dir / "recorded_bag"
    recorder = recorder_spec(recorded, frames, replay_hz, playback_s, startup_timeout, logs)
    progress_file = logs / "recorder.progress"
    with Supervisor(logs, ros_process_environment(domain_id)) as supervisor:
        progress_file.unlink(missing_ok=True)
        supervisor.start("recorder", recorder.command())
        node = supervisor.start("node", node_spec(params, topic).command())
        print(
            f"[demo] starting {NODE_NAME} (ROS_DOMAIN_ID={domain_id}) and the recorder", flush=True
        )
        try:
            # The recorder prints its ready line once it is matched with every output of the node.
            ready = supervisor.wait_for_line("recorder", RECORDER_READY_PATTERN, startup_timeout)
        except ProcessFailed as failed:
            raise DemoError(str(failed)) from None
        if ready is None:
            raise DemoError(
                f"the node's outputs did not appear within {startup_timeout:g} s; "
                f"node log:\n{node.tail()}"
            )
        time.sleep(0.5)  # the node's publishers see the recorder's subscriptions too
        supervisor.start("player", player_spec(demo_input.bag, topic, rate_factor, logs).command())
        print(
            f"[demo] replaying {frames} frames at {replay_hz:g} Hz ({playback_s:.0f} s)",
            flush=True,
        )
        recording = supervisor.processes["recorder"]
        with tqdm(total=frames, unit="frame", desc="segmented", disable=not progress) as bar:
            # The recorder stops itself (count, idle or total timeout).
            while recording.alive() and node.alive():
                bar.n = _read_count(progress_file)
                bar.refresh()
                time.sleep(0.25)
            bar.n = _read_count(progress_file)
            bar.refresh()
        if not node.alive():
            raise DemoError(
                f"{NODE_NAME} exited with code {node.returncode} during the replay; "
                f"its log ({node.log_path}):\n{node.tail()}"
            )
        supervisor.wait("player", 30)
        supervisor.wait("recorder", 30)
        supervisor.stop("node")
    # A process that did not end by itself was stopped when the block ended.
    codes = {name: supervisor.exit_codes[name] for name in ("player", "node", "recorder")}
    for name, code in codes.items():
        if code != 0:
            raise DemoError(f"{name} exited with code {code}; see {logs / (name + '.log')}")
    return {
        "exit_codes": codes,
        "player": json.loads((logs / "player.json").read_text()),
        "recorder": json.loads((logs / "recorder.json").read_text()),
        "recorded_bag": recorded,
        "topic": topic,
        "rate_factor": rate_factor,
        "bag_hz": bag_hz,
    }


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0
