"""The one frame reader for whole inputs: a folder of images, a rosbag2, a video file or the
synthetic street, as a stream of :class:`Frame` items in temporal order.

Every stream is re-iterable (each ``for`` reads the input again from its start), knows its length
before reading a pixel (so a wrong path fails before a model loads) and describes itself::

    from video_seg_ros.streams import open_stream

    for frame in open_stream("frames/", labels="gtFine/", label_format="trainids"):
        frame.rgb, frame.key, frame.sequence, frame.number, frame.label

- :class:`FolderStream`: images under a folder (:func:`video_seg_ros.frames.list_frames` order and
  sequences), with label files matched by key (:func:`video_seg_ros.frames.index_label_files`).
- :class:`BagStream`: one image topic of a rosbag2 folder (:mod:`video_seg_ros.bags`); keys and
  sequences from the frame list ``video-seg-make-bag`` stores in the bag.
- :class:`VideoStream`: the decoded frames of a video file (OpenCV).
- :class:`SyntheticStream`: the procedural street (:mod:`video_seg_ros.synthetic`) with its labels.

No ROS here (bags are read with the ``rosbags`` package).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.frames import (
    IMAGE_EXTENSIONS,
    FrameRecord,
    UnreadableImageError,
    index_label_files,
    list_frames,
    parse_frame_name,
    read_label,
    read_rgb,
)
from video_seg_ros.labels import LABEL_FORMATS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
#: ``open_stream("synthetic:seed=7,frames=30,size=512x256,fps=17")``; no seed = the demo street.
SYNTHETIC_PREFIX = "synthetic"


class StreamError(ValueError):
    """An input cannot be read as frames; the message says what to pass instead."""


@dataclass
class Frame:
    """One input frame.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        key: the frame's name (file stem without layout suffix, bag key), matched to label files.
        sequence: the sequence it belongs to; frames of different sequences never pair.
        number: frame number within the sequence (from the file name; the index otherwise).
        label: optional (H, W) uint8 train ids (255 = unlabelled), at any resolution.
        label_path: where ``label`` came from, for messages and reports.
        stamp_ns: header stamp in ns when the input has one (bags, synthetic), else None.
        index: position in the stream, 0-based.
    """

    rgb: np.ndarray
    key: str
    sequence: str = ""
    number: int = 0
    label: np.ndarray | None = None
    label_path: str | None = None
    stamp_ns: int | None = None
    index: int = 0


class FrameStream:
    """Base of the streams: iterate for :class:`Frame` items; ``len()`` = frames it will yield."""

    #: Frames per second of the input (a video's or bag's own rate), None when it has none.
    native_rate: float | None = None
    #: One line for messages, e.g. "12 frames in 2 sequence(s) from frames/".
    description: str = ""
    #: The input (folder, bag, video path or synthetic spec).
    path: Path | str = ""
    #: Label folder, when labels come from one.
    labels: Path | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def count(self) -> int:
        return len(self)

    def describe(self) -> dict:
        """Where the frames come from, as a JSON-serialisable dict (``kind``, ``path``, ...)."""
        raise NotImplementedError


# ---- folders ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderEntry:
    """One image file of a folder and its label file (None when it has none)."""

    record: FrameRecord
    label_path: Path | None


def list_folder(
    images: str | Path, labels: str | Path | None = None, label_format: str | None = None
) -> list[FolderEntry]:
    """The images under ``images`` in temporal order (sequence, frame number), each with the
    label file of the same key under ``labels`` (``label_format`` picks among several; None =
    any). Raises FileNotFoundError for a missing folder; an empty list when it holds no images."""
    index = index_label_files(labels, label_format) if labels is not None else {}
    return [FolderEntry(record, index.get(record.key)) for record in list_frames(images)]


def read_folder_frame(entry: FolderEntry, label_format: str, index: int | None = None) -> Frame:
    """Read one folder entry: its (H, W, 3) uint8 RGB frame and, when it has a label file, the
    (H, W) uint8 train ids. Raises :class:`UnreadableImageError` for a file that cannot be
    decoded."""
    record, label_path = entry.record, entry.label_path
    rgb = read_rgb(record.path)
    label = None if label_path is None else read_label(label_path, label_format)
    label_name = None if label_path is None else str(label_path)
    return Frame(rgb, record.key, record.sequence, record.frame, label, label_name, None, index)


class FolderStream(FrameStream):
    """The frames under ``images`` and their label files under ``labels``.

    Listing happens here, reading while iterating. Frames are grouped into sequences and ordered
    by :func:`video_seg_ros.frames.list_frames`; labels are matched by key.

    Args:
        images: folder of frames, searched recursively.
        labels: optional folder of label images.
        label_format: one of :data:`video_seg_ros.labels.LABEL_FORMATS`.
        limit: only the first ``limit`` frames (in sorted order).
        skip_unreadable: a frame (or label) file that cannot be decoded is recorded in
            :attr:`skipped` and left out; otherwise :class:`UnreadableImageError` stops the run.
        sequences: only these sequences (an unknown name is an error listing the ones there are).
    """

    def __init__(
        self,
        images: str | Path,
        labels: str | Path | None = None,
        label_format: str = "trainids",
        limit: int | None = None,
        skip_unreadable: bool = False,
        sequences: list[str] | None = None,
    ):
        if label_format not in LABEL_FORMATS:
            raise ValueError(
                f"unknown label format {label_format!r}; choose one of {LABEL_FORMATS}"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.images = self.path = Path(images)
        self.labels = None if labels is None else Path(labels)
        self.label_format = label_format
        self.skip_unreadable = skip_unreadable
        if not self.images.is_dir():
            raise StreamError(f"image folder not found: {self.images}")
        entries = list_folder(self.images, self.labels, label_format)
        if sequences:
            present = {e.record.sequence for e in entries}
            unknown = set(sequences) - present
            if unknown:
                raise StreamError(
                    f"no sequence named {', '.join(sorted(unknown))} under "
                    f"{self.images}; it has {', '.join(sorted(present))}"
                )
            entries = [e for e in entries if e.record.sequence in sequences]
        if limit is not None:
            entries = entries[:limit]
        if not entries:
            raise StreamError(
                f"no images ({' '.join(IMAGE_EXTENSIONS)}) under {self.images}; pass "
                "a folder of frames (Cityscapes leftImg8bit_sequence layout or any "
                "sorted image folder), a rosbag2 folder or a video file"
            )
        self.entries = entries
        self.records: list[FrameRecord] = [e.record for e in entries]
        self.label_index = {e.record.key: e.label_path for e in entries if e.label_path}
        self.skipped: list[dict] = []
        names = sorted({r.sequence for r in self.records})
        self.description = f"{len(entries)} frames in {len(names)} sequence(s) from {self.images}"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Frame]:
        for index, entry in enumerate(self.entries):
            try:
                yield read_folder_frame(entry, self.label_format, index)
            except UnreadableImageError as error:
                if not self.skip_unreadable:
                    raise
                record = entry.record
                error = {"key": record.key, "file": str(record.path), "error": str(error)}
                self.skipped.append(error)

    def describe(self) -> dict:
        return {
            "kind": "folder",
            "path": str(self.images),
            "sequences": sorted({r.sequence for r in self.records}),
        }


# ---- bags -------------------------------------------------------------------------------------
class BagStream(FrameStream):
    """The images of one topic of a rosbag2 folder, in recording order.

    Key, sequence and frame number come from the frame list ``video-seg-make-bag`` stores in the
    bag (the number parsed from the key as for image files); a frame missing from it gets its
    index as key and number, in sequence "". Mono images become (H, W, 3) grey RGB.

    Args:
        path: the bag folder (with metadata.yaml).
        topic: the image topic; None = the bag's only one (see :func:`bags.pick_image_topic`).
        labels: key -> (H, W) uint8 train ids, or a folder of label files matched by key.
        label_format: format of the files in a ``labels`` folder.
        limit: only the first ``limit`` frames.
        several_topics_hint: what the error for a bag with several image topics tells to do.
    """

    def __init__(
        self,
        path: str | Path,
        topic: str | None = None,
        labels: dict[str, np.ndarray] | str | Path | None = None,
        label_format: str = "trainids",
        limit: int | None = None,
        several_topics_hint: str = "name the image topic to use",
    ):
        from video_seg_ros.bags import FRAMES_KEY, bag_info, pick_image_topic

        self.path = Path(path)
        info = bag_info(self.path)
        self.topic = pick_image_topic(self.path, topic, several_topics_hint, info)
        self.storage = info["storage"]
        self.label_format = label_format
        self.labels = None
        self._label_files: dict[str, Path] = {}
        self._label_arrays: dict[str, np.ndarray] = {}
        if isinstance(labels, dict):
            self._label_arrays = labels
        elif labels is not None:
            self.labels = Path(labels)
            self._label_files = index_label_files(self.labels, label_format)
        self._count = int(info["topics"][self.topic]["count"])
        if limit is not None:
            self._count = min(self._count, limit)
        custom = info["custom_data"].get(FRAMES_KEY)
        listed = json.loads(custom) if custom else []
        self._entries = {entry["stamp_ns"]: entry for entry in listed}
        #: The frames' keys in order when the bag lists every frame (make_bag bags), else None.
        complete = len(listed) == info["topics"][self.topic]["count"]
        self.keys = [str(e.get("key") or "") for e in listed][: self._count] if complete else None
        self.description = f"{self._count} frames of {self.topic} in bag {self.path}"

    @property
    def native_rate(self) -> float | None:
        from video_seg_ros.bags import topic_rate_hz

        return topic_rate_hz(self.path, self.topic)

    def __len__(self) -> int:
        return self._count

    def _label(self, key: str) -> tuple[np.ndarray | None, str | None]:
        if key in self._label_arrays:
            return self._label_arrays[key], None
        path = self._label_files.get(key)
        return (None, None) if path is None else (read_label(path, self.label_format), str(path))

    def __iter__(self) -> Iterator[Frame]:
        from video_seg_ros.bags import read_images

        for index, image in enumerate(read_images(self.path, self.topic)):
            if index >= self._count:
                break
            pixels = image.rgb()
            if pixels.dtype != np.uint8:
                raise StreamError(
                    f"{self.topic} frame {index} has {image.encoding} pixels "
                    f"({pixels.dtype}); 8-bit colour or mono images are needed"
                )
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[..., None], 3, axis=2)
            entry = self._entries.get(image.stamp_ns)
            if entry is None:
                key, sequence, number = str(index), "", index
            else:
                key, sequence = entry["key"], entry["sequence"]
                number = parse_frame_name(Path(key + ".png")).frame
            label, label_path = self._label(key)
            yield Frame(pixels, key, sequence, number, label, label_path, image.stamp_ns, index)

    def describe(self) -> dict:
        return dict(kind="bag", path=str(self.path), topic=self.topic, storage=self.storage)


# ---- video files ------------------------------------------------------------------------------
class VideoStream(FrameStream):
    """The decoded frames of a video file (at most ``limit``), one sequence named after the file;
    keys ``<stem>_<index:06d>``, numbers = indices. ``native_rate``: the file's frame rate."""

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path = Path(path)
        self.limit = limit
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise StreamError(
                    f"OpenCV cannot open video {self.path}; check the file or "
                    "convert it to mp4 (H.264)"
                )
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            if not capture.read()[0]:
                raise StreamError(f"video {self.path} has no readable frames")
        finally:
            capture.release()
        if limit:
            count = min(count, limit) if count > 0 else limit
        self._count = max(count, 1)  # the container's count is an estimate for some codecs
        self.native_rate = fps if fps > 0 else None
        self.description = f"video {self.path}"

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        stem = self.path.stem
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while not self.limit or index < self.limit:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(rgb, f"{stem}_{index:06d}", stem, index, index=index)
                index += 1
        finally:
            capture.release()

    def describe(self) -> dict:
        return {"kind": "video", "path": str(self.path)}


