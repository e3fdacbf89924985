"""The synthetic driving-sequence generator: determinism, valid ground truth, exact flow,
layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from video_seg_ros.flow import warp_image, warp_labels
from video_seg_ros.frames import (
    group_sequences,
    index_label_files,
    list_frames,
    read_label,
    read_rgb,
)
from video_seg_ros.labels import CITYSCAPES, IGNORE_ID
from video_seg_ros.synthetic import (
    DEMO_SEED,
    contact_sheet,
    demo_sequence,
    frame_stem,
    generate_sequence,
    read_flow,
    write_sequence,
)
from video_seg_ros.tools import generate as generate_cli

WIDTH, HEIGHT = 256, 128


def _frames(seed, num_frames=3, **kwargs):
    return list(generate_sequence(seed, num_frames, WIDTH, HEIGHT, **kwargs))


def test_same_seed_gives_identical_frames_labels_and_flow():
    first, second = _frames(11), _frames(11)
    for a, b in zip(first, second):
        assert np.array_equal(a.rgb, b.rgb)
        assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(first[0].flow_to_next, second[0].flow_to_next)


def test_different_seeds_give_different_streets():
    a, b = _frames(11, 1)[0], _frames(12, 1)[0]
    assert np.mean(a.labels != b.labels) > 0.05
    assert np.abs(a.rgb.astype(int) - b.rgb).mean() > 5


def test_short_sequence_is_a_prefix_of_a_longer_one():
    # The demo and the data sets may ask for any length; the street must not change with it.
    short, long = _frames(5, 2), _frames(5, 4)
    for a, b in zip(short, long):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.labels, b.labels)


def test_labels_are_cityscapes_train_ids_with_many_classes():
    present = set()
    for frame in _frames(3, 2) + _frames(4, 1):
        assert frame.labels.dtype == np.uint8 and frame.labels.shape == (HEIGHT, WIDTH)
        assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (HEIGHT, WIDTH, 3)
        ids = set(np.unique(frame.labels).tolist())
        assert ids <= set(range(CITYSCAPES.num_classes)) | {IGNORE_ID}
        present |= ids
    for name in ("road", "sidewalk", "building", "pole", "vegetation", "sky", "car"):
        assert CITYSCAPES.names.index(name) in present, f"{name} never appears"
    assert len(present - {IGNORE_ID}) >= 9


def test_true_flow_warps_next_frame_onto_current_frame():
    frames = _frames(21, 2, effects=False)
    current, following = frames[0], frames[1]
    flow, valid = current.flow_to_next, current.flow_valid
    assert flow.shape == (HEIGHT, WIDTH, 2) and flow.dtype == np.float32
    assert valid.mean() > 0.7  # most of the view stays visible from one frame to the next
    warped = warp_image(following.rgb.astype(np.float32), flow)
    error_warped = np.abs(warped - current.rgb).mean(-1)[valid].mean()
    error_static = np.abs(following.rgb.astype(np.float32) - current.rgb).mean(-1)[valid].mean()
    assert error_warped < 0.5 * error_static
    # Labels: agreement over every pixel that stays in the image (occlusions included).
    warped_labels = warp_labels(following.labels, flow)
    inside = warped_labels != IGNORE_ID
    agreement_warped = np.mean(warped_labels[inside] == current.labels[inside])
    agreement_static = np.mean(following.labels[inside] == current.labels[inside])
    assert agreement_warped > 0.95 and agreement_warped > agreement_static + 0.01
    assert frames[-1].flow_to_next is None and frames[-1].flow_valid is None


def test_camera_effects_change_pixels_but_not_labels():
    clean, noisy = _frames(8, 1, effects=False)[0], _frames(8, 1)[0]
    assert np.array_equal(clean.labels, noisy.labels)
    assert np.abs(clean.rgb.astype(int) - noisy.rgb).mean() > 1.0


def test_written_layout_reads_back_through_the_frame_reader(tmp_path):
    paths = write_sequence(
        tmp_path, seed=7, num_frames=3, width=WIDTH, height=HEIGHT, split="val", write_flow=True
    )
    assert len(paths) == 3
    records = list_frames(tmp_path / "leftImg8bit_sequence" / "val")
    sequences = group_sequences(records)
    assert list(sequences) == ["synth_000007"] and [r.frame for r in records] == [0, 1, 2]
    label_index = index_label_files(tmp_path / "gtFine" / "val")
    generated = _frames(7, 3)
    for record, frame in zip(records, generated):
        assert record.key == frame_stem(7, frame.index)
        assert np.array_equal(read_rgb(record.path), frame.rgb)
        assert np.array_equal(read_label(label_index[record.key], "trainids"), frame.labels)
    flow, valid = read_flow(
        tmp_path / "flow" / "val" / "synth" / f"{frame_stem(7, 0)}_flowToNext.npz"
    )
    assert np.allclose(flow, generated[0].flow_to_next, atol=0.05)
    assert np.array_equal(valid, generated[0].flow_valid)


def test_generate_cli_writes_dataset_report_and_contact_sheet(tmp_path):
    out, sheet = tmp_path / "data", tmp_path / "sheet.png"
    code = generate_cli.main(
        [
            "-o",
            str(out),
            "--sequences",
            "2",
            "--frames",
            "2",
            "--seed",
            "3",
            "--size",
            "128x64",
            "--contact-sheet",
            str(sheet),
        ]
    )
    assert code == 0
    assert len(list_frames(out / "leftImg8bit_sequence" / "train")) == 4
    assert len(index_label_files(out / "gtFine" / "train")) == 4
    report = json.loads((out / "generation_report.json").read_text())[-1]
    assert report["sequence_seeds"] == [3000, 3001] and report["frames_written"] == 4
    assert report["class_pixel_fraction"]["road"] > 0.1
    assert read_rgb(sheet).shape[1] > 2 * 128  # frame and overlay side by side (tile width 512)


def test_generate_cli_rejects_bad_arguments_with_a_message(capsys):
    with pytest.raises(SystemExit) as error:
        generate_cli.main(["-o", "x", "--size", "big"])
    assert error.value.code == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err
    assert generate_cli.main(["-o", "x", "--frames", "0"]) == 2
    with pytest.raises(ValueError, match="num_frames"):
        next(generate_sequence(0, 0, WIDTH, HEIGHT))


def test_demo_sequence_is_the_fixed_demo_seed():
    demo = next(iter(demo_sequence(num_frames=1, width=WIDTH, height=HEIGHT)))
    assert demo.seed == DEMO_SEED
    assert np.array_equal(demo.labels, _frames(DEMO_SEED, 1)[0].labels)


def test_contact_sheet_puts_frame_beside_overlay():
    frame = _frames(2, 1)[0]
    sheet = contact_sheet([frame], tile_width=WIDTH)
    assert sheet.shape == (HEIGHT, 2 * WIDTH + 4, 3)
    assert np.array_equal(
        sheet[:, :WIDTH], frame.rgb
    )  # same size: the left tile is the frame itself
    assert not np.array_equal(sheet[:, WIDTH + 4 :], frame.rgb)
