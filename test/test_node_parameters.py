"""The node's parameters are documented in one place: the descriptors in
video_seg_ros/ros/parameters.py generate the README table and match config/video_seg.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from video_seg_ros.ros.parameters import PARAMETERS, markdown_table, validate_choice

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = (
    "<!-- parameters table: generated, do not edit by hand -->\n",
    "<!-- end of parameters table -->",
)


def test_readme_parameter_table_is_the_one_generated_from_the_descriptors():
    readme = (REPO / "README.md").read_text()
    assert BEGIN in readme and END in readme, (
        "the README lost the generated parameters table markers"
    )
    table = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    assert table == markdown_table(), (
        "README.md's parameter table differs from the node's descriptors; "
        "regenerate it with: .venv/bin/python -m video_seg_ros.ros.parameters"
    )
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == set(PARAMETERS)


def test_parameter_docs_do_not_point_at_each_other_in_a_circle():
    """README holds the table; the YAML and docs/node.md point to it, the README does not point
    back."""
    config_header = (REPO / "config" / "video_seg.yaml").read_text().split("/**:")[0]
    assert "README.md" in config_header and "docs/node.md" not in config_header
    node_doc = (REPO / "docs" / "node.md").read_text()
    assert (
        "README" in node_doc and "| `checkpoint` |" not in node_doc
    )  # no second copy of the table
    section = (REPO / "README.md").read_text().split("### Parameters", 1)[1].split("### ", 1)[0]
    assert "docs/node.md" not in section


def test_every_parameter_has_a_description_and_deprecated_ones_say_what_replaces_them():
    for name, spec in PARAMETERS.items():
        assert spec.description.strip().endswith("."), name
        if spec.deprecated:
            assert spec.deprecated in PARAMETERS and spec.deprecated in spec.description, name
    shipped = yaml.safe_load((REPO / "config" / "video_seg.yaml").read_text())["/**"][
        "ros__parameters"
    ]
    deprecated = {name: spec.deprecated for name, spec in PARAMETERS.items() if spec.deprecated}
    assert deprecated == {"fp16": "precision", "use_compressed": "image_transport"}
    assert not set(deprecated) & set(shipped), "deprecated parameters in the shipped file"


def test_string_choices_are_validated_with_a_reason():
    assert validate_choice("backend", "openvino") is None
    assert "backend must be one of auto, torch, openvino, tensorrt" in validate_choice(
        "backend", "onnx"
    )
    assert validate_choice("precision", "bf16") is None and validate_choice("precision", "fp8")
    assert validate_choice("image_transport", "compressed") is None and validate_choice(
        "image_transport", "theora"
    )
    assert validate_choice("device", "cuda:1") is None and validate_choice("device", "gpu")
    assert validate_choice("cameras", ["front", "rear_left"]) is None
    assert "duplicate" in validate_choice("cameras", ["front", "front"])
    assert "not a valid topic name" in validate_choice("cameras", ["front/left"])
