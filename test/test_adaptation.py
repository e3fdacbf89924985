"""video-seg-adapt: label-free adaptation to a drive (bag or folder), hold-out and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from video_seg_ros.adaptation import AdaptationError, split_holdout
from video_seg_ros.bags import BagWriter, compressed_message, image_message, typestore
from video_seg_ros.checkpoint import load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.tools.adapt import main as adapt_main
from video_seg_ros.tools.arguments import EXIT_FAILURE
from video_seg_ros.training.losses import confident_pseudo_labels

WIDTH, HEIGHT = 64, 32
START_NS = 1_700_000_000_000_000_000


def drive_frames(count: int, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """RGB frames of a textured square moving 3 px right per frame over grass and road."""
    texture = (np.indices((12, 12)).sum(0) % 4 * 50 + 50).astype(np.uint8)
    frames = []
    for t in range(count):
        image = np.zeros((height, width, 3), np.uint8)
        image[:] = (40, 110, 40)
        image[height * 3 // 4 :] = (128, 64, 128)
        x = 4 + 3 * t
        image[8:20, x : x + 12] = np.stack([texture + 50, texture // 2, 200 - texture], axis=-1)
        frames.append(image)
    return frames


def write_bag(
    path: Path,
    frames: list[np.ndarray],
    topic: str = "/camera/image_raw",
    storage: str = "mcap",
    compressed: bool = False,
) -> Path:
    with BagWriter(path, storage=storage) as bag:
        for index, rgb in enumerate(frames):
            stamp = START_NS + index * 50_000_000
            message = (
                compressed_message(rgb, "rgb", stamp, "camera")
                if compressed
                else image_message(rgb, "rgb8", stamp, "camera")
            )
            bag.write(topic, message, stamp)
    return path


@pytest.fixture(scope="module")
def checkpoint(tiny_espnet_checkpoint) -> Path:
    """The shared tiny random ESPNet (20 outputs, input 64x32): teacher and student's start."""
    return tiny_espnet_checkpoint


def _adapt(source: Path, checkpoint: Path, output: Path, *extra: str) -> int:
    return adapt_main(
        [
            str(source),
            "--checkpoint",
            str(checkpoint),
            "-o",
            str(output),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )


def test_hold_out_is_the_contiguous_tail_of_the_drive():
    assert split_holdout(10, 0.2) == (list(range(8)), [8, 9])
    assert split_holdout(30, 0.2) == (list(range(24)), list(range(24, 30)))
    assert split_holdout(7, 0.5) == ([0, 1, 2], [3, 4, 5, 6])  # 3.5 rounds up
    with pytest.raises(AdaptationError, match="too few"):
        split_holdout(4, 0.2)  # would hold out 1 frame: no TC pair


def test_pseudo_labels_keep_only_confident_pixels_mapped_to_student_channels():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 1, 0, 0] = 10.0  # confident channel 1
    logits[0, 0, 0, 1] = 0.1  # nearly uniform: not confident
    logits[0, 0, 0, 2] = 10.0  # confident channel 0
    channels = torch.tensor([5, 7])
    labels = confident_pseudo_labels(logits, 0.9, channels)
    assert labels.tolist() == [[[7, 255, 5]]]
    valid = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    assert confident_pseudo_labels(logits, 0.9, channels, valid).tolist() == [[[7, 255, 255]]]


