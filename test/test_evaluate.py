"""video-seg-eval: the evaluate_folder library function and its CLI, on small synthetic folders."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from test_engine import make_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.tools.evaluate import evaluate_folder, main

HEIGHT, WIDTH = 72, 120


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    return make_checkpoint().save(tmp_path_factory.mktemp("ckpt") / "random_espnet.pt")


@pytest.fixture(scope="module")
def engine(checkpoint_path):
    return SegmentationEngine(str(checkpoint_path), device="cpu")


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
            cv2.imwrite(str(path), canvas[:, x:x + WIDTH])
            paths.append(path)
    return root / "images", paths


def test_predictions_used_as_labels_score_perfectly_and_pairs_respect_gaps(tmp_path, engine):
    images, paths = write_sequence_folder(tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for path in paths[::2]:  # every other frame is labelled
        frame = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        cv2.imwrite(str(labels_dir / path.name), engine.segment(frame).labels)
    report = evaluate_folder(engine, images, labels=labels_dir, label_format="trainids",
                             progress=False, save_overlays=tmp_path / "overlays",
                             save_labels=tmp_path / "predictions")
    assert report["frames"] == 5 and report["labelled_frames"] == 3
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0
    assert len(report["per_class_iou"]) == 19
    # seqA 0-1-2 gives two pairs; seqB 5 -> 7 is a gap, no pair.
    assert report["tc_pairs"] == 2
    assert report["sequences"]["seqA"]["tc_pairs"] == 2
    assert report["sequences"]["seqB"] == {"frames": 2, "tc_pairs": 0, "tc": None}
    assert 0.0 <= report["tc"] <= 1.0 and report["tc_settings"]["label_warp"] == "nearest"
    assert 0.0 <= report["tc_pixel_agreement"] <= 1.0
    assert report["ms_per_frame"] > 0
    assert json.loads(json.dumps(report)) == report  # plain JSON, no NaN
    labelled = cv2.imread(str(tmp_path / "overlays" / "seqA_00000_overlay.png"))
    unlabelled = cv2.imread(str(tmp_path / "overlays" / "seqA_00001_overlay.png"))
    assert labelled.shape == (2 * HEIGHT, WIDTH, 3)  # prediction above ground truth
    assert unlabelled.shape == (HEIGHT, WIDTH, 3)
    saved = cv2.imread(str(tmp_path / "predictions" / "seqA_00000_pred_labelTrainIds.png"),
                       cv2.IMREAD_UNCHANGED)
    assert np.array_equal(saved, cv2.imread(str(labels_dir / "seqA_00000.png"), cv2.IMREAD_UNCHANGED))


def test_a_static_sequence_has_perfect_temporal_consistency(tmp_path, engine):
    frame = (np.random.default_rng(1).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
    for number in range(3):
        cv2.imwrite(str(tmp_path / f"still_{number:03d}.png"), frame)
    report = evaluate_folder(engine, tmp_path, progress=False)
    assert report["tc"] == 1.0 and report["tc_pairs"] == 2
    assert report["miou"] is None and report["per_class_iou"] == {}


def test_limit_and_frame_gap_options(tmp_path, engine):
    images, _ = write_sequence_folder(tmp_path)
    assert evaluate_folder(engine, images, limit=2, progress=False)["frames"] == 2
    # Allowing a step of 2 makes seqB's 5 -> 7 a pair as well.
    assert evaluate_folder(engine, images, max_frame_gap=2, progress=False)["tc_pairs"] == 3
    assert evaluate_folder(engine, images, tc=False, progress=False)["tc"] is None


def test_cli_writes_the_json_report_and_prints_a_summary(tmp_path, checkpoint_path, capsys):
    images, _ = write_sequence_folder(tmp_path)
    out = tmp_path / "report" / "eval.json"
    code = main(["--checkpoint", str(checkpoint_path), "--images", str(images), "--out", str(out),
                 "--device", "cpu", "--quiet", "--markdown", str(tmp_path / "eval.md")])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 5 and report["model"] == "espnet(p=2,q=3)"
    assert report["command"].startswith("video-seg-eval --checkpoint")
    printed = capsys.readouterr().out
    assert "| frames | labelled | mIoU" in printed and str(out) in printed
    assert (tmp_path / "eval.md").read_text().startswith("## Evaluation of espnet")


def test_cli_explains_a_wrong_label_format(tmp_path, checkpoint_path, capsys):
    images, paths = write_sequence_folder(tmp_path, frames_per_sequence=((0,), ()))
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    cv2.imwrite(str(labels_dir / paths[0].name), np.full((HEIGHT, WIDTH), 26, np.uint8))  # a labelId
    code = main(["--checkpoint", str(checkpoint_path), "--images", str(images), "--labels",
                 str(labels_dir), "--out", str(tmp_path / "r.json"), "--quiet"])
    assert code == 2
    assert "--label-format" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint_path), "--images", str(images), "--labels",
                 str(labels_dir), "--label-format", "cityscapes-labelids", "--out",
                 str(tmp_path / "r.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["labelled_frames"] == 1


def test_cli_errors_for_missing_inputs_say_what_to_do(tmp_path, checkpoint_path, capsys):
    images, _ = write_sequence_folder(tmp_path, frames_per_sequence=((0,), ()))
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--images", str(images)]) == 2
    assert "video-seg-import" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint_path), "--images", str(tmp_path / "nothing")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(checkpoint_path), "--images", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--checkpoint", str(checkpoint_path), "--images", str(images),
                     "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err

