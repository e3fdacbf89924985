"""Checkpoint, parameter and config files as hostile input: each refused with one line saying what
to do, never with a traceback, and never with torch's advice to load with weights_only=False."""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile

import pytest
import torch

from checkpoints import make_tiny_espnet_checkpoint, tiny_espnet
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.labels import LABEL_SETS
from video_seg_ros.training.config import ConfigError, load_config

STARTUP_TIMEOUT = 240.0


class _TouchesAFile:
    """Unpickling this would run ``touch <marker>``: the file must never appear."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line(error) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 600, text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    return text


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    return make_tiny_espnet_checkpoint(tmp_path_factory.mktemp("hostile") / "good.pt")


def _refused(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    return _one_line(info.value)


def test_truncated_and_empty_checkpoints(good_checkpoint, tmp_path):
    data = good_checkpoint.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        message = _refused(tmp_path / "cut.pt")
        assert (
            "truncated" in message
            and "video-seg-import" in message
            and str(tmp_path / "cut.pt") in message
        )
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty (0 bytes)" in _refused(tmp_path / "empty.pt")


def test_text_file_and_foreign_zip(tmp_path):
    (tmp_path / "notes.pt").write_text("model: espnet\nthese are not weights\n")
    assert "is a text file, not a checkpoint" in _refused(tmp_path / "notes.pt")
    with zipfile.ZipFile(tmp_path / "bundle.pt", "w") as archive:
        archive.writestr("README.txt", "weights inside")
        archive.writestr("weights/model.bin", b"\x00" * 64)
    message = _refused(tmp_path / "bundle.pt")
    assert "zip archive but not a PyTorch checkpoint" in message and "README.txt" in message
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    assert "video-seg-import" in _refused(tmp_path / "noise.pt")


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 5"])
def test_a_pickle_that_would_run_code_is_refused_on_purpose_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "code_ran"
    payload = {"format": "video_seg_ros.checkpoint", "version": 1, "arch": _TouchesAFile(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    message = _refused(path)
    assert not marker.exists(), "unpickling ran code"
    assert "refused on purpose" in message and "weights_only=True" in message
    assert "`video-seg-import`" in message
    if writer != "pickle protocol 5":  # protocol 5 stops at an opcode before naming the callable
        assert "system" in message


def test_class_table_of_another_label_set_is_refused_at_load(tmp_path):
    checkpoint = tiny_espnet()  # 20 outputs, Cityscapes
    camvid = LABEL_SETS["camvid"]
    wrong = dataclasses.replace(
        checkpoint, output_to_class=list(range(camvid.num_classes)) + [255]
    )
    message = _refused(wrong.save(tmp_path / "mixed.pt"))
    assert (
        "20 outputs" in message
        and "different label sets" in message
        and "video-seg-import" in message
    )
    renamed = dataclasses.replace(
        checkpoint, label_set="camvid"
    )  # 19 Cityscapes names, CamVid label set
    message = _refused(renamed.save(tmp_path / "renamed.pt"))
    assert "'camvid'" in message and "class_names lists 19" in message


def test_weights_of_another_label_set_are_refused_when_the_model_is_built(tmp_path):
    cityscapes = tiny_espnet()  # metadata: 20 outputs
    camvid_weights = tiny_espnet(num_classes=12).state_dict  # a CamVid-trained classifier
    path = dataclasses.replace(cityscapes, state_dict=camvid_weights).save(
        tmp_path / "camvid_weights.pt"
    )
    checkpoint = load_checkpoint(path)  # the metadata alone is consistent
    with pytest.raises(CheckpointError) as info:
        SegmentationEngine(checkpoint, device="cpu", precision="fp32", backend="torch")
    message = _one_line(info.value)
    assert str(path) in message and "with 20 outputs" in message and "classifier" in message
    assert "another label set" in message and "video-seg-import" in message
    broken = {**cityscapes.to_dict(), "state_dict": {"classifier.weight": "not a tensor"}}
    torch.save(broken, tmp_path / "strings.pt")
    assert "not a dict of tensors" in _refused(tmp_path / "strings.pt")


# ---- training config YAML -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: {arch: espnet\ntrain: {epochs: 2}\n", "not valid YAML"),
        ("model:\n  arch: espnet\n   kwargs: {}\n", "line 3"),
        ("model: {arch: espnet}\ntrain: 5\n", "'train' must be a section"),
        (
            "model: {arch: espnet}\ndata: {train: [{type: folder}], flow: fast}\n",
            "'data.flow' must be a section",
        ),
        (
            "model: {arch: espnet}\ndata: {train: [{type: folder}]}\ntrain: {epochs: many}\n",
            "train.epochs must be",
        ),
        ("model: {arch: espnet}\ntrain: {epoch: 3}\n", "unknown config key 'train.epoch'"),
        ("model: {arch: espnet}\ndata: {train: [{type: folder}], scale_range: 2}\n", "wrong type"),
    ],
)
def test_malformed_training_config_names_the_file_and_the_key(tmp_path, text, expected):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = _one_line(info.value)
    assert message.startswith(f"{path}") and expected in message, message


# ---- the node refuses them at start-up ----------------------------------------------------------
@pytest.mark.ros
def test_node_exits_with_one_error_line_on_a_corrupt_checkpoint_params_or_calibration(
    tmp_path, good_checkpoint
):
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    from ros_support import NodeProcess, write_params_file

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good_checkpoint.read_bytes()[:5000])
    evil = tmp_path / "evil.pt"
    torch.save({"arch": _TouchesAFile(tmp_path / "code_ran")}, evil)
    bad_params = tmp_path / "bad_params.yaml"
    bad_params.write_text("video_seg_node:\n  ros__parameters:\n    checkpoint: [unclosed\n")
    common = {"device": "cpu", "backend": "torch", "cpu_threads": 1}
    nodes = {
        "truncated": NodeProcess(
            write_params_file(
                tmp_path / "truncated.yaml", {**common, "checkpoint": str(truncated)}
            ),
            tmp_path / "truncated.log",
            name="hostile_truncated",
        ),
        "evil": NodeProcess(
            write_params_file(tmp_path / "evil.yaml", {**common, "checkpoint": str(evil)}),
            tmp_path / "evil.log",
            name="hostile_evil",
        ),
        "params": NodeProcess(bad_params, tmp_path / "params.log", name="hostile_params"),
        "calibration": NodeProcess(
            write_params_file(
                tmp_path / "calibration.yaml",
                {
                    **common,
                    "checkpoint": str(good_checkpoint),
                    "calibration": str(tmp_path / "no_such_frames"),
                },
            ),
            tmp_path / "calibration.log",
            name="hostile_calibration",
        ),
        "int8_on_torch": NodeProcess(
            write_params_file(
                tmp_path / "int8.yaml",
                {**common, "checkpoint": str(good_checkpoint), "precision": "int8"},
            ),
            tmp_path / "int8.log",
            name="hostile_int8",
        ),
    }
    codes = {name: node.wait_exit(STARTUP_TIMEOUT) for name, node in nodes.items()}
    expected = {
        "truncated": ["truncated", str(truncated)],
        "evil": ["refused on purpose", "weights_only=True", "`video-seg-import`"],
        "params": ["Couldn't parse params file", "--params-file must be YAML"],
        "calibration": ["cannot read calibration frames", str(tmp_path / "no_such_frames")],
        "int8_on_torch": ["precision 'int8' runs on the OpenVINO backend"],
    }
    for name, node in nodes.items():
        output = node.output()
        assert codes[name] != 0, (name, output[-2000:])
        errors = [
            line for line in output.splitlines() if line.startswith("video_seg_node: error: ")
        ]
        assert len(errors) == 1, (name, output[-2000:])
        assert all(text in errors[0] for text in expected[name]), (name, errors[0])
        assert "Traceback" not in output and "weights_only=False" not in output, (
            name,
            output[-2000:],
        )
    assert not (tmp_path / "code_ran").exists()
