"""Training and validation datasets over image sequences (folders listed by
:func:`video_seg_ros.streams.list_folder`, files read by :mod:`video_seg_ros.frames`).

Dataset entries in a config (``data.train`` / ``data.val`` lists)::

    {type: folder, images: DIR, labels: DIR|null,
     label_format: auto|trainids|cityscapes-labelids|camvid,
     sequences: [names]|null, exclude_sequences: [names], labelled_only: true, repeat: 1,
     loss_scale: {ce: 1, temporal: 1, distill_pixel: 1}}
    {type: cityscapes, root: DIR, split: train}  # leftImg8bit_sequence/<split> + gtFine/<split>
    {type: camvid, root: DIR, split: train}          # <split>/ + <split>annot/ (SegNet layout)
    {type: synthetic, root: DIR}                     # the generator's Cityscapes-style output

A training sample is an *anchor* frame (a labelled frame when labels exist: in Cityscapes the 20th
frame of each 30-frame snippet) plus, in ``pair`` mode, one neighbour t+k (k uniform in
1..max_gap, unlabelled frames are fine) and the flow anchor -> neighbour; in ``clip`` mode, the
``clip_length`` frames ending at the anchor (memory training; the label belongs to the last one).
Random choices come from a generator seeded by (seed, epoch, index), so a sample is the same in
every process and data-loader worker: DDP and single-process runs see identical data.
``repeat: N`` lists an entry's anchors N times per epoch (each copy with its own crop, scale and
neighbour): it sets how much a small real set weighs beside a large generated one.
``loss_scale`` multiplies the losses of :data:`~video_seg_ros.training.losses.PER_SAMPLE_LOSSES`
for this entry's samples (missing names: 1), e.g. distillation from the published model on real
frames only and cross-entropy on generated frames only.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from video_seg_ros.frames import FrameRecord, read_label, read_rgb
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.streams import FolderEntry, list_folder
from video_seg_ros.training.augment import AlignedAugmentation, AlignedSample
from video_seg_ros.training.flow_cache import FlowCache, build_flow_cache
from video_seg_ros.training.losses import PER_SAMPLE_LOSSES


class DatasetError(ValueError):
    """A dataset entry in the config points at missing or unusable data."""


@dataclass(frozen=True)
class SequenceFrame:
    record: FrameRecord
    label_path: Path | None
    label_format: str | None


def _detect_label_format(path: Path) -> str:
    stem = path.stem
    if stem.endswith("labelTrainIds"):
        return "trainids"
    if stem.endswith("labelIds"):
        return "cityscapes-labelids"
    raise DatasetError(
        f"cannot tell the label format of {path.name}; set label_format "
        "(trainids, cityscapes-labelids or camvid) in the dataset entry"
    )


def resolve_entry(entry: dict) -> dict:
    """Turn a typed dataset entry into the generic folder form {images, labels, label_format,
    ...}."""
    entry = dict(entry)
    kind = entry.pop("type", "folder")
    if kind in ("folder", "synthetic"):
        if kind == "synthetic" and "images" not in entry:
            entry["images"] = entry.pop("root")
            entry.setdefault("labels", entry["images"])
    elif kind == "cityscapes":
        root = Path(entry.pop("root"))
        split = entry.pop("split", "train")
        sequence_dir = root / "leftImg8bit_sequence" / split
        entry["images"] = sequence_dir if sequence_dir.is_dir() else root / "leftImg8bit" / split
        entry.setdefault("labels", root / "gtFine" / split)
    elif kind == "camvid":
        root = Path(entry.pop("root"))
        split = entry.pop("split", "train")
        entry["images"] = root / split
        entry.setdefault("labels", root / f"{split}annot")
        entry.setdefault("label_format", "camvid")
    else:
        raise DatasetError(
            f"unknown dataset type {kind!r}; use folder, cityscapes, camvid or synthetic"
        )
    if "images" not in entry:
        raise DatasetError(f"dataset entry {entry} needs 'images' (or 'root' for typed datasets)")
    entry.setdefault("labels", None)
    entry.setdefault("label_format", "auto")
    return entry


def entry_loss_scale(entry: dict) -> list[float]:
    """The entry's ``loss_scale`` as one factor per name of ``PER_SAMPLE_LOSSES`` (default 1)."""
    scale = entry.get("loss_scale") or {}
    if not isinstance(scale, dict):
        raise DatasetError(f"dataset entry {entry}: loss_scale must be a mapping loss -> factor")
    unknown = sorted(set(scale) - set(PER_SAMPLE_LOSSES))
    if unknown:
        raise DatasetError(
            f"dataset entry {entry}: loss_scale may name {', '.join(PER_SAMPLE_LOSSES)}; "
            f"got {', '.join(map(str, unknown))}"
        )
    factors = []
    for name in PER_SAMPLE_LOSSES:
        value = scale.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise DatasetError(
                f"dataset entry {entry}: loss_scale.{name} must be a number >= 0; got {value!r}"
            )
        factors.append(float(value))
    return factors


