"""Bags written by video-seg-make-bag read back exactly (rosbags, no ROS needed)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from video_seg_ros.bags import (
    CAMERA_INFO_TYPE,
    FRAMES_KEY,
    BagError,
    BagWriter,
    bag_info,
    cdr_stamp_ns,
    frame_keys,
    image_message,
    read_images,
    read_messages,
    restamp_cdr,
    stamp_to_ns,
)
from video_seg_ros.frames import list_frames, read_rgb
from video_seg_ros.tools import make_bag

START_NS = 1_700_000_000_000_000_000


def _frames(count: int, width: int = 48, height: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour fields (JPEG-friendly, still different in every pixel)."""
    rng = np.random.default_rng(seed)
    coarse = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(count)]
    return [cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse]


@pytest.fixture
def cityscapes_folder(tmp_path) -> Path:
    """Two sequences of three PNG frames in the Cityscapes leftImg8bit_sequence layout."""
    root = tmp_path / "frames"
    for sequence, seed in (("aachen_000000", 1), ("bochum_000003", 2)):
        folder = root / sequence.split("_")[0]
        folder.mkdir(parents=True)
        for index, rgb in enumerate(_frames(3, seed=seed)):
            cv2.imwrite(str(folder / f"{sequence}_{index:06d}_leftImg8bit.png"), rgb[..., ::-1])
    return root


def _make(args: list[str]) -> int:
    return make_bag.main([*args, "--quiet", "--start-time", str(START_NS / 1e9)])


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_reads_back_pixel_for_pixel_with_monotonic_stamps(
    cityscapes_folder, tmp_path, storage
):
    bag = tmp_path / f"bag_{storage}"
    assert (
        _make([str(cityscapes_folder), "-o", str(bag), "--storage", storage, "--rate", "17"]) == 0
    )

    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    # the fields rosbag2 (Jazzy/Kilted, metadata version 9) reads
    assert {
        "version",
        "storage_identifier",
        "duration",
        "starting_time",
        "message_count",
        "topics_with_message_count",
        "compression_format",
        "compression_mode",
        "relative_file_paths",
        "files",
        "custom_data",
        "ros_distro",
    } <= set(metadata)
    assert metadata["version"] == 9 and metadata["storage_identifier"] == storage
    assert metadata["message_count"] == 6
    assert all((bag / name).is_file() for name in metadata["relative_file_paths"])
    (topic,) = metadata["topics_with_message_count"]
    assert topic["message_count"] == 6
    assert topic["topic_metadata"]["name"] == "/camera/image_raw"
    assert topic["topic_metadata"]["type"] == "sensor_msgs/msg/Image"
    assert topic["topic_metadata"]["serialization_format"] == "cdr"
    assert topic["topic_metadata"]["type_description_hash"].startswith("RIHS01_")

    expected = [read_rgb(r.path) for r in list_frames(cityscapes_folder)]
    images = list(read_images(bag))
    assert len(images) == len(expected)
    for image, rgb in zip(images, expected):
        assert image.encoding == "rgb8" and image.frame_id == "camera"
        np.testing.assert_array_equal(image.rgb(), rgb)
    stamps = [image.stamp_ns for image in images]
    assert stamps == [image.timestamp_ns for image in images]  # header stamp == receive time
    assert stamps[0] == START_NS
    steps = np.diff(stamps)
    assert (steps > 0).all()
    period = round(1e9 / 17)
    assert list(steps) == [
        period,
        period,
        period + 1_000_000_000,
        period,
        period,
    ]  # 1 s sequence gap
    keys = frame_keys(bag)
    assert [k["sequence"] for k in keys] == ["aachen_000000"] * 3 + ["bochum_000003"] * 3
    assert [k["stamp_ns"] for k in keys] == stamps
    assert _no_leftovers(tmp_path)


def test_bgr8_bag_holds_bgr_pixels(cityscapes_folder, tmp_path):
    bag = tmp_path / "bgr"
    assert (
        _make([str(cityscapes_folder), "-o", str(bag), "--encoding", "bgr8", "--limit", "2"]) == 0
    )
    images = list(read_images(bag))
    first = read_rgb(list_frames(cityscapes_folder)[0].path)
    assert images[0].encoding == "bgr8" and images[0].channel_order == "bgr"
    np.testing.assert_array_equal(images[0].pixels, first[..., ::-1])
    np.testing.assert_array_equal(images[0].rgb(), first)


