"""launch/demo.launch.py: the demo's processes as a launch description, built from the same
commands as video-seg-demo (video_seg_ros/tools/demo_pipeline.py).

The static checks run everywhere (the file read as a syntax tree). The launch description itself
is built only where ``launch`` and ``launch_ros`` are installed (a ROS 2 install); elsewhere that
test is skipped with the reason.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from launch_ast import calls, keyword, parse

from video_seg_ros.tools import demo, demo_pipeline

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "demo.launch.py"
_REASON = (
    "launch / launch_ros are not installed (pip-only ROS 2): the demo's launch description "
    "is built on a ROS 2 install (colcon test)"
)


def _tree() -> ast.Module:
    return parse(LAUNCH_FILE)


def _specs(tmp_path: Path) -> list[demo_pipeline.ProcessSpec]:
    return [
        demo_pipeline.node_spec(None, "/camera/image_raw"),
        demo_pipeline.recorder_spec(tmp_path / "rec", 3, 5.0, 1.0, 10.0, tmp_path),
        demo_pipeline.player_spec(tmp_path / "bag", "/camera/image_raw", 1.0, tmp_path),
    ]


def test_launch_file_starts_the_demos_three_programs_from_the_shared_commands(tmp_path):
    tree = _tree()
    executables = {keyword(call, "executable").value for call in calls(tree, "Node")}
    assert executables == {spec.executable for spec in _specs(tmp_path)}
    # The arguments and parameters come from demo_pipeline, not from a copy in the launch file.
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "pipeline"
    }
    assert {
        "replay_parameters",
        "node_spec",
        "recorder_spec",
        "player_spec",
        "RECORDER_READY_PATTERN",
        "NODE_NAME",
    } <= used
    assert "use_compressed" not in LAUNCH_FILE.read_text()


def test_launch_arguments_default_as_the_demos_options():
    declared = {}
    for call in calls(_tree(), "DeclareLaunchArgument"):
        default = keyword(call, "default_value")
        declared[call.args[0].value] = default.value if isinstance(default, ast.Constant) else None
    assert declared["bag"] is None  # required
    parser = demo.build_parser()
    defaults = {action.dest: action.default for action in parser._actions}
    assert float(declared["replay_hz"]) == defaults["replay_hz"]
    assert float(declared["startup_timeout"]) == defaults["startup_timeout"]
    for name in ("checkpoint", "device", "backend", "precision", "upsample"):
        assert declared[name] == defaults[name], name


def _load_launch_module():
    spec = importlib.util.spec_from_file_location("demo_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_description_runs_node_and_recorder_then_the_player_on_the_ready_line(tmp_path):
    pytest.importorskip("launch", reason=_REASON)
    pytest.importorskip("launch_ros", reason=_REASON)
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
    from launch_ros.actions import Node

    from video_seg_ros.tools import make_bag

    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2
    import numpy as np

    for index in range(3):
        cv2.imwrite(str(frames / f"frame_{index:04d}.png"), np.full((32, 64, 3), index, np.uint8))
    bag = tmp_path / "bag"
    assert make_bag.main([str(frames), "-o", str(bag), "--rate", "10", "--quiet"]) == 0

    description = _load_launch_module().generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"bag", "output", "replay_hz", "checkpoint"} <= set(declared)
    context = LaunchContext()
    for name, argument in declared.items():
        if argument.default_value is not None:
            context.launch_configurations[name] = "".join(
                s.perform(context) for s in argument.default_value
            )
    context.launch_configurations.update(
        {
            "bag": str(bag),
            "output": str(tmp_path / "out"),
            "params_file": str(REPO / "config" / "video_seg.yaml"),
        }
    )
    setup = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    actions = setup.execute(context)
    nodes = [a for a in actions if isinstance(a, Node)]
    assert [n.node_executable for n in nodes] == ["video_seg_node", "video-seg-record"]
    handlers = [a for a in actions if isinstance(a, RegisterEventHandler)]
    assert len(handlers) == 2  # the player on the recorder's ready line; shutdown on its exit
    assert (tmp_path / "out" / "logs").is_dir()