def load_sequences(entry: dict) -> dict[str, list[SequenceFrame]]:
    """Sequence name -> frames in order, each with its label file (or None)."""
    entry = resolve_entry(entry)
    images = Path(entry["images"]).expanduser()
    if not images.is_dir():
        raise DatasetError(f"image folder not found: {images} (dataset entry {entry})")
    label_format = None if entry["label_format"] == "auto" else entry["label_format"]
    labels = Path(entry["labels"]).expanduser() if entry.get("labels") else None
    listed = list_folder(images, labels, label_format)
    if not listed:
        raise DatasetError(f"no images found under {images}")
    include = set(entry.get("sequences") or [])
    exclude = set(entry.get("exclude_sequences") or [])
    grouped: dict[str, list[FolderEntry]] = {}
    for item in listed:
        grouped.setdefault(item.record.sequence, []).append(item)
    sequences = {}
    for name, frames in grouped.items():
        if (include and name not in include) or name in exclude:
            continue
        items = []
        for record, label_path in ((f.record, f.label_path) for f in frames):
            fmt = None
            if label_path is not None:
                fmt = entry["label_format"]
                if fmt == "auto":
                    fmt = _detect_label_format(label_path)
            items.append(SequenceFrame(record, label_path, fmt))
        sequences[name] = items
    if not sequences:
        raise DatasetError(
            f"no sequences left under {images} after sequences/exclude_sequences filters"
        )
    return sequences


def read_frame(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    frame = read_rgb(path)
    if size and (frame.shape[1], frame.shape[0]) != tuple(size):
        frame = cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA)
    return frame


def read_label_resized(item: SequenceFrame, size: tuple[int, int] | None) -> np.ndarray | None:
    if item.label_path is None:
        return None
    label = read_label(item.label_path, item.label_format)
    if size and (label.shape[1], label.shape[0]) != tuple(size):
        label = cv2.resize(label, tuple(size), interpolation=cv2.INTER_NEAREST)
    return label


def to_tensor_image(frame: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1] (models normalise on the device)."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)


class SequenceSampleDataset(Dataset):
    """Anchor frames with neighbours (pair mode) or preceding clips (clip mode) from one entry."""

    def __init__(
        self,
        entry: dict,
        data_config: dict,
        flow_cache: FlowCache | None,
        seed: int = 0,
        needs_neighbour: bool = True,
    ):
        self.sequences = load_sequences(entry)
        self.needs_neighbour = needs_neighbour
        self.resize = tuple(data_config["resize"]) if data_config.get("resize") else None
        self.mode = data_config["mode"]
        self.max_gap = int(data_config["max_gap"])
        self.direction = data_config["direction"]
        self.clip_length = int(data_config["clip_length"])
        self.clip_stride = int(data_config["clip_stride"])
        self.augment = AlignedAugmentation(
            data_config["scale_range"], data_config.get("crop"), data_config["hflip"]
        )
        self.flow_cache = flow_cache
        self.seed = seed
        self.epoch = 0
        self.profiler = (
            None  # a training.profiling.StepProfiler (set by the trainer with workers: 0)
        )
        labelled_only = entry.get("labelled_only", True)
        self.anchors: list[tuple[str, int]] = []
        for name, frames in self.sequences.items():
            has_labels = any(f.label_path for f in frames)
            for index, frame in enumerate(frames):
                if frame.label_path is not None or not (labelled_only and has_labels):
                    self.anchors.append((name, index))
        if not self.anchors:
            raise DatasetError(f"dataset entry {entry} yields no training frames")
        repeat = entry.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise DatasetError(f"dataset entry {entry}: repeat must be an integer >= 1")
        self.anchors *= repeat
        self.loss_scale = torch.tensor(entry_loss_scale(entry), dtype=torch.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.anchors)

    def _phase(self, name: str):
        return self.profiler.phase(name) if self.profiler is not None else nullcontext()

    def _flow(
        self, anchor: SequenceFrame, other: SequenceFrame, anchor_image, other_image
    ) -> np.ndarray:
        if not self.flow_cache:
            return np.zeros(anchor_image.shape[:2] + (2,), np.float32)
        if self.profiler is None:
            return self.flow_cache.get(
                anchor.record.path, other.record.path, anchor_image, other_image
            )
        misses, start = self.flow_cache.misses, time.perf_counter()
        flow = self.flow_cache.get(
            anchor.record.path, other.record.path, anchor_image, other_image
        )
        computed = self.flow_cache.misses > misses
        # A cache read and a computation differ by orders of magnitude: keep them apart.
        self.profiler.add(
            "data.flow_compute" if computed else "data.flow", time.perf_counter() - start
        )
        self.profiler.count("flow computed" if computed else "flow read from cache")
        return flow

    def _neighbour_index(self, length: int, index: int, rng: np.random.Generator) -> int:
        if length == 1:
            return index
        gap = int(rng.integers(1, self.max_gap + 1))
        sign = {"forward": 1, "backward": -1}.get(self.direction) or (
            1 if rng.random() < 0.5 else -1
        )
        target = index + sign * gap
        if not 0 <= target < length:  # at the sequence ends, look the other way
            target = index - sign * gap
        return int(min(max(target, 0), length - 1))

    def __getitem__(self, item: int) -> dict:
        name, index = self.anchors[item]
        frames = self.sequences[name]
        rng = np.random.default_rng([self.seed, self.epoch, item])
        anchor = frames[index]
        with self._phase("data.read"):
            anchor_image = read_frame(anchor.record.path, self.resize)
            size = (anchor_image.shape[1], anchor_image.shape[0])
            label = read_label_resized(anchor, size)
        if label is None:
            label = np.full(anchor_image.shape[:2], IGNORE_ID, np.uint8)
        valid = np.ones(anchor_image.shape[:2], np.uint8)
        if self.mode == "pair" and not self.needs_neighbour:
            sample = AlignedSample([anchor_image], label, [], valid)
        elif self.mode == "pair":
            other = frames[self._neighbour_index(len(frames), index, rng)]
            with self._phase("data.read"):
                other_image = read_frame(other.record.path, size)
            flow = self._flow(anchor, other, anchor_image, other_image)
            sample = AlignedSample([anchor_image, other_image], label, [flow], valid)
        else:
            indices = [
                max(0, index - self.clip_stride * step)
                for step in range(self.clip_length - 1, -1, -1)
            ]
            with self._phase("data.read"):
                images = [read_frame(frames[i].record.path, size) for i in indices[:-1]] + [
                    anchor_image
                ]
            sample = AlignedSample(images, label, [], valid)
        with self._phase("data.augment"):
            sample = self.augment(sample, rng)
        out = {
            "label": torch.from_numpy(sample.label.astype(np.int64)),
            "valid": torch.from_numpy(sample.valid.astype(np.float32)).unsqueeze(0),
            "loss_scale": self.loss_scale.clone(),
        }
        if self.mode == "pair":
            out["image"] = to_tensor_image(sample.frames[0])
        if self.mode == "pair" and self.needs_neighbour:
            out["neighbour"] = to_tensor_image(sample.frames[1])
            out["flow"] = (
                torch.from_numpy(np.ascontiguousarray(sample.flows[0])).permute(2, 0, 1).float()
            )
        elif self.mode == "clip":
            out["clip"] = torch.stack([to_tensor_image(f) for f in sample.frames])
        return out


