"""Deprecated (one release): frame sources for bags and replays; use :mod:`video_seg_ros.streams`.

Thin wrappers over :mod:`video_seg_ros.streams`, kept so that existing callers (the demo) work
unchanged:

- ``open_source(path, sequences, limit)`` -> ``streams.open_stream(path, sequences=sequences,
  limit=limit or None)``
- ``folder_source(root, sequences, limit)`` -> ``streams.FolderStream(root, limit=limit or None,
  sequences=sequences)``
- ``video_source(path, limit)`` -> ``streams.VideoStream(path, limit)``
- ``FrameSource(frames, count, native_rate, description)`` -> a ``streams.FrameStream``
  (``iter(stream)``, ``len(stream)``, ``stream.native_rate``, ``stream.description``)
- ``SourceFrame(rgb, sequence, key)`` -> ``streams.Frame(rgb, key, sequence)``

Errors stay :class:`~video_seg_ros.bags.BagError` as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from video_seg_ros.bags import BagError
from video_seg_ros.streams import VIDEO_EXTENSIONS, FolderStream, FrameStream, StreamError
from video_seg_ros.streams import VideoStream, open_stream

__all__ = [
    "FrameSource",
    "SourceFrame",
    "VIDEO_EXTENSIONS",
    "folder_source",
    "open_source",
    "video_source",
]


@dataclass
class SourceFrame:
    """Deprecated: use :class:`video_seg_ros.streams.Frame`. One input frame."""

    rgb: np.ndarray
    sequence: str
    key: str


@dataclass
class FrameSource:
    """Deprecated: use a :class:`video_seg_ros.streams.FrameStream`. Frames to write, their count
    (for the progress bar) and a natural rate if the input has one."""

    frames: Iterator[SourceFrame]
    count: int
    native_rate: float | None
    description: str

    def __iter__(self):
        return iter(self.frames)

    def __len__(self) -> int:
        return self.count


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"video_seg_ros.sources.{old} is deprecated; use video_seg_ros.streams.{new}",
        DeprecationWarning,
        stacklevel=3,
    )


def _as_source(make) -> FrameSource:
    try:
        stream: FrameStream = make()
    except StreamError as error:
        raise BagError(str(error)) from error
    frames = (SourceFrame(frame.rgb, frame.sequence, frame.key) for frame in stream)
    return FrameSource(frames, len(stream), stream.native_rate, stream.description)


def folder_source(
    root: Path, sequences: list[str] | None = None, limit: int | None = None
) -> FrameSource:
    """Deprecated: ``streams.FolderStream(root, limit=limit or None, sequences=sequences)``."""
    _deprecated("folder_source", "FolderStream")
    return _as_source(lambda: FolderStream(root, limit=limit or None, sequences=sequences))


def video_source(path: Path, limit: int | None = None) -> FrameSource:
    """Deprecated: ``streams.VideoStream(path, limit)``."""
    _deprecated("video_source", "VideoStream")
    return _as_source(lambda: VideoStream(path, limit))


def open_source(
    path: Path, sequences: list[str] | None = None, limit: int | None = None
) -> FrameSource:
    """Deprecated: ``streams.open_stream(path, sequences=sequences, limit=limit or None)``."""
    _deprecated("open_source", "open_stream")
    return _as_source(lambda: open_stream(path, sequences=sequences, limit=limit or None))
