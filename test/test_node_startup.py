"""video_seg_node refuses unusable configurations at start-up: one clear line, non-zero exit."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from ros_support import NodeProcess, make_tiny_checkpoint, write_params_file  # noqa: E402

EXIT_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def failed_starts(tmp_path_factory):
    """Start the node with each bad configuration at once (in parallel) and collect the outcomes."""
    import torch

    tmp = tmp_path_factory.mktemp("node_startup")
    checkpoint = str(make_tiny_checkpoint(tmp / "tiny.pt", size=(64, 32)))
    not_a_checkpoint = tmp / "broken.pt"
    not_a_checkpoint.write_bytes(b"this is not a torch file")
    cases = {
        "missing_checkpoint": {"checkpoint": str(tmp / "does_not_exist.pt")},
        "unreadable_checkpoint": {"checkpoint": str(not_a_checkpoint)},
        "bad_qos": {"checkpoint": checkpoint, "input_qos": "fastest"},
        "alpha_out_of_range": {"checkpoint": checkpoint, "overlay_alpha": 3.0},
    }
    if not torch.cuda.is_available():
        cases["cuda_without_cuda"] = {"checkpoint": checkpoint, "device": "cuda"}
    processes = {name: NodeProcess(write_params_file(tmp / f"{name}.yaml", params), tmp / f"{name}.log",
                                   name=f"startup_{name}")
                 for name, params in cases.items()}
    return {name: (process.wait_exit(EXIT_TIMEOUT), process.output()) for name, process in processes.items()}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("video_seg_node: error:")]


@pytest.mark.parametrize("case, expected", [
    ("missing_checkpoint", "checkpoint not found"),
    ("unreadable_checkpoint", "could not read checkpoint"),
    ("bad_qos", "input_qos must be one of"),
    ("alpha_out_of_range", "overlay_alpha"),
    ("cuda_without_cuda", "no CUDA device"),
])
def test_bad_configuration_exits_non_zero_with_one_clear_line(failed_starts, case, expected):
    if case not in failed_starts:
        pytest.skip("this machine has CUDA")
    code, output = failed_starts[case]
    assert code not in (0, None), output
    lines = _error_lines(output)
    assert len(lines) == 1 and expected in lines[0], output
    assert "Traceback" not in output


def test_shipped_parameters_file_sets_every_parameter_to_its_declared_default():
    from pathlib import Path

    import yaml

    from video_seg_ros.ros.node import PARAMETERS

    config = Path(__file__).resolve().parents[1] / "config" / "video_seg.yaml"
    values = yaml.safe_load(config.read_text())["/**"]["ros__parameters"]
    assert set(values) == set(PARAMETERS)
    for name, spec in PARAMETERS.items():
        assert values[name] == spec.default and type(values[name]) is type(spec.default), name
