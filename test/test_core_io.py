"""Label tables, the frame reader and the checkpoint format (round trip and error messages)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from video_seg_ros.checkpoint import (
    Checkpoint,
    CheckpointError,
    Preprocessing,
    load_checkpoint,
    output_to_class_for,
)
from video_seg_ros.frames import (
    group_sequences,
    index_label_files,
    list_frames,
    read_label,
    read_rgb,
)
from video_seg_ros.labels import (
    CAMVID,
    CITYSCAPES,
    IGNORE_ID,
    colorize,
    convert_label_image,
    overlay,
    palette_lookup_table,
)


# ---- labels ------------------------------------------------------------------------------------
def test_cityscapes_label_ids_become_train_ids():
    label_ids = np.array([[7, 8, 26, 33], [0, 1, 6, 255]], np.uint8)
    train_ids = convert_label_image(label_ids, "cityscapes-labelids")
    assert train_ids.tolist() == [[0, 1, 13, 18], [255, 255, 255, 255]]
    assert train_ids.dtype == np.uint8


def test_camvid_unlabelled_class_11_becomes_ignore():
    camvid = np.array([[0, 10, 11]], np.uint8)
    assert convert_label_image(camvid, "camvid").tolist() == [[0, 10, IGNORE_ID]]


def test_train_ids_pass_through_and_bad_inputs_are_refused():
    assert convert_label_image(np.array([[3, 255]], np.uint8), "trainids").tolist() == [[3, 255]]
    with pytest.raises(ValueError, match="choose one of"):
        convert_label_image(np.zeros((2, 2), np.uint8), "voc")
    with pytest.raises(ValueError, match="single-channel"):
        convert_label_image(np.zeros((2, 2, 3), np.uint8), "trainids")


def test_palette_colours_classes_and_overlay_keeps_unlabelled_pixels():
    table = palette_lookup_table(CITYSCAPES.palette)
    labels = np.array([[0, 13, IGNORE_ID]], np.uint8)
    assert colorize(labels, table).tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
    frame = np.full((1, 3, 3), 200, np.uint8)
    blended = overlay(frame, labels, table, alpha=0.5)
    assert blended[0, 2].tolist() == [200, 200, 200]
    assert blended[0, 0].tolist() == [164, 132, 164]
    assert CAMVID.num_classes == 11 and len(CAMVID.palette) == 11


# ---- frames ------------------------------------------------------------------------------------
def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_list_frames_groups_cityscapes_sequences_and_skips_annotation_images(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    for name in (
        "aachen_000001_000002",
        "aachen_000001_000001",
        "aachen_000000_000019",
        "bochum_000000_000003",
    ):
        write_png(tmp_path / "leftImg8bit" / f"{name}_leftImg8bit.png", image)
    write_png(tmp_path / "gtFine" / "aachen_000000_000019_gtFine_labelIds.png", image[..., 0])
    write_png(tmp_path / "gtFine" / "aachen_000000_000019_gtFine_color.png", image)
    records = list_frames(tmp_path)
    assert [(r.sequence, r.frame) for r in records] == [
        ("aachen_000000", 19),
        ("aachen_000001", 1),
        ("aachen_000001", 2),
        ("bochum_000000", 3),
    ]
    assert records[0].key == "aachen_000000_000019"
    groups = group_sequences(records)
    assert list(groups) == ["aachen_000000", "aachen_000001", "bochum_000000"]
    assert [r.frame for r in groups["aachen_000001"]] == [1, 2]


def test_list_frames_understands_camvid_and_bare_numbered_names(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    for name in (
        "0016E5_08010.png",
        "0001TP_006720.png",
        "0001TP_006690.png",
        "0006R0_f01020.png",
    ):
        write_png(tmp_path / "camvid" / name, image)
    for name in ("000002.png", "000010.png", "000001.png"):
        write_png(tmp_path / "drive" / name, image)
    records = list_frames(tmp_path)
    by_sequence = {
        name: [r.frame for r in group] for name, group in group_sequences(records).items()
    }
    assert by_sequence["0001TP"] == [6690, 6720]
    assert by_sequence["0016E5"] == [8010]
    assert by_sequence["drive"] == [1, 2, 10]  # numeric order, not string order
    assert [r for r in records if r.sequence.startswith("0006R0")][0].frame == 1020


def test_list_frames_on_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_frames(tmp_path / "nope")


def test_label_index_prefers_files_in_the_requested_format(tmp_path):
    label = np.zeros((4, 6), np.uint8)
    write_png(tmp_path / "aachen_000000_000019_gtFine_labelIds.png", label)
    write_png(tmp_path / "aachen_000000_000019_gtFine_labelTrainIds.png", label)
    write_png(tmp_path / "aachen_000000_000019_gtFine_color.png", np.zeros((4, 6, 3), np.uint8))
    write_png(tmp_path / "0001TP_006690.png", label)
    trainids = index_label_files(tmp_path, "trainids")
    labelids = index_label_files(tmp_path, "cityscapes-labelids")
    assert trainids["aachen_000000_000019"].name.endswith("_gtFine_labelTrainIds.png")
    assert labelids["aachen_000000_000019"].name.endswith("_gtFine_labelIds.png")
    assert trainids["0001TP_006690"].name == "0001TP_006690.png"
    assert not any("color" in path.name for path in trainids.values())


def test_read_rgb_returns_rgb_and_read_label_converts(tmp_path):
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue stored in OpenCV's BGR order
    write_png(tmp_path / "blue.png", bgr)
    assert read_rgb(tmp_path / "blue.png")[0, 0].tolist() == [0, 0, 255]
    write_png(tmp_path / "label.png", np.array([[7, 26]], np.uint8))
    assert read_label(tmp_path / "label.png", "cityscapes-labelids").tolist() == [[0, 13]]
    with pytest.raises(ValueError, match="colour channels"):
        read_label(tmp_path / "blue.png", "trainids")


def test_unreadable_image_error_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        read_rgb(broken)


# ---- checkpoint --------------------------------------------------------------------------------
def small_checkpoint() -> Checkpoint:
    return Checkpoint(
        arch="espnet",
        arch_kwargs={"p": 2, "q": 3, "num_classes": 20},
        state_dict={"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.arange(4.0)},
        label_set="cityscapes",
        class_names=list(CITYSCAPES.names),
        palette=[list(c) for c in CITYSCAPES.palette],
        output_to_class=output_to_class_for("cityscapes", 20),
        preprocessing=Preprocessing(
            64, 128, "bgr", [72.4, 82.9, 73.2], [45.3, 46.2, 44.9], 1 / 255
        ),
        source={"weights_file": "x.pth"},
        training={"epochs": 3},
    )


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    original = small_checkpoint()
    path = original.save(tmp_path / "sub" / "model.pt")
    assert not (tmp_path / "sub" / "model.pt.partial").exists()
    loaded = load_checkpoint(path)
    assert loaded.state_dict.keys() == original.state_dict.keys()
    for key, tensor in original.state_dict.items():
        assert torch.equal(loaded.state_dict[key], tensor)
    assert loaded.preprocessing == original.preprocessing
    assert loaded.output_to_class[-1] == IGNORE_ID and loaded.num_outputs == 20
    assert (
        loaded.arch,
        loaded.arch_kwargs,
        loaded.class_names,
        loaded.palette,
        loaded.source,
        loaded.training,
    ) == (
        original.arch,
        original.arch_kwargs,
        original.class_names,
        original.palette,
        original.source,
        original.training,
    )
    assert loaded.model_name == "espnet(p=2,q=3)"


def test_missing_checkpoint_error_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found.*video-seg-import"):
        load_checkpoint(tmp_path / "absent.pt")


def test_corrupt_checkpoint_error_says_what_to_do(tmp_path):
    path = small_checkpoint().save(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:200])  # truncated download
    with pytest.raises(CheckpointError, match="could not read checkpoint.*damaged"):
        load_checkpoint(path)


def test_foreign_state_dict_points_to_the_importer(tmp_path):
    path = tmp_path / "published.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a video_seg_ros checkpoint.*video-seg-import"):
        load_checkpoint(path)


def test_checkpoint_with_arbitrary_python_objects_is_refused(tmp_path):
    # weights_only=True: a pickled class instance (which could run code on load) is not accepted.
    path = tmp_path / "pickled.pt"
    torch.save({"format": "video_seg_ros.checkpoint", "payload": Preprocessing(8, 8)}, path)
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(path)


def test_incomplete_and_future_checkpoints_are_explained(tmp_path):
    data = small_checkpoint().to_dict()
    del data["meta"]["preprocessing"]
    torch.save(data, tmp_path / "incomplete.pt")
    with pytest.raises(CheckpointError, match="incomplete or damaged"):
        load_checkpoint(tmp_path / "incomplete.pt")
    data = small_checkpoint().to_dict()
    data["version"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")


# ---- label files as users have them -------------------------------------------------------------
def test_palette_png_labels_are_read_as_their_indices_not_their_colours(tmp_path):
    from PIL import Image

    ids = np.array([[0, 13, 255], [18, 2, 0]], np.uint8)
    image = Image.fromarray(ids, mode="P")
    image.putpalette([(7 * i) % 256 for i in range(768)])  # colours unrelated to the ids
    image.save(tmp_path / "voc_style.png")
    assert (
        cv2.imread(str(tmp_path / "voc_style.png"), cv2.IMREAD_UNCHANGED).ndim == 3
    )  # OpenCV expands it
    np.testing.assert_array_equal(read_label(tmp_path / "voc_style.png", "trainids"), ids)
    write_png(tmp_path / "camvid_ids.png", np.array([[3, 11]], np.uint8))
    Image.open(tmp_path / "camvid_ids.png").convert("P").save(tmp_path / "camvid_p.png")
    assert read_label(tmp_path / "camvid_p.png", "camvid").tolist() == [[3, IGNORE_ID]]


def test_sixteen_bit_label_pngs_are_read_and_out_of_range_ids_refused(tmp_path):
    write_png(tmp_path / "ids16.png", np.array([[7, 26, 0]], np.uint16))
    assert cv2.imread(str(tmp_path / "ids16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert read_label(tmp_path / "ids16.png", "cityscapes-labelids").tolist() == [
        [0, 13, IGNORE_ID]
    ]
    write_png(tmp_path / "big16.png", np.array([[1000]], np.uint16))
    with pytest.raises(ValueError, match="big16.png.*id 1000"):
        read_label(tmp_path / "big16.png", "trainids")


def test_cityscapes_color_labels_go_through_the_official_colour_table(tmp_path):
    train_ids = np.array([[0, 13, 18], [255, 5, 10]], np.uint8)
    rgb = colorize(train_ids, CITYSCAPES.palette_array())
    rgb[1, 0] = (81, 0, 81)  # "ground": a Cityscapes class without a train id
    write_png(tmp_path / "x_gtFine_color.png", np.ascontiguousarray(rgb[..., ::-1]))
    expected = train_ids.copy()
    expected[1, 0] = IGNORE_ID
    np.testing.assert_array_equal(
        read_label(tmp_path / "x_gtFine_color.png", "cityscapes-color"), expected
    )
    write_png(tmp_path / "x_gtFine_labelTrainIds.png", train_ids)
    index = index_label_files(tmp_path, "cityscapes-color")
    assert index["x"].name == "x_gtFine_color.png"
    assert index_label_files(tmp_path, "trainids")["x"].name == "x_gtFine_labelTrainIds.png"


def test_a_label_file_in_no_accepted_format_names_the_file_and_the_formats(tmp_path):
    write_png(tmp_path / "rgb_label.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb_label.png.*palette.*cityscapes-color"):
        read_label(tmp_path / "rgb_label.png", "trainids")
    write_png(tmp_path / "grey.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="grey.png.*RGB"):
        read_label(tmp_path / "grey.png", "cityscapes-color")


def test_undecodable_frames_and_labels_raise_unreadable_image_error(tmp_path):
    from video_seg_ros.frames import UnreadableImageError

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    for read in (read_rgb, lambda path: read_label(path, "trainids")):
        with pytest.raises(UnreadableImageError, match="broken.png"):
            read(broken)