def test_adaptation_on_a_bag_writes_an_engine_checkpoint_holds_out_the_tail_and_resumes(
    tmp_path, checkpoint
):
    frames = drive_frames(10)
    bag = write_bag(tmp_path / "drive_bag", frames)
    out = tmp_path / "adapted"
    # confidence 0: every pixel of the (random) teacher is a pseudo-label: that loss is exercised
    assert _adapt(bag, checkpoint, out, "--confidence", "0.0") == 0

    report = json.loads((out / "report.json").read_text())
    assert report["train_frames"] == list(range(8)) and report["holdout_frames"] == [8, 9]
    work = out / "work" / "frames"
    assert sorted(p.name for p in (work / "train").iterdir()) == [
        f"drive_{i:06d}.png" for i in range(8)
    ]
    assert sorted(p.name for p in (work / "holdout").iterdir()) == [
        "drive_000008.png",
        "drive_000009.png",
    ]
    held = cv2.imread(str(work / "holdout" / "drive_000009.png"))[..., ::-1]
    assert np.array_equal(
        held, frames[9]
    )  # the held-out files are the drive's last frames, unchanged

    adapted = load_checkpoint(out / "adapted.pt")
    trained_on = adapted.training["config"]["data"]["train"]
    assert [Path(entry["images"]) for entry in trained_on] == [work / "train"]
    assert (
        adapted.source["holdout_frames"] == [8, 9] and adapted.source["tool"] == "video-seg-adapt"
    )
    original = load_checkpoint(checkpoint)
    assert any(
        not torch.equal(adapted.state_dict[k], original.state_dict[k]) for k in original.state_dict
    )
    engine = SegmentationEngine(adapted, device="cpu", precision="fp32")
    assert engine.segment(frames[9]).labels.shape == (HEIGHT, WIDTH)

    assert report["training"]["steps"] == 2 and report["tc_pairs"] == 1
    assert {"temporal", "distill_pixel", "pseudo_label"} <= set(report["training"]["final_losses"])
    assert report["training"]["final_losses"]["pseudo_label"] > 0
    assert report["before"]["teacher_pixel_agreement"] == 1.0
    assert 0.0 <= report["after"]["teacher_pixel_agreement"] <= 1.0
    assert report["before"]["tc"] is not None and report["after"]["tc"] is not None
    assert "| before (input model = teacher) |" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 0

    flow_files = sorted((out / "work" / "flow_cache").glob("*/*.npy"))
    assert flow_files
    stamps = [f.stat().st_mtime_ns for f in flow_files]
    assert _adapt(bag, checkpoint, out, "--confidence", "0.0", "--resume", "--steps", "4") == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["training"]["steps"] == 4 and resumed["training"]["steps_before_resume"] == 2
    assert [row["iteration"] for row in resumed["loss_curve"]] == [1, 2, 3, 4]
    # the frames were not rewritten, so the flow cache of the first run was reused, not recomputed
    assert [f.stat().st_mtime_ns for f in flow_files] == stamps


def test_bag_without_an_image_topic_is_refused_listing_its_topics(tmp_path, checkpoint, capsys):
    types = typestore().types
    with BagWriter(tmp_path / "no_images", storage="sqlite3") as bag:
        for index in range(3):
            bag.write(
                "/chatter", types["std_msgs/msg/String"](data=f"hello {index}"), START_NS + index
            )
    assert _adapt(tmp_path / "no_images", checkpoint, tmp_path / "out") == EXIT_FAILURE
    error = capsys.readouterr().err
    assert "no sensor_msgs/msg/Image or CompressedImage topic" in error
    assert "/chatter (std_msgs/msg/String, 3 messages)" in error
    assert not (tmp_path / "out").exists()