class TrainingDataset(ConcatDataset):
    """All ``data.train`` entries concatenated; ``set_epoch`` reseeds every part."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)

    def label_histogram(self) -> np.ndarray:
        """Pixels per label value (256 bins) over every anchor as sampled in one epoch (an entry's
        ``repeat`` counts), each label file read once."""
        uses: dict[int, tuple[SequenceFrame, int]] = {}
        for part in self.datasets:
            for name, index in part.anchors:
                frame = part.sequences[name][index]
                if frame.label_path is not None:
                    _, count = uses.get(id(frame), (frame, 0))
                    uses[id(frame)] = (frame, count + 1)
        histogram = np.zeros(256, np.int64)
        for frame, count in uses.values():
            label = read_label_resized(frame, None)
            histogram += count * np.bincount(label.ravel(), minlength=256)[:256]
        return histogram


def build_training_dataset(
    config: dict, run_dir: Path, needs_neighbour: bool = True, needs_flow: bool = True
) -> TrainingDataset:
    """``needs_neighbour``/``needs_flow`` False skip reading the neighbour / computing flow (a
    per-frame baseline then costs one image read per sample)."""
    data = config["data"]
    flow_cache = None
    if data["mode"] == "pair" and needs_neighbour and needs_flow:
        flow_cache = build_flow_cache(data["flow"], run_dir)
    parts = [
        SequenceSampleDataset(
            entry, data, flow_cache, seed=int(config["seed"]), needs_neighbour=needs_neighbour
        )
        for entry in data["train"]
    ]
    return TrainingDataset(parts)


def build_validation_sequences(config: dict) -> dict[str, list[SequenceFrame]]:
    """Validation sequences from every ``data.val`` entry (names prefixed by the entry index)."""
    sequences = {}
    for number, entry in enumerate(config["data"]["val"]):
        for name, frames in load_sequences(entry).items():
            sequences[f"{number}:{name}"] = frames
    return sequences


__all__ = [
    "DatasetError",
    "SequenceSampleDataset",
    "TrainingDataset",
    "build_training_dataset",
    "build_validation_sequences",
    "entry_loss_scale",
    "load_sequences",
    "read_frame",
    "read_label_resized",
    "to_tensor_image",
]
