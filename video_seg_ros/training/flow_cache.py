"""Optical flow for training, computed once per frame pair and cached on disk.

The temporal loss needs the flow from frame t to its neighbour t+k at the resolution the frames are
resized to. DIS (OpenCV) is the default estimator; any other estimator only has to be a callable
``(frame_a, frame_b) -> (H, W, 2) float32`` with a ``settings`` string that identifies it,
registered
in :data:`FLOW_METHODS`. Cache files are keyed by both frame files (path, size and mtime), the
resolution and the estimator settings, so changing any of them recomputes instead of reusing.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from video_seg_ros.flow import DisFlow


class FlowEstimator(Protocol):
    settings: str

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray: ...


class DisFlowEstimator:
    """OpenCV DIS flow (the default): fast on a CPU, good enough for coarse motion."""

    def __init__(self, preset: str = "ultrafast", max_width: int | None = None):
        self._flow = DisFlow(preset, max_width)
        self.settings = f"dis-{preset}-{max_width}"

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        return self._flow(frame_a, frame_b)


#: method name -> factory(**settings); add learned flow models here.
FLOW_METHODS: dict[str, Callable[..., FlowEstimator]] = {"dis": DisFlowEstimator}


def make_flow_estimator(settings: dict) -> FlowEstimator:
    settings = dict(settings)
    method = settings.pop("method", "dis")
    settings.pop("cache_dir", None)
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; available: {sorted(FLOW_METHODS)}")
    return FLOW_METHODS[method](**{k: v for k, v in settings.items() if v is not None})


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def bytes_per_pair(width: int, height: int) -> int:
    """Disk bytes of one cached flow (float16, 2 channels) plus the .npy header."""
    return width * height * 2 * 2 + 128


def build_flow_cache(flow_settings: dict, run_dir: Path) -> "FlowCache":
    """The cache a run uses: ``flow.cache_dir`` when set, else ``<run_dir>/flow_cache``."""
    return FlowCache(
        make_flow_estimator(dict(flow_settings)),
        flow_settings.get("cache_dir") or Path(run_dir) / "flow_cache",
    )


class FlowCache:
    """Flow between two frame files at a given size, read from ``cache_dir`` or computed and
    stored.

    Files are float16 ``.npy`` (half the disk of float32; sub-pixel error is far below DIS's own):
    4 bytes per pixel, so 2 MiB per frame pair at 1024x512 (:func:`bytes_per_pair`). Writes are
    atomic (unique temporary name + rename), so DDP ranks and data-loader workers can share one
    cache folder, and several runs over the same frames at the same size reuse each other's files.
    """

    def __init__(self, estimator: FlowEstimator, cache_dir: str | Path | None):
        self.estimator = estimator
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.hits = 0
        self.misses = 0

    def disk_usage(self) -> tuple[int, int]:
        """(files, bytes) of the flow files in the cache folder."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0, 0
        sizes = [f.stat().st_size for f in self.cache_dir.glob("*/*.npy")]
        return len(sizes), sum(sizes)

    def key(self, path_a: Path, path_b: Path, size: tuple[int, int]) -> str:
        identities = f"{_file_identity(path_a)}|{_file_identity(path_b)}"
        text = f"{identities}|{size[0]}x{size[1]}|{self.estimator.settings}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(
        self, path_a: Path, path_b: Path, frame_a: np.ndarray, frame_b: np.ndarray
    ) -> np.ndarray:
        """(H, W, 2) float32 flow from ``frame_a`` to ``frame_b`` (the decoded, resized frames)."""
        if path_a == path_b:
            return np.zeros(frame_a.shape[:2] + (2,), np.float32)
        if self.cache_dir is None:
            self.misses += 1
            return self.estimator(frame_a, frame_b)
        key = self.key(Path(path_a), Path(path_b), (frame_a.shape[1], frame_a.shape[0]))
        file = self.cache_dir / key[:2] / f"{key}.npy"
        if file.is_file():
            try:
                flow = np.load(file)
                if flow.shape == frame_a.shape[:2] + (2,):
                    self.hits += 1
                    return flow.astype(np.float32)
            except (OSError, ValueError):
                pass  # damaged cache file: recompute and overwrite below
        self.misses += 1
        # Rounded like the stored copy, so a computed and a cached flow are identical (DDP ranks).
        flow = self.estimator(frame_a, frame_b).astype(np.float16)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.stem}.{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, flow)
        os.replace(tmp, file)
        return flow.astype(np.float32)