def test_compressed_bag_decodes_close_to_the_frames_with_camera_info(cityscapes_folder, tmp_path):
    bag = tmp_path / "jpeg"
    assert (
        _make(
            [
                str(cityscapes_folder),
                "-o",
                str(bag),
                "--compressed",
                "--camera-info",
                "--size",
                "64x40",
                "--topic",
                "/cam0/image_raw",
            ]
        )
        == 0
    )
    info = bag_info(bag)
    assert info["topics"]["/cam0/image_raw/compressed"] == {
        "type": "sensor_msgs/msg/CompressedImage",
        "count": 6,
    }
    assert info["topics"]["/cam0/camera_info"] == {"type": CAMERA_INFO_TYPE, "count": 6}
    frames = [
        cv2.resize(read_rgb(r.path), (64, 40), interpolation=cv2.INTER_AREA)
        for r in list_frames(cityscapes_folder)
    ]
    images = list(read_images(bag, "/cam0/image_raw/compressed"))
    for image, rgb in zip(images, frames):
        assert image.rgb().shape == (40, 64, 3)
        # JPEG loses little on smooth frames; a broken decode or a channel swap is far off
        assert np.abs(image.rgb().astype(int) - rgb).mean() < 6
        swapped = np.abs(image.rgb()[..., ::-1].astype(int) - rgb).mean()
        assert np.abs(image.rgb().astype(int) - rgb).mean() < swapped
    infos = [m.decode() for m in read_messages(bag, ["/cam0/camera_info"])]
    assert [stamp_to_ns(m.header.stamp) for m in infos] == [i.stamp_ns for i in images]
    assert (infos[0].width, infos[0].height) == (64, 40)


def test_camera_info_from_calibration_yaml_is_scaled_to_the_output_size(
    cityscapes_folder, tmp_path
):
    calibration = tmp_path / "camera.yaml"
    calibration.write_text(
        yaml.safe_dump(
            {
                "image_width": 96,
                "image_height": 64,
                "distortion_model": "plumb_bob",
                "camera_matrix": {
                    "rows": 3,
                    "cols": 3,
                    "data": [100.0, 0, 48, 0, 100.0, 32, 0, 0, 1],
                },
                "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.1, 0, 0, 0, 0]},
                "projection_matrix": {
                    "rows": 3,
                    "cols": 4,
                    "data": [100.0, 0, 48, 0, 0, 100.0, 32, 0, 0, 0, 1, 0],
                },
            }
        )
    )
    bag = tmp_path / "calibrated"
    assert (
        _make(
            [
                str(cityscapes_folder),
                "-o",
                str(bag),
                "--camera-info",
                str(calibration),
                "--limit",
                "1",
            ]
        )
        == 0
    )  # frames are 48x32: half the calibrated size
    info = next(read_messages(bag, ["/camera/camera_info"])).decode()
    np.testing.assert_allclose(info.k, [50.0, 0, 24, 0, 50.0, 16, 0, 0, 1])
    np.testing.assert_allclose(info.d, [0.1, 0, 0, 0, 0])


