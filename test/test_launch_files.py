"""Static checks of the launch files and the RViz config, so a typo cannot ship.

launch / launch_ros are not installable here, so the files are read as Python syntax trees: every
executable, parameter file, launch file and RViz config they name must exist in the package (and be
installed by setup.py), every launch argument they read must be declared, every parameter they set
must be one the node declares, and the RViz / Foxglove views must show the node's real topics, for
the default names and rewritten for another namespace and several cameras. The launch files
themselves run in test/test_video_seg_launch.py on a ROS 2 install.
"""

from __future__ import annotations

import ast
from glob import glob
from pathlib import Path

import pytest
from launch_ast import calls, keyword, parse
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PACKAGE = "video_seg_ros"
# Executables of other packages the launch files may start.
EXTERNAL_EXECUTABLES = {("rviz2", "rviz2")}
EXTERNAL_COMMANDS = {"ros2"}


def _constants(tree: ast.AST) -> dict[str, object]:
    """Module-level NAME = <literal> assignments."""
    values = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def _string(node, constants) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(constants.get(node.id), str):
        return constants[node.id]
    return None


def _console_scripts() -> set[str]:
    setup = parse(REPO / "setup.py")
    scripts = set()
    for call in calls(setup, "setup"):
        entry_points = ast.literal_eval(keyword(call, "entry_points"))
        scripts |= {spec.split("=")[0].strip() for spec in entry_points["console_scripts"]}
    return scripts


def _installed_data_files() -> set[str]:
    """Repository-relative paths setup.py installs into share/ (its globs evaluated here)."""
    installed = set()
    for call in calls(parse(REPO / "setup.py"), "glob"):
        pattern = ast.literal_eval(call.args[0])
        installed |= set(glob(pattern, root_dir=REPO))
    return installed


def _declared_arguments(tree: ast.AST) -> dict[str, str | None]:
    """DeclareLaunchArgument name -> default value (None when required or not a literal)."""
    declared = {}
    for call in calls(tree, "DeclareLaunchArgument"):
        name = ast.literal_eval(call.args[0])
        default = keyword(call, "default_value")
        declared[name] = default.value if isinstance(default, ast.Constant) else None
    return declared


def _node_parameters() -> set[str]:
    tree = parse(REPO / "video_seg_ros" / "ros" / "parameters.py")
    for node in tree.body:
        target = getattr(node, "target", None) or (
            node.targets[0] if isinstance(node, ast.Assign) else None
        )
        if isinstance(target, ast.Name) and target.id == "PARAMETERS":
            return {ast.literal_eval(key) for key in node.value.keys}
    raise AssertionError("PARAMETERS not found in video_seg_ros/ros/parameters.py")


def _node_name() -> str:
    return _constants(parse(REPO / "video_seg_ros" / "ros" / "node.py"))["NODE_NAME"]


def test_launch_files_exist_and_are_installed():
    names = {p.name for p in LAUNCH_FILES}
    assert {"video_seg.launch.py", "replay.launch.py"} <= names
    installed = _installed_data_files()
    for path in LAUNCH_FILES:
        assert str(path.relative_to(REPO)) in installed, f"setup.py does not install {path.name}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parses_and_defines_generate_launch_description(path):
    tree = parse(path)  # a SyntaxError fails the test
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_executable_a_launch_file_starts_exists(path):
    tree, constants = parse(path), _constants(parse(path))
    scripts = _console_scripts()
    nodes = calls(tree, "Node") + calls(tree, "LifecycleNode")
    assert nodes, f"{path.name} starts no Node"
    for call in nodes:
        package = _string(keyword(call, "package"), constants)
        executable = _string(keyword(call, "executable"), constants)
        assert package and executable, f"{path.name}: Node without a literal package/executable"
        if package == PACKAGE:
            assert executable in scripts, (
                f"{path.name}: {executable} is not a console script in setup.py"
            )
        else:
            assert (package, executable) in EXTERNAL_EXECUTABLES, (
                f"{path.name}: unexpected {package}/{executable}"
            )
    for call in calls(tree, "ExecuteProcess"):
        command = keyword(call, "cmd")
        first = _string(command.elts[0], constants)
        assert first in EXTERNAL_COMMANDS, (
            f"{path.name}: ExecuteProcess runs unknown command {first!r}"
        )


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_file_a_launch_file_names_exists_and_is_installed(path):
    installed = _installed_data_files()
    named = [
        value
        for value in _constants(parse(path)).values()
        if isinstance(value, str) and value.endswith((".yaml", ".rviz", ".xml", ".launch.py"))
    ]
    named += [
        node.value
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.endswith((".yaml", ".rviz", ".xml"))
        and " " not in node.value
    ]
    assert named, f"{path.name} names no parameter file, RViz config or launch file"
    for name in set(named):
        folder = "launch" if name.endswith(".launch.py") else "config"
        relative = f"{folder}/{name}"
        assert (REPO / relative).is_file(), f"{path.name} names {relative}, which does not exist"
        assert relative in installed, (
            f"{path.name} names {relative}, which setup.py does not install"
        )


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_launch_configuration_is_declared(path):
    tree = parse(path)
    declared = set(_declared_arguments(tree))
    used = {ast.literal_eval(call.args[0]) for call in calls(tree, "LaunchConfiguration")}
    # video_seg.launch.py reads them as text in an OpaqueFunction:
    # value = context.launch_configurations
    used |= {
        node.slice.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "value"
        and isinstance(node.slice, ast.Constant)
    }
    assert used - declared == set(), (
        f"{path.name} reads undeclared launch arguments {used - declared}"
    )


