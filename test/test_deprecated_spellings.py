"""The one alias test: every deprecated spelling a tool, the engine or the node still accepts does
what its current spelling does and says so once. Other tests use the current spellings only.

The CLI aliases are read from the tools' parsers (test/cli_vocabulary.py), so a new alias is
tested here without editing this file.
"""

from __future__ import annotations

import argparse
import re

import pytest

from checkpoints import tiny_espnet
from cli_vocabulary import deprecated_aliases, tool_parsers
from video_seg_ros.engine import SegmentationEngine

PARSERS = tool_parsers()
ALIASES = deprecated_aliases(PARSERS)


def _sample_value(action: argparse.Action) -> str:
    """A command-line value the option's type accepts."""
    for text in ("3", "32x16", "outputs/x"):
        try:
            (action.type or str)(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        return text
    raise AssertionError(f"no sample value for {action.option_strings}")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` alone: required options are not the point here."""
    for action in parser._actions:
        action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    namespace, _ = parser.parse_known_args(argv)
    return namespace


def test_the_tools_still_accept_old_spellings():
    assert {(alias.script, alias.old) for alias in ALIASES} >= {
        ("video-seg-eval", "--out"),
        ("video-seg-generate", "--fps"),
        ("video-seg-train", "--no-progress"),
    }


@pytest.mark.parametrize("alias", ALIASES, ids=lambda alias: f"{alias.script}{alias.old}")
def test_an_old_option_spelling_sets_what_the_new_one_sets_and_says_it_is_deprecated(
    alias, capsys
):
    parser = PARSERS[alias.script]
    action = next(a for a in parser._actions if alias.old in a.option_strings)
    value = [_sample_value(action)] if alias.takes_value else []
    old = _parse(parser, [alias.old, *value])
    warning = capsys.readouterr().err
    new = _parse(parser, [alias.new, *value])
    assert capsys.readouterr().err == ""  # the current spelling is quiet
    assert getattr(old, alias.dest) == getattr(new, alias.dest)
    assert getattr(old, alias.dest) != parser.get_default(alias.dest)  # it really set something
    assert warning.count("deprecated") == 1
    assert f"{alias.old} is deprecated" in warning and alias.new in warning


def test_old_spellings_are_hidden_from_the_help():
    for alias in ALIASES:
        spelling = re.compile(rf"(?<![\w-]){re.escape(alias.old)}(?![\w-])")
        assert not spelling.search(PARSERS[alias.script].format_help()), alias


def test_the_engines_fp16_switch_warns_and_means_fp32_on_the_cpu():
    with pytest.warns(DeprecationWarning, match="precision="):
        engine = SegmentationEngine(tiny_espnet(), device="cpu", backend="torch", fp16=True)
    assert engine.precision == "fp32" and not engine.fp16  # fp16 was always ignored on the CPU


@pytest.mark.ros
def test_the_nodes_old_parameters_still_work_and_each_warns_once(tmp_path):
    """``-p use_compressed:=true`` subscribes to ``image/compressed`` (not ``image``) and
    ``-p fp16:=false`` runs fp32 (``precision: auto``): one node process for both."""
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    from video_seg_ros.runtime import NATIVE_BF16_ENV

    from ros_support import (
        NodeProcess,
        RosProbe,
        diagnostics_values,
        make_tiny_checkpoint,
        write_params_file,
    )

    params = write_params_file(
        tmp_path / "old.yaml",
        {
            "checkpoint": str(make_tiny_checkpoint(tmp_path / "tiny.pt", size=(64, 32))),
            "device": "cpu",
            "backend": "torch",
            "cpu_threads": 1,
            "diagnostics_period_s": 0.3,
        },
    )
    node = NodeProcess(
        params,
        tmp_path / "old.log",
        remaps={"image": "/old_cam/image"},
        name="seg_old_parameters",
        parameters={"use_compressed": "true", "fp16": "false"},
        env={NATIVE_BF16_ENV: "1"},  # the CPU says native bf16: `auto` alone would try bf16
    )
    probe = RosProbe("old_parameters_probe")
    try:
        compressed = probe.publisher(CompressedImage, "/old_cam/image/compressed")
        raw = probe.publisher(Image, "/old_cam/image")
        diagnostics = probe.collect(DiagnosticArray, "/diagnostics")
        subscribed = probe.wait_for(
            lambda: compressed.get_subscription_count() > 0 or not node.alive(), 240.0
        )
        assert subscribed and node.alive(), node.output()[-3000:]

        def status():
            for array in reversed(diagnostics):
                values = diagnostics_values(array, name="seg_old_parameters: segmentation")
                if values is not None:
                    return values
            return None

        values = probe.wait_for(status, 30.0)
        assert values is not None, node.output()[-3000:]
        # fp16 false turned `auto` (which would try bf16 here) into an explicit fp32
        assert (values["precision"], values["precision_reason"]) == ("fp32", "fp32 asked for")
        assert raw.get_subscription_count() == 0  # image_transport compressed: not raw
        output = node.output()
        assert output.count("parameter use_compressed is deprecated") == 1, output
        assert output.count("parameter fp16 is deprecated") == 1, output
    finally:
        probe.close()
        code = node.stop(timeout=60.0)
    assert code == 0, node.output()[-3000:]
