"""Frame sources for bags and replays: a folder of images or a video file, as (RGB, sequence, key)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.bags import BagError
from video_seg_ros.frames import IMAGE_EXTENSIONS, list_frames, read_rgb

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class SourceFrame:
    """One input frame: RGB pixels and where they came from."""

    rgb: np.ndarray
    sequence: str
    key: str


@dataclass
class FrameSource:
    """Frames to write, their count (for the progress bar) and a natural rate if the input has one."""

    frames: Iterator[SourceFrame]
    count: int
    native_rate: float | None
    description: str


def folder_source(root: Path, sequences: list[str] | None = None, limit: int | None = None) -> FrameSource:
    """The frames under ``root`` (via :func:`video_seg_ros.frames.list_frames`), optionally only
    the named sequences and at most ``limit`` of them."""
    records = list_frames(root)
    if sequences:
        unknown = set(sequences) - {r.sequence for r in records}
        if unknown:
            raise BagError(f"no sequence named {', '.join(sorted(unknown))} under {root}; it has "
                           f"{', '.join(sorted({r.sequence for r in records}))}")
        records = [r for r in records if r.sequence in sequences]
    if limit:
        records = records[:limit]
    if not records:
        raise BagError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; pass a folder "
                       "of frames (Cityscapes leftImg8bit_sequence layout or any sorted image folder) "
                       "or a video file")
    names = sorted({r.sequence for r in records})
    return FrameSource((SourceFrame(read_rgb(r.path), r.sequence, r.key) for r in records),
                       len(records), None, f"{len(records)} frames in {len(names)} sequence(s) from {root}")


def video_source(path: Path, limit: int | None = None) -> FrameSource:
    """The decoded frames of a video file (at most ``limit``), with the file's frame rate."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BagError(f"OpenCV cannot open video {path}; check the file or convert it to mp4 (H.264)")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise BagError(f"video {path} has no readable frames")
    if limit:
        count = min(count, limit) if count > 0 else limit

    def frames() -> Iterator[SourceFrame]:
        index, bgr = 0, first
        try:
            while bgr is not None and (not limit or index < limit):
                yield SourceFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path.stem, f"{path.stem}_{index:06d}")
                index += 1
                ok, bgr = capture.read()
                if not ok:
                    bgr = None
        finally:
            capture.release()

    return FrameSource(frames(), max(count, 1), fps if fps > 0 else None, f"video {path}")


def open_source(path: Path, sequences: list[str] | None = None, limit: int | None = None) -> FrameSource:
    """Folder -> its frames (via the project's frame reader); video file -> its decoded frames."""
    path = Path(path)
    if path.is_dir():
        return folder_source(path, sequences, limit)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return video_source(path, limit)
    if path.is_file():
        raise BagError(f"{path} is neither a folder of images nor a video ({', '.join(VIDEO_EXTENSIONS)})")
    raise BagError(f"input {path} does not exist")