def test_parameters_set_by_launch_files_are_node_parameters():
    parameters = _node_parameters()
    checked = 0
    for path in LAUNCH_FILES:
        tree = parse(path)
        dicts = [
            item
            for call in calls(tree, "Node") + calls(tree, "LifecycleNode")
            for item in getattr(keyword(call, "parameters"), "elts", [])
            if isinstance(item, ast.Dict)
        ]
        # video_seg.launch.py builds them as `overrides = {...}` and `overrides["cameras"] = ...`
        dicts += [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", None) == "overrides"
            and isinstance(node.value, ast.Dict)
        ]
        names = {ast.literal_eval(key) for item in dicts for key in item.keys}
        names |= {
            node.targets[0].slice.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and getattr(node.targets[0].value, "id", None) == "overrides"
        }
        assert names <= parameters, f"{path.name} sets unknown parameters {names - parameters}"
        checked += len(names)
    assert checked, (
        "no parameter set by the launch files was found: the check above checked nothing"
    )


def test_included_launch_arguments_are_declared_by_the_included_file():
    declared = _declared_arguments(parse(REPO / "launch" / "video_seg.launch.py"))
    replay = parse(REPO / "launch" / "replay.launch.py")
    includes = calls(replay, "IncludeLaunchDescription")
    assert includes
    for call in includes:
        arguments = keyword(call, "launch_arguments").func.value  # {...}.items()
        passed = {ast.literal_eval(key) for key in arguments.keys}
        assert passed <= set(declared), (
            f"replay.launch.py passes undeclared arguments {passed - set(declared)}"
        )


def test_replay_launch_requires_a_bag_and_defaults_rviz_off():
    declared = _declared_arguments(parse(REPO / "launch" / "replay.launch.py"))
    assert "bag" in declared and declared["bag"] is None
    assert declared["rviz"] == "false"


def test_params_file_is_valid_ros2_yaml_with_node_parameters_only():
    params = yaml.safe_load((REPO / "config" / "video_seg.yaml").read_text())
    values = params["/**"]["ros__parameters"]
    assert set(values) <= _node_parameters()


def _rviz_topics(text: str) -> set[str]:
    displays = yaml.safe_load(text)["Visualization Manager"]["Displays"]
    return {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}


def _foxglove_topics(text: str) -> set[str]:
    import json

    panels = json.loads(text)["configById"]
    return {p["imageMode"]["imageTopic"] for k, p in panels.items() if k.startswith("Image!")} | {
        path["value"] for path in panels["Plot!consistency"]["paths"]
    }


def test_rviz_config_and_foxglove_layout_show_the_camera_and_the_nodes_topics():
    rviz = (REPO / "config" / "video_seg.rviz").read_text()
    foxglove = (REPO / "config" / "foxglove_layout.json").read_text()
    camera = _declared_arguments(parse(REPO / "launch" / "video_seg.launch.py"))["image"]
    node = _node_name()
    assert _rviz_topics(rviz) == {camera, f"/{node}/color", f"/{node}/overlay"}
    assert _foxglove_topics(foxglove) == {
        camera,
        f"/{node}/color",
        f"/{node}/overlay",
        f"/{node}/consistency.data",
    }
    for suffix in ("color", "overlay", "consistency"):  # the node publishes camera.private(output)
        assert f'"{suffix}"' in (REPO / "video_seg_ros" / "ros" / "node.py").read_text(), suffix


def test_views_follow_the_launch_files_namespace_node_name_and_cameras():
    from video_seg_ros.ros.views import camera_topics, foxglove_layout, node_path, rviz_config

    rviz = (REPO / "config" / "video_seg.rviz").read_text()
    foxglove = (REPO / "config" / "foxglove_layout.json").read_text()
    default = camera_topics(node_path("", _node_name()), [])
    assert _rviz_topics(rviz_config(rviz, default)) == _rviz_topics(rviz)
    assert (
        foxglove_layout(foxglove, default) == foxglove
    )  # the shipped file is the generated default
    topics = camera_topics(
        node_path("car", "seg"), ["front", "left"], ["/cams/front/raw", "/cams/left/raw"]
    )
    expected = {"/cams/front/raw", "/cams/left/raw"} | {
        f"/car/seg/{c}/{s}" for c in ("front", "left") for s in ("color", "overlay")
    }
    assert _rviz_topics(rviz_config(rviz, topics)) == expected
    assert _foxglove_topics(foxglove_layout(foxglove, topics)) == expected | {
        "/car/seg/front/consistency.data",
        "/car/seg/left/consistency.data",
    }
    assert camera_topics("/car/seg", ["front"])["front"] == ("/car/front/image", "/car/seg/front")


def test_launch_file_offers_cameras_and_lifecycle_arguments():
    declared = _declared_arguments(parse(REPO / "launch" / "video_seg.launch.py"))
    assert {
        "cameras",
        "image_topics",
        "lifecycle",
        "autostart",
        "rviz",
        "backend",
        "precision",
    } <= set(declared)
    assert declared["lifecycle"] == "false" and declared["cameras"] == ""
    assert declared["autostart"] == "true"
    # autostart reaches the managed node as its read-only parameter (no launch-side transitions)
    source = (REPO / "launch" / "video_seg.launch.py").read_text()
    assert 'overrides["autostart"] = _truthy(value["autostart"])' in source
    assert {"video_seg_node", "video_seg_lifecycle_node"} <= _console_scripts()
