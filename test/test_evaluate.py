"""video-seg-eval: the library evaluator (video_seg_ros.evaluation and evaluation_report) and
its CLI, on small folders."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch

from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.evaluation import EvaluationOptions
from video_seg_ros.evaluation_report import evaluate_folder
from video_seg_ros.metrics import TemporalConsistency
from video_seg_ros.streams import FolderStream
from video_seg_ros.tools.evaluate import main

HEIGHT, WIDTH = 72, 120


@pytest.fixture(scope="module")
def engine(tiny_espnet_checkpoint):
    return SegmentationEngine(str(tiny_espnet_checkpoint), device="cpu", precision="fp32")


def write_sequence_folder(root, frames_per_sequence=((0, 1, 2), (5, 7))):
    """Two CamVid-style sequences of a panning texture; the second has a gap (5 -> 7)."""
    rng = np.random.default_rng(0)
    canvas = (rng.random((HEIGHT, WIDTH + 40, 3)) * 255).astype(np.uint8)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 3.0)
    paths = []
    for name, numbers in zip(("seqA", "seqB"), frames_per_sequence):
        for number in numbers:
            x = 2 * number
            path = root / "images" / f"{name}_{number:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), canvas[:, x : x + WIDTH])
            paths.append(path)
    return root / "images", paths


def rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_predictions_used_as_labels_score_perfectly_and_pairs_respect_gaps(tmp_path, engine):
    images, paths = write_sequence_folder(tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for path in paths[::2]:  # every other frame is labelled
        cv2.imwrite(str(labels_dir / path.name), engine.segment(rgb(path)).labels)
    start = time.perf_counter()
    report = evaluate_folder(
        engine,
        FolderStream(images, labels_dir, "trainids"),
        progress=False,
        save_overlays=tmp_path / "overlays",
        save_labels=tmp_path / "predictions",
    )
    wall_ms = (time.perf_counter() - start) * 1000
    assert report["frames"] == 5 and report["labelled_frames"] == 3
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0
    assert len(report["per_class_iou"]) == 19
    # seqA 0-1-2 gives two pairs; seqB 5 -> 7 is a gap, no pair.
    assert report["tc_pairs"] == 2
    assert report["sequences"]["seqA"]["tc_pairs"] == 2
    assert report["sequences"]["seqB"] == {"frames": 2, "tc_pairs": 0, "tc": None}
    # TC is exactly the dataset-level TC of the two seqA pairs, computed here by hand.
    predictions = [engine.segment(rgb(path)).labels for path in paths[:3]]
    expected = TemporalConsistency(19, flow_width=1024)
    for t in (0, 1):
        expected.update(rgb(paths[t]), rgb(paths[t + 1]), predictions[t], predictions[t + 1])
    assert report["tc"] == round(expected.tc, 5)
    assert report["tc_pixel_agreement"] == round(expected.matrix.pixel_accuracy, 5)
    assert report["tc_settings"]["label_warp"] == "nearest"
    # The median of the frames' model times: 3 of the 5 frames took at least that long, and all
    # of them ran inside this call.
    assert 0 < report["ms_per_frame"] <= wall_ms / 3
    assert json.loads(json.dumps(report)) == report  # plain JSON, no NaN
    labelled = cv2.imread(str(tmp_path / "overlays" / "seqA_00000_overlay.png"))
    unlabelled = cv2.imread(str(tmp_path / "overlays" / "seqA_00001_overlay.png"))
    assert labelled.shape == (2 * HEIGHT, WIDTH, 3)  # prediction above ground truth
    assert unlabelled.shape == (HEIGHT, WIDTH, 3)
    saved = cv2.imread(
        str(tmp_path / "predictions" / "seqA_00000_pred_labelTrainIds.png"), cv2.IMREAD_UNCHANGED
    )
    assert np.array_equal(
        saved, cv2.imread(str(labels_dir / "seqA_00000.png"), cv2.IMREAD_UNCHANGED)
    )


def test_limit_and_frame_gap_options(tmp_path, engine):
    images, _ = write_sequence_folder(tmp_path)
    assert evaluate_folder(engine, FolderStream(images, limit=2), progress=False)["frames"] == 2
    # Allowing a step of 2 makes seqB's 5 -> 7 a pair as well.
    assert (
        evaluate_folder(engine, images, EvaluationOptions(max_frame_gap=2), progress=False)[
            "tc_pairs"
        ]
        == 3
    )
    report = evaluate_folder(engine, images, EvaluationOptions(tc=False), progress=False)
    assert report["tc"] is None and report["tc_pairs"] == 0
    with pytest.raises(ValueError, match="max_frame_gap"):
        EvaluationOptions(max_frame_gap=0)


def test_cli_writes_the_json_report_and_prints_a_summary(tmp_path, tiny_espnet_checkpoint, capsys):
    images, _ = write_sequence_folder(tmp_path)
    out = tmp_path / "report" / "eval.json"
    code = main(
        [
            "--checkpoint",
            str(tiny_espnet_checkpoint),
            "--images",
            str(images),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--backend",
            "torch",
            "--precision",
            "fp32",
            "--quiet",
            "--markdown",
            str(tmp_path / "eval.md"),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 5 and report["model"] == "espnet(p=2,q=3)"
    assert report["command"].startswith("video-seg-eval --checkpoint")
    assert report["backend"] == "torch" and report["precision"] == "fp32"
    printed = capsys.readouterr().out
    assert "| frames | labelled | mIoU" in printed and str(out) in printed
    assert (tmp_path / "eval.md").read_text().startswith("## Evaluation of espnet")


def test_cli_explains_a_wrong_label_format(tmp_path, tiny_espnet_checkpoint, capsys):
    images, paths = write_sequence_folder(tmp_path, frames_per_sequence=((0,), ()))
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    cv2.imwrite(
        str(labels_dir / paths[0].name), np.full((HEIGHT, WIDTH), 26, np.uint8)
    )  # a labelId
    code = main(
        [
            "--checkpoint",
            str(tiny_espnet_checkpoint),
            "--images",
            str(images),
            "--labels",
            str(labels_dir),
            "-o",
            str(tmp_path / "r.json"),
            "--quiet",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "--label-format" in err and paths[0].name in err
    assert (
        main(
            [
                "--checkpoint",
                str(tiny_espnet_checkpoint),
                "--images",
                str(images),
                "--labels",
                str(labels_dir),
                "--label-format",
                "cityscapes-labelids",
                "-o",
                str(tmp_path / "r.json"),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["labelled_frames"] == 1


def test_cli_errors_for_missing_inputs_say_what_to_do(tmp_path, tiny_espnet_checkpoint, capsys):
    images, _ = write_sequence_folder(tmp_path, frames_per_sequence=((0,), ()))
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--images", str(images)]) == 1
    assert "video-seg-import" in capsys.readouterr().err
    assert (
        main(["--checkpoint", str(tiny_espnet_checkpoint), "--images", str(tmp_path / "nothing")])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["--checkpoint", str(tiny_espnet_checkpoint), "--images", str(tmp_path / "empty")])
        == 1
    )
    assert "no images" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert (
            main(
                [
                    "--checkpoint",
                    str(tiny_espnet_checkpoint),
                    "--images",
                    str(images),
                    "--device",
                    "cuda",
                ]
            )
            == 1
        )
        assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # usage errors: status 2
        main(["--images", str(images), "--limit", "0"])
    assert exit_info.value.code == 2


def test_an_unreadable_frame_stops_the_run_unless_skipped(
    tmp_path, tiny_espnet_checkpoint, capsys
):
    images, paths = write_sequence_folder(tmp_path)
    paths[1].write_bytes(b"not a png")
    arguments = [
        "--checkpoint",
        str(tiny_espnet_checkpoint),
        "--images",
        str(images),
        "--quiet",
        "-o",
        str(tmp_path / "r.json"),
    ]
    assert main(arguments) == 1
    assert paths[1].name in capsys.readouterr().err
    assert main([*arguments, "--skip-unreadable"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 4 and [s["file"] for s in report["skipped"]] == [str(paths[1])]
    # seqA 0 -> 2 is now a gap: no pair crosses the skipped frame.
    assert report["sequences"]["seqA"]["tc_pairs"] == 0
    assert paths[1].name in capsys.readouterr().out