def test_frames_of_mixed_sizes_are_refused_and_leave_no_frames_behind(
    tmp_path, checkpoint, capsys
):
    frames = drive_frames(10)
    frames[3] = cv2.resize(frames[3], (WIDTH // 2, HEIGHT // 2))
    bag = write_bag(tmp_path / "mixed", frames, storage="sqlite3", compressed=True)
    assert _adapt(bag, checkpoint, tmp_path / "out") == EXIT_FAILURE
    error = capsys.readouterr().err
    assert "mixed sizes" in error and "frame 0 is 64x32, frame 3 is 32x16" in error
    assert not (tmp_path / "out" / "work" / "frames").exists()


def test_several_image_topics_need_a_topic_and_a_folder_with_too_few_frames_is_refused(
    tmp_path, checkpoint, capsys
):
    with BagWriter(tmp_path / "two", storage="mcap") as bag:
        for index, rgb in enumerate(drive_frames(2)):
            bag.write("/left", image_message(rgb, "rgb8", START_NS + index, "l"), START_NS + index)
            bag.write(
                "/right", image_message(rgb, "rgb8", START_NS + index, "r"), START_NS + index
            )
    assert _adapt(tmp_path / "two", checkpoint, tmp_path / "out") == EXIT_FAILURE
    assert (
        "2 image topics (/left, /right); name the camera to adapt to with --topic"
        in capsys.readouterr().err
    )

    folder = tmp_path / "frames"
    folder.mkdir()
    for index, rgb in enumerate(drive_frames(3)):
        cv2.imwrite(str(folder / f"cam_{index:04d}.png"), rgb[..., ::-1])
    assert _adapt(folder, checkpoint, tmp_path / "out") == EXIT_FAILURE
    assert "3 frame(s) are too few for a hold-out of 0.2" in capsys.readouterr().err


def test_checkpoint_of_another_label_set_is_refused(tmp_path, checkpoint, capsys):
    bag = write_bag(tmp_path / "bag", drive_frames(4))
    assert _adapt(bag, checkpoint, tmp_path / "out", "--label-set", "camvid") == EXIT_FAILURE
    assert "predicts the 'cityscapes' label set, not 'camvid'" in capsys.readouterr().err


def test_frames_keep_their_own_names_so_their_label_files_still_match(tmp_path):
    from video_seg_ros.adaptation import extract_frames, open_drive
    from video_seg_ros.frames import index_label_files, list_frames
    from video_seg_ros.tools import make_bag

    folder = tmp_path / "aachen"
    folder.mkdir()
    for index, rgb in enumerate(drive_frames(4)):
        cv2.imwrite(str(folder / f"aachen_000002_{index:06d}_leftImg8bit.png"), rgb[..., ::-1])
        cv2.imwrite(
            str(folder / f"aachen_000002_{index:06d}_pseudo_labelIds.png"),
            np.full((HEIGHT, WIDTH), 7, np.uint8),
        )
    assert make_bag.main([str(folder), "-o", str(tmp_path / "bag"), "--quiet"]) == 0
    drive = open_drive(tmp_path / "bag")
    manifest = extract_frames(drive, tmp_path / "frames", None, None, 0.5, progress=False)
    assert manifest["holdout"] == [2, 3]
    held = list_frames(tmp_path / "frames" / "holdout")
    assert [r.path.name for r in held] == ["aachen_000002_000002.png", "aachen_000002_000003.png"]
    labels = index_label_files(folder, "cityscapes-labelids")
    assert all(record.key in labels for record in held)  # video-seg-eval --labels finds them


def test_fused_targets_train_the_student_on_the_teachers_fused_labels(tmp_path, checkpoint):
    from video_seg_ros.adaptation import write_fused_targets

    frames = drive_frames(10)
    bag = write_bag(tmp_path / "drive_bag", frames)
    out = tmp_path / "adapted"
    # confidence 0: every pixel of the (random) teacher's fused map is a target; without the
    # per-frame KL no teacher runs in training
    assert (
        _adapt(
            bag,
            checkpoint,
            out,
            "--targets",
            "fused",
            "--confidence",
            "0.0",
            "--distill-weight",
            "0",
            "--precision",
            "fp32",  # the exact comparison below must not depend on the CPU's bf16
        )
        == 0
    )

    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["targets"] == "fused"
    assert report["fused_targets"] == {"frames": 8, "confident_share": 1.0}
    targets = out / "work" / "fused_targets"
    assert sorted(p.name for p in targets.iterdir()) == [f"drive_{i:06d}.png" for i in range(8)]
    first = cv2.imread(str(targets / "drive_000000.png"), cv2.IMREAD_UNCHANGED)
    # The first frame of a drive has no past: its fused labels are the teacher's own.
    teacher = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32")
    assert np.array_equal(first, teacher.segment(frames[0]).labels)

    adapted = load_checkpoint(out / "adapted.pt")
    trained = adapted.training["config"]
    assert trained["teacher"] is None and trained["data"]["train"][0]["labels"] == str(targets)
    final = report["training"]["final_losses"]
    assert final["ce"] > 0 and "temporal" in final
    assert "distill_pixel" not in final and "pseudo_label" not in final
    engine = SegmentationEngine(adapted, device="cpu", precision="fp32")
    assert engine.segment(frames[9]).labels.shape == (HEIGHT, WIDTH)

    # A pixel whose fused probability is below the confidence asked for is left unlabelled.
    strict = write_fused_targets(
        load_checkpoint(checkpoint),
        out / "work" / "frames" / "train",
        tmp_path / "strict",
        0.99,
        device="cpu",
        precision="fp32",
        progress=False,
    )
    assert strict["confident_share"] < 1.0
    assert 255 in cv2.imread(str(tmp_path / "strict" / "drive_000003.png"), cv2.IMREAD_UNCHANGED)