# ---- the synthetic street ---------------------------------------------------------------------
class SyntheticStream(FrameStream):
    """Generated street frames with exact labels (:mod:`video_seg_ros.synthetic`).

    Args:
        seed: the street; None = the demo's sample sequence (seed ``DEMO_SEED``, no flow).
        frames: how many frames.
        size: (W, H) in pixels.
        fps: frame rate (objects move ``speed / fps`` per frame); stamps are ``index / fps``.
        labels: attach the (H, W) uint8 train ids to each frame.
    """

    def __init__(
        self,
        seed: int | None = None,
        frames: int = 120,
        size: tuple[int, int] = (512, 256),
        fps: float = 17.0,
        labels: bool = True,
    ):
        from video_seg_ros.synthetic import DEMO_SEED

        if frames < 1:
            raise StreamError(f"a synthetic stream needs at least 1 frame, got {frames}")
        self.seed, self.frames, self.size = seed, int(frames), tuple(size)
        self.native_rate = float(fps)
        self.with_labels = labels
        self.path = f"{SYNTHETIC_PREFIX}:seed={DEMO_SEED if seed is None else seed}"
        shown = DEMO_SEED if seed is None else seed
        self.description = (
            f"synthetic sequence (seed {shown}), {frames} frames {size[0]}x{size[1]}"
        )

    def __len__(self) -> int:
        return self.frames

    def __iter__(self) -> Iterator[Frame]:
        from video_seg_ros.synthetic import DEMO_SEED, demo_sequence, frame_stem, generate_sequence
        from video_seg_ros.synthetic.generator import sequence_name

        width, height, fps = *self.size, self.native_rate
        if self.seed is None:
            seed, generated = DEMO_SEED, demo_sequence(self.frames, width, height, fps)
        else:
            seed = self.seed
            generated = generate_sequence(seed, self.frames, width, height, fps, with_flow=False)
        for frame in generated:
            key, stamp_ns = frame_stem(seed, frame.index), round(frame.index * 1e9 / fps)
            label = frame.labels if self.with_labels else None
            yield Frame(
                frame.rgb,
                key,
                sequence_name(seed),
                frame.index,
                label,
                None,
                stamp_ns,
                frame.index,
            )

    def describe(self) -> dict:
        size, fps = list(self.size), self.native_rate
        return {
            "kind": "synthetic",
            "seed": self.seed,
            "frames": self.frames,
            "size": size,
            "fps": fps,
        }


