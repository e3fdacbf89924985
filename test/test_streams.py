"""video_seg_ros.streams: every input kind as the same Frame stream (keys, numbers, labels,
errors)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from video_seg_ros.bags import BagError, BagWriter, image_message, write_bag
from video_seg_ros.streams import (
    BagStream,
    FolderStream,
    StreamError,
    SyntheticStream,
    VideoStream,
    list_folder,
    open_stream,
)
from video_seg_ros.synthetic import frame_stem

HEIGHT, WIDTH = 24, 40
START_NS = 1_700_000_000_000_000_000


def pixels(value: int) -> np.ndarray:
    """(H, W, 3) uint8 with a distinct value per channel, so RGB/BGR swaps show."""
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = value, value // 2, 255 - value
    return rgb


@pytest.fixture
def cityscapes(tmp_path):
    """Two Cityscapes-style sequences (3 + 2 frames) with trainIds labels for some frames."""
    images, labels = tmp_path / "leftImg8bit", tmp_path / "gtFine"
    images.mkdir()
    labels.mkdir()
    value = 0
    for sequence, numbers in (("aachen_000001", (4, 5, 6)), ("bochum_000002", (0, 1))):
        for number in numbers:
            key = f"{sequence}_{number:06d}"
            cv2.imwrite(str(images / f"{key}_leftImg8bit.png"), pixels(value)[..., ::-1])
            value += 40
            if number % 2 == 0:
                cv2.imwrite(
                    str(labels / f"{key}_gtFine_labelTrainIds.png"),
                    np.full((HEIGHT, WIDTH), number, np.uint8),
                )
    return images, labels


def test_a_folder_lists_its_sequences_in_order_with_keys_and_numbers(cityscapes):
    images, _ = cityscapes
    stream = open_stream(images)
    assert isinstance(stream, FolderStream) and len(stream) == 5
    frames = list(stream)
    assert [f.key for f in frames] == [
        "aachen_000001_000004",
        "aachen_000001_000005",
        "aachen_000001_000006",
        "bochum_000002_000000",
        "bochum_000002_000001",
    ]
    assert [f.sequence for f in frames] == ["aachen_000001"] * 3 + ["bochum_000002"] * 2
    assert [f.number for f in frames] == [4, 5, 6, 0, 1]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.label is None and f.stamp_ns is None for f in frames)
    assert frames[1].rgb.dtype == np.uint8 and frames[1].rgb.shape == (HEIGHT, WIDTH, 3)
    assert frames[1].rgb[0, 0].tolist() == [40, 20, 215]  # RGB, not BGR
    assert [f.key for f in stream] == [f.key for f in frames]  # re-iterable
    assert stream.describe() == {
        "kind": "folder",
        "path": str(images),
        "sequences": ["aachen_000001", "bochum_000002"],
    }
    assert stream.native_rate is None and "5 frames in 2 sequence(s)" in stream.description


def test_a_folder_with_labels_attaches_them_by_key_and_filters(cityscapes):
    images, labels = cityscapes
    frames = list(open_stream(images, labels=labels, label_format="trainids"))
    labelled = {f.key: f for f in frames if f.label is not None}
    assert sorted(labelled) == [
        "aachen_000001_000004",
        "aachen_000001_000006",
        "bochum_000002_000000",
    ]
    assert labelled["aachen_000001_000006"].label.dtype == np.uint8
    assert int(labelled["aachen_000001_000006"].label[0, 0]) == 6
    assert labelled["aachen_000001_000004"].label_path.endswith(
        "aachen_000001_000004_gtFine_labelTrainIds.png"
    )
    only = FolderStream(images, labels, sequences=["bochum_000002"], limit=1)
    assert [f.key for f in only] == ["bochum_000002_000000"]
    with pytest.raises(StreamError, match="no sequence named zurich.*it has aachen_000001"):
        FolderStream(images, sequences=["zurich_000003"])
    with pytest.raises(ValueError, match="unknown label format"):
        FolderStream(images, labels, label_format="nope")
    entries = list_folder(images, labels, "trainids")
    assert [e.label_path is not None for e in entries] == [True, False, True, True, False]


def test_an_unreadable_frame_stops_the_stream_or_is_skipped(cityscapes):
    images, _ = cityscapes
    (images / "aachen_000001_000005_leftImg8bit.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="aachen_000001_000005"):
        list(FolderStream(images))
    stream = FolderStream(images, skip_unreadable=True)
    assert len(list(stream)) == 4 and stream.skipped[0]["key"] == "aachen_000001_000005"


def test_a_bag_gives_the_keys_sequences_and_stamps_of_its_frame_list(cityscapes, tmp_path):
    images, labels = cityscapes
    summary = write_bag(
        FolderStream(images), tmp_path / "bag", rate=10.0, start_time_ns=START_NS, progress=False
    )
    stream = open_stream(tmp_path / "bag", labels=labels)
    assert isinstance(stream, BagStream) and len(stream) == 5
    assert stream.topic == "/camera/image_raw" and stream.keys[0] == "aachen_000001_000004"
    frames = list(stream)
    folder_frames = list(FolderStream(images, labels))
    assert [(f.key, f.sequence, f.number) for f in frames] == [
        (f.key, f.sequence, f.number) for f in folder_frames
    ]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(frames, folder_frames))
    assert [f.label is not None for f in frames] == [f.label is not None for f in folder_frames]
    assert frames[0].stamp_ns == summary["start_ns"] == START_NS
    assert frames[1].stamp_ns - frames[0].stamp_ns == 100_000_000
    assert stream.native_rate == pytest.approx(10.0)
    assert stream.describe() == {
        "kind": "bag",
        "path": str(tmp_path / "bag"),
        "topic": "/camera/image_raw",
        "storage": "mcap",
    }
    given = {"bochum_000002_000001": np.full((HEIGHT, WIDTH), 3, np.uint8)}
    limited = list(BagStream(tmp_path / "bag", labels=given, limit=5))
    assert [f.key for f in limited if f.label is not None] == ["bochum_000002_000001"]
    assert len(list(BagStream(tmp_path / "bag", limit=2))) == 2


def test_a_bag_without_frame_list_numbers_its_frames_and_mono_becomes_rgb(tmp_path):
    with BagWriter(tmp_path / "mono", storage="sqlite3") as bag:
        for index in range(3):
            grey = np.full((HEIGHT, WIDTH), 50 * index, np.uint8)
            bag.write(
                "/cam", image_message(grey, "mono8", START_NS + index, "cam"), START_NS + index
            )
    stream = open_stream(tmp_path / "mono")
    assert stream.keys is None
    frames = list(stream)
    assert [(f.key, f.sequence, f.number) for f in frames] == [
        ("0", "", 0),
        ("1", "", 1),
        ("2", "", 2),
    ]
    assert frames[2].rgb.shape == (HEIGHT, WIDTH, 3) and frames[2].rgb[0, 0].tolist() == [100] * 3


def test_a_bag_with_several_image_topics_needs_one_named(tmp_path):
    with BagWriter(tmp_path / "two") as bag:
        for topic in ("/left", "/right"):
            bag.write(topic, image_message(pixels(0), "rgb8", START_NS, "c"), START_NS)
    with pytest.raises(BagError, match=r"2 image topics \(/left, /right\); pick one"):
        BagStream(tmp_path / "two", several_topics_hint="pick one")
    assert [f.rgb[0, 0, 0] for f in open_stream(tmp_path / "two", topic="/right")] == [0]
    with pytest.raises(BagError, match="/nope is not an image topic"):
        open_stream(tmp_path / "two", topic="/nope")


def test_a_video_gives_numbered_frames_and_its_rate(tmp_path):
    path = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (WIDTH, HEIGHT))
    for index in range(4):
        writer.write(np.full((HEIGHT, WIDTH, 3), index * 60, np.uint8))
    writer.release()
    stream = open_stream(path)
    assert isinstance(stream, VideoStream) and len(stream) == 4
    assert stream.native_rate == pytest.approx(12.0)
    frames = list(stream)
    assert [(f.key, f.sequence, f.number) for f in frames] == [
        (f"drive_{i:06d}", "drive", i) for i in range(4)
    ]
    assert [round(float(f.rgb.mean()) / 60) for f in frames] == [0, 1, 2, 3]
    assert frames[0].rgb.shape == (HEIGHT, WIDTH, 3) and frames[0].rgb.dtype == np.uint8
    assert len(list(VideoStream(path, limit=2))) == 2 == len(VideoStream(path, limit=2))


def test_the_synthetic_street_comes_with_its_labels_and_stamps():
    stream = open_stream("synthetic:seed=3,frames=3,size=64x32,fps=10")
    assert isinstance(stream, SyntheticStream) and len(stream) == 3 and stream.native_rate == 10.0
    frames = list(stream)
    assert [f.key for f in frames] == [frame_stem(3, i) for i in range(3)]
    assert {f.sequence for f in frames} == {"synth_000003"} and [f.number for f in frames] == [
        0,
        1,
        2,
    ]
    assert frames[1].rgb.shape == (32, 64, 3) and frames[1].label.shape == (32, 64)
    assert frames[1].label.dtype == np.uint8 and frames[1].stamp_ns == 100_000_000
    assert np.array_equal(list(stream)[2].rgb, frames[2].rgb)  # deterministic, re-iterable
    assert len(open_stream("synthetic")) == 120  # the demo's sample sequence


def test_missing_and_unknown_inputs_are_clear_errors(tmp_path, cityscapes):
    with pytest.raises(StreamError, match="does not exist"):
        open_stream(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        StreamError, match="neither a folder of images, a rosbag2 folder nor a video"
    ):
        open_stream(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StreamError, match="no images"):
        open_stream(empty)
    with pytest.raises(StreamError, match="a topic is for bags"):
        open_stream(cityscapes[0], topic="/camera/image_raw")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(StreamError, match="broken.mp4"):
        open_stream(tmp_path / "broken.mp4")
    with pytest.raises(StreamError, match="unknown synthetic setting 'colour'"):
        open_stream("synthetic:colour=red")
    write_bag(FolderStream(cityscapes[0]), tmp_path / "bag", progress=False)
    inside = next(p for p in (tmp_path / "bag").iterdir() if p.suffix == ".mcap")
    with pytest.raises(StreamError, match="file inside a bag"):
        open_stream(inside)
