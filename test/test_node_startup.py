"""video_seg_node refuses unusable configurations at start-up (one clear line on stderr, the same
reason on the ROS logger, non-zero exit) and exits cleanly on SIGINT / SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from ros_support import NodeProcess, make_tiny_checkpoint, write_params_file  # noqa: E402
from video_seg_ros.processes import ProcessFailed  # noqa: E402

pytestmark = pytest.mark.ros

EXIT_TIMEOUT = 240.0  # torch import alone takes a minute on a loaded 2-core machine


@pytest.fixture(scope="module")
def failed_starts(tmp_path_factory):
    """Start the node with each bad configuration at once (in parallel) and collect the
    outcomes."""
    import torch

    tmp = tmp_path_factory.mktemp("node_startup")
    checkpoint = str(make_tiny_checkpoint(tmp / "tiny.pt", size=(64, 32)))
    not_a_checkpoint = tmp / "broken.pt"
    not_a_checkpoint.write_bytes(b"this is not a torch file")
    cases = {
        "missing_checkpoint": {"checkpoint": str(tmp / "does_not_exist.pt")},
        "unreadable_checkpoint": {"checkpoint": str(not_a_checkpoint)},
        "bad_qos": {"checkpoint": checkpoint, "input_qos": "fastest"},
        "bad_transport": {"checkpoint": checkpoint, "image_transport": "theora"},
        "bad_precision": {"checkpoint": checkpoint, "precision": "int3"},
        "bad_camera_name": {"checkpoint": checkpoint, "cameras": ["front", "front left"]},
        "alpha_out_of_range": {"checkpoint": checkpoint, "overlay_alpha": 3.0},
    }
    if not torch.cuda.is_available():
        cases["cuda_without_cuda"] = {"checkpoint": checkpoint, "device": "cuda"}
    processes = {
        name: NodeProcess(
            write_params_file(tmp / f"{name}.yaml", {"backend": "torch", **params}),
            tmp / f"{name}.log",
            name=f"startup_{name}",
        )
        for name, params in cases.items()
    }
    # Two good nodes in the same batch, for the shutdown signals.
    good = write_params_file(
        tmp / "good.yaml", {"checkpoint": checkpoint, "device": "cpu", "backend": "torch"}
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        processes[sig.name] = NodeProcess(
            good, tmp / f"{sig.name}.log", name=f"startup_{sig.name.lower()}"
        )
    outcomes = {}
    for name, process in processes.items():
        if name.startswith("SIG"):
            try:
                process.wait_for_line(r"\bready$", EXIT_TIMEOUT)
            except ProcessFailed:
                pass  # exited before it was ready: the test shows its output
            segments = own_dds_segments(process.process.pid)
            code = process.stop(getattr(signal, name), timeout=60.0)
            outcomes[name] = (code, process.output())
            outcomes[f"{name} segments"] = segments
        else:
            outcomes[name] = (process.wait_exit(EXIT_TIMEOUT), process.output())
    return outcomes


def own_dds_segments(pid: int) -> list[Path]:
    """The Fast DDS shared-memory segments a process created (mapped by it; port files excluded,
    they are shared)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {Path(line.split()[-1]) for line in maps if "/dev/shm/fastdds_" in line}
    return sorted(path for path in paths if "port" not in path.name)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("video_seg_node: error:")]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_checkpoint", "checkpoint not found"),
        ("unreadable_checkpoint", "could not read checkpoint"),
        ("bad_qos", "input_qos must be one of"),
        ("bad_transport", "image_transport must be one of raw, compressed"),
        ("bad_precision", "precision must be one of"),
        ("bad_camera_name", "camera name 'front left'"),
        ("alpha_out_of_range", "overlay_alpha"),
        ("cuda_without_cuda", "no CUDA device"),
    ],
)
def test_bad_configuration_exits_non_zero_with_one_clear_line(failed_starts, case, expected):
    if case not in failed_starts:
        pytest.skip("this machine has CUDA")
    code, output = failed_starts[case]
    assert code not in (0, None), output
    lines = _error_lines(output)
    assert len(lines) == 1 and expected in lines[0], output
    assert "Traceback" not in output
    reason = lines[0].split("video_seg_node: error: ", 1)[1]
    logged = [
        line
        for line in output.splitlines()
        if line.startswith("[ERROR]") and line.endswith(reason)
    ]
    assert len(logged) == 1, f"the reason did not go to the ROS logger (/rosout):\n{output}"


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_running_node_exits_cleanly_on_sigint_and_sigterm(failed_starts, name):
    code, output = failed_starts[name]
    assert "ready" in output, output
    assert code == 0 and "Traceback" not in output, output


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_clean_exit_removes_the_nodes_dds_shared_memory(failed_starts, name):
    # rclpy's lifecycle state machine kept the participant alive past exit: 64 MB left per run.
    segments = failed_starts[f"{name} segments"]
    assert segments, "the node mapped no Fast DDS segment (is the large-image profile loaded?)"
    left = [path.name for path in segments if path.exists()]
    assert not left, f"left in /dev/shm after exit code {failed_starts[name][0]}: {left}"


def test_shipped_parameters_file_sets_every_parameter_to_its_declared_default():
    from pathlib import Path

    import yaml

    from video_seg_ros.ros.node import PARAMETERS

    config = Path(__file__).resolve().parents[1] / "config" / "video_seg.yaml"
    values = yaml.safe_load(config.read_text())["/**"]["ros__parameters"]
    # deprecated ones and those whose default is the executable's (autostart) are left out
    current = {
        name: spec
        for name, spec in PARAMETERS.items()
        if not spec.deprecated and not spec.executable_default
    }
    assert set(values) == set(current)
    for name, spec in current.items():
        assert values[name] == spec.default and type(values[name]) is type(spec.default), name