class TappedStream(FrameStream):
    """Another stream's frames unchanged, each handed to ``tap(frame)`` as it passes (e.g. to keep
    its label while the frames are written elsewhere)."""

    def __init__(self, stream: FrameStream, tap: Callable[[Frame], None]):
        self.stream, self.tap = stream, tap
        self.native_rate, self.description = stream.native_rate, stream.description
        self.path, self.labels = stream.path, stream.labels

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.stream:
            self.tap(frame)
            yield frame

    def describe(self) -> dict:
        return self.stream.describe()


def _parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")  # ValueError unless exactly WxH
    return int(width), int(height)


def parse_synthetic_spec(spec: str) -> SyntheticStream:
    """``synthetic[:seed=7,frames=30,size=512x256,fps=17]`` -> a :class:`SyntheticStream`."""
    _, _, settings = spec.partition(":")
    readers = {"seed": int, "frames": int, "fps": float, "size": _parse_size}
    values: dict = {}
    for item in filter(None, settings.split(",")):
        name, _, value = item.partition("=")
        if name not in readers:
            raise StreamError(
                f"unknown synthetic setting {name!r} in {spec!r}; use seed, frames, "
                "size (WxH) and fps"
            )
        try:
            values[name] = readers[name](value)
        except ValueError as error:
            raise StreamError(f"cannot read {item!r} in {spec!r}: {error}") from error
    return SyntheticStream(**values)


