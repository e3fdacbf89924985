"""One evaluator: video-seg-eval, the demo's scoring and Trainer.validate give identical mIoU
and TC.

The same frames (two sequences, one with a frame-number gap, labels at another resolution than the
frames) go through the three entry points:
``video_seg_ros.evaluation_report.evaluate_folder`` (what
``video-seg-eval`` runs), ``tools.demo.score`` on a bag of the frames plus a "recorded" bag of the
engine's labels (what the demo does with the node's output), and ``Trainer.validate`` on the
same folder as ``data.val`` with the same checkpoint as ``model.init``.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from video_seg_ros.bags import BagWriter, image_message, read_images, write_bag
from video_seg_ros.checkpoint import load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.evaluation import EvaluationOptions
from video_seg_ros.evaluation_report import evaluate_folder
from video_seg_ros.streams import FolderStream, open_stream
from video_seg_ros import runtime
from video_seg_ros.tools import demo
from video_seg_ros.tools import evaluate as evaluate_tool

HEIGHT, WIDTH = 64, 96
SEQUENCES = {"seqa": (0, 1, 2, 3), "seqb": (10, 11, 13)}  # seqb: 11 -> 13 is a gap


@pytest.fixture(scope="module")
def snippet(tmp_path_factory):
    """Frames of a texture panning 2 px per frame and labels (a class per stripe, shifted with the
    texture) stored at half the frame resolution."""
    root = tmp_path_factory.mktemp("snippet")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(7)
    canvas = cv2.GaussianBlur(
        (rng.random((HEIGHT, WIDTH + 60, 3)) * 255).astype(np.uint8), (0, 0), 2.0
    )
    stripes = (np.arange(WIDTH + 60) // 12 % 19).astype(np.uint8)
    for name, numbers in SEQUENCES.items():
        for number in numbers:
            x = 2 * number
            cv2.imwrite(
                str(root / "images" / f"{name}_{number:05d}.png"), canvas[:, x : x + WIDTH]
            )
            label = np.repeat(stripes[None, x : x + WIDTH], HEIGHT, axis=0)
            label[:6] = 255
            small = cv2.resize(label, (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / "labels" / f"{name}_{number:05d}.png"), small)
    return root


@pytest.fixture(scope="module", params=["0", "1"], ids=["no-native-bf16", "native-bf16"])
def bf16_probe(request):
    """Every test of this module runs with the CPU probe answering no, then yes: the figures of
    every entry point must not depend on the CPU that made them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.NATIVE_BF16_ENV, request.param)
        yield request.param == "1"


@pytest.fixture(scope="module")
def eval_report(bf16_probe, snippet, tiny_espnet_checkpoint, tmp_path_factory):
    """The report of ``video-seg-eval`` itself, with its default precision."""
    output = tmp_path_factory.mktemp("eval") / "report.json"
    assert (
        evaluate_tool.main(
            [
                "--checkpoint",
                str(tiny_espnet_checkpoint),
                "--images",
                str(snippet / "images"),
                "--labels",
                str(snippet / "labels"),
                "--label-format",
                "trainids",
                "--device",
                "cpu",
                "--backend",
                "torch",
                "-o",
                str(output),
                "-q",
            ]
        )
        == 0
    )
    report = json.loads(output.read_text())
    assert report["precision"] == "fp32" and report["cpu"].endswith(
        "(native bf16)" if bf16_probe else "(no native bf16)"
    )
    return report


def test_the_library_evaluator_gives_the_reports_figures(
    eval_report, snippet, tiny_espnet_checkpoint
):
    engine = SegmentationEngine(
        str(tiny_espnet_checkpoint),
        device="cpu",
        backend="torch",
        precision=runtime.EVALUATION_PRECISION,
    )
    report = evaluate_folder(
        engine,
        FolderStream(snippet / "images", snippet / "labels", "trainids"),
        EvaluationOptions(),
        progress=False,
    )
    assert (report["miou"], report["tc"]) == (eval_report["miou"], eval_report["tc"])


def test_the_evaluator_pairs_only_consecutive_frames_of_a_sequence(eval_report):
    assert eval_report["frames"] == 7 and eval_report["labelled_frames"] == 7
    assert eval_report["sequences"]["seqa"]["tc_pairs"] == 3
    assert eval_report["sequences"]["seqb"]["tc_pairs"] == 1
    assert eval_report["tc_pairs"] == 4
    assert eval_report["miou"] is not None and eval_report["tc"] is not None


def test_demo_scoring_gives_the_same_miou_and_tc_as_video_seg_eval(
    snippet, tiny_espnet_checkpoint, eval_report, tmp_path
):
    checkpoint = load_checkpoint(tiny_espnet_checkpoint)
    input_bag = tmp_path / "input_bag"
    write_bag(open_stream(snippet / "images"), input_bag, rate=10.0, progress=False)
    # What the node would publish: the engine's labels, stamped like their input frames.
    engine = SegmentationEngine(
        checkpoint, device="cpu", backend="torch", precision=runtime.EVALUATION_PRECISION
    )
    recorded = tmp_path / "recorded_bag"
    messages = []
    with BagWriter(recorded) as bag:
        for image in read_images(input_bag):
            labels = engine.segment(image.rgb()).labels
            bag.write(
                f"/{demo.NODE_NAME}/labels",
                image_message(labels, "mono8", image.stamp_ns, "camera"),
                image.stamp_ns + 1000,
            )
            messages.append({"stamp_ns": image.stamp_ns, "publish_ns": image.stamp_ns})
    labels = demo.load_labels(
        [key for key in (p.stem for p in sorted((snippet / "images").iterdir()))],
        snippet / "labels",
        "trainids",
    )
    demo_input = demo.DemoInput(input_bag, labels, "snippet")
    run = {
        "recorded_bag": recorded,
        "player": {"messages": messages},
        "topic": "/camera/image_raw",
        "bag_hz": 10.0,
    }
    results = demo.score(
        demo_input, run, tmp_path, checkpoint, 1024, EvaluationOptions(), progress=False
    )
    assert results["frames_lost"] == 0 and results["labelled_frames"] == 7
    assert (results["miou"], results["tc"], results["tc_pairs"]) == (
        eval_report["miou"],
        eval_report["tc"],
        eval_report["tc_pairs"],
    )
    assert results["per_class_iou"] == eval_report["per_class_iou"]


def test_trainer_validate_gives_the_same_miou_and_tc_as_video_seg_eval(
    snippet, tiny_espnet_checkpoint, eval_report, tmp_path
):
    from video_seg_ros.training.config import load_config
    from video_seg_ros.training.trainer import Trainer

    folder = {
        "type": "folder",
        "images": str(snippet / "images"),
        "labels": str(snippet / "labels"),
        "label_format": "trainids",
    }
    config_file = tmp_path / "config.yaml"
    import yaml

    config_file.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "model": {"init": str(tiny_espnet_checkpoint)},
                "data": {"train": [folder], "val": [folder], "crop": [48, 32]},
                "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
            }
        )
    )
    trainer = Trainer(load_config(config_file), progress=False)
    figures = trainer.validate()
    assert set(figures) == {"val_miou", "val_tc"}
    # The evaluator's report rounds to 5 digits; validate returns the unrounded fractions.
    assert round(figures["val_miou"], 5) == eval_report["miou"]
    assert round(figures["val_tc"], 5) == eval_report["tc"]
    assert trainer.net.training  # validation leaves the model in training mode