def test_video_file_becomes_a_bag_at_the_videos_rate(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    assert writer.isOpened()
    for index in range(5):
        writer.write(np.full((48, 64, 3), index * 40, dtype=np.uint8))
    writer.release()
    bag = tmp_path / "from_video"
    assert _make([str(video), "-o", str(bag)]) == 0
    images = list(read_images(bag))
    assert len(images) == 5
    assert np.diff([i.stamp_ns for i in images]).tolist() == [100_000_000] * 4
    assert [round(float(i.rgb().mean()) / 40) for i in images] == [0, 1, 2, 3, 4]  # order kept


def test_empty_input_is_an_error_and_leaves_no_bag(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bag = tmp_path / "bag"
    assert _make([str(empty), "-o", str(bag)]) == 1
    assert "no images" in capsys.readouterr().err
    assert not bag.exists() and _no_leftovers(tmp_path)


def test_unreadable_frame_aborts_and_leaves_no_half_written_bag(
    cityscapes_folder, tmp_path, capsys
):
    broken = sorted((cityscapes_folder / "bochum").iterdir())[1]
    broken.write_bytes(b"not a png")
    bag = tmp_path / "bag"
    assert _make([str(cityscapes_folder), "-o", str(bag)]) == 1
    assert broken.name in capsys.readouterr().err
    assert not bag.exists() and _no_leftovers(tmp_path)


def test_existing_output_is_kept_unless_overwrite(cityscapes_folder, tmp_path, capsys):
    bag = tmp_path / "bag"
    assert _make([str(cityscapes_folder), "-o", str(bag), "--limit", "1"]) == 0
    assert _make([str(cityscapes_folder), "-o", str(bag)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert bag_info(bag)["message_count"] == 1
    assert _make([str(cityscapes_folder), "-o", str(bag), "--overwrite"]) == 0
    assert bag_info(bag)["message_count"] == 6 and _no_leftovers(tmp_path)


def test_usage_errors_exit_with_status_2(cityscapes_folder, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _make([str(cityscapes_folder), "-o", str(tmp_path / "b"), "--jpeg-quality", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        _make([str(cityscapes_folder)])  # no -o/--output
    assert exit_info.value.code == 2


def test_missing_input_and_unknown_sequence_are_clear_errors(cityscapes_folder, tmp_path, capsys):
    assert _make([str(tmp_path / "nowhere"), "-o", str(tmp_path / "a")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        _make([str(cityscapes_folder), "-o", str(tmp_path / "b"), "--sequence", "zurich_000001"])
        == 1
    )
    assert "aachen_000000" in capsys.readouterr().err  # lists the sequences that exist


def test_reading_a_folder_that_is_not_a_bag_says_so(tmp_path):
    with pytest.raises(BagError, match="metadata.yaml"):
        list(read_images(tmp_path))


def test_writer_removes_everything_when_the_block_fails(tmp_path):
    bag = tmp_path / "bag"
    with pytest.raises(RuntimeError):
        with BagWriter(bag) as writer:
            writer.write(
                "/camera/image_raw",
                image_message(_frames(1)[0], "rgb8", START_NS, "camera"),
                START_NS,
            )
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_restamp_rewrites_only_the_header_stamp(tmp_path):
    bag = tmp_path / "bag"
    frame = _frames(1)[0]
    with BagWriter(bag) as writer:
        writer.write("/camera/image_raw", image_message(frame, "rgb8", START_NS, "cam"), START_NS)
    raw = next(read_messages(bag))
    assert cdr_stamp_ns(raw.data) == START_NS
    restamped = type(raw)(
        raw.topic, raw.msgtype, raw.timestamp_ns, restamp_cdr(raw.data, 123_456_789_012)
    )
    assert cdr_stamp_ns(restamped.data) == 123_456_789_012
    message = restamped.decode()
    assert (
        stamp_to_ns(message.header.stamp) == 123_456_789_012 and message.header.frame_id == "cam"
    )
    np.testing.assert_array_equal(message.data.reshape(frame.shape), frame)


def test_real_cityscapes_frames_survive_the_bag_exactly(shared, tmp_path):
    source = shared / "data" / "cityscapes_sequences"
    if not source.is_dir():
        pytest.skip("data/cityscapes_sequences is not in the shared data folder")
    bag = tmp_path / "cityscapes"
    assert (
        _make(
            [
                str(source),
                "-o",
                str(bag),
                "--sequence",
                "aachen_000001",
                "--limit",
                "3",
                "--storage",
                "sqlite3",
            ]
        )
        == 0
    )
    records = [r for r in list_frames(source) if r.sequence == "aachen_000001"][:3]
    images = list(read_images(bag))
    assert [k["key"] for k in frame_keys(bag)] == [r.key for r in records]
    for image, record in zip(images, records):
        assert image.rgb().shape == (1024, 2048, 3)
        np.testing.assert_array_equal(image.rgb(), read_rgb(record.path))
    assert json.loads(bag_info(bag)["custom_data"][FRAMES_KEY])[0]["key"] == records[0].key