def open_stream(
    source: str | Path,
    topic: str | None = None,
    labels: str | Path | dict | None = None,
    label_format: str = "trainids",
    limit: int | None = None,
    sequences: list[str] | None = None,
    skip_unreadable: bool = False,
    **bag_options,
) -> FrameStream:
    """The stream for ``source``: a rosbag2 folder (has metadata.yaml) -> :class:`BagStream`;
    another folder -> :class:`FolderStream`; a video file -> :class:`VideoStream`;
    ``"synthetic[:...]"`` -> :class:`SyntheticStream` (see :func:`parse_synthetic_spec`).

    ``topic`` is for bags only, ``sequences`` and ``skip_unreadable`` for folders only.
    ``labels``: a label folder (folders and bags) or key -> array dict (bags).

    Raises:
        StreamError: the input is missing, of an unknown kind, empty or unreadable.
    """
    if isinstance(source, str) and source.split(":")[0] == SYNTHETIC_PREFIX:
        return parse_synthetic_spec(source)
    path = Path(source)
    if (path / "metadata.yaml").is_file():
        return BagStream(path, topic, labels, label_format, limit, **bag_options)
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        raise StreamError(f"{path} is a file inside a bag; pass the bag folder {path.parent}")
    if topic is not None and path.exists():
        raise StreamError(
            f"a topic is for bags; {path} is not a rosbag2 folder (no metadata.yaml)"
        )
    if path.is_dir():
        return FolderStream(path, labels, label_format, limit, skip_unreadable, sequences)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoStream(path, limit)
    if path.is_file():
        raise StreamError(
            f"{path} is neither a folder of images, a rosbag2 folder nor a video "
            f"({', '.join(VIDEO_EXTENSIONS)})"
        )
    raise StreamError(
        f"input {path} does not exist; pass a folder of frames, a rosbag2 folder, "
        "a video file or 'synthetic'"
    )


__all__ = ["BagStream", "FolderEntry", "FolderStream", "Frame", "FrameStream", "StreamError"]
__all__ += ["SyntheticStream", "VideoStream", "VIDEO_EXTENSIONS", "list_folder", "open_stream"]
__all__ += ["parse_synthetic_spec"]
