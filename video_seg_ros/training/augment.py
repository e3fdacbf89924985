"""Augmentation that keeps neighbouring frames aligned: one random scale, crop and flip per sample,
applied identically to every frame, the label and the flow between the frames.

Flow is a displacement field, so it is not only resampled like an image: scaling multiplies its
vectors by the scale factors, and a horizontal flip mirrors the field and negates its x component.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from video_seg_ros.labels import IGNORE_ID


@dataclass
class AlignedSample:
    """Frames (H, W, 3) uint8 RGB, the anchor's label (H, W) uint8 or None, flows (H, W, 2) float32
    from the anchor to each other frame, and ``valid`` (H, W) uint8: 1 on real pixels, 0 on
    padding."""

    frames: list[np.ndarray]
    label: np.ndarray | None
    flows: list[np.ndarray]
    valid: np.ndarray


def resize_sample(sample: AlignedSample, width: int, height: int) -> AlignedSample:
    old_h, old_w = sample.frames[0].shape[:2]
    if (old_w, old_h) == (width, height):
        return sample
    size = (width, height)
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in sample.frames]
    label = (
        None
        if sample.label is None
        else cv2.resize(sample.label, size, interpolation=cv2.INTER_NEAREST)
    )
    factor = np.array([width / old_w, height / old_h], np.float32)
    flows = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) * factor for f in sample.flows]
    valid = cv2.resize(sample.valid, size, interpolation=cv2.INTER_NEAREST)
    return AlignedSample(frames, label, flows, valid)


def _pad(array: np.ndarray, height: int, width: int, value) -> np.ndarray:
    pad_h, pad_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not pad_h and not pad_w:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="constant", constant_values=value)


def crop_sample(sample: AlignedSample, x0: int, y0: int, width: int, height: int) -> AlignedSample:
    """Crop (padding first where the sample is smaller than the crop: label 255, valid 0)."""

    def cut(array, value):
        return _pad(array, y0 + height, x0 + width, value)[y0 : y0 + height, x0 : x0 + width]

    return AlignedSample(
        [cut(f, 0) for f in sample.frames],
        None if sample.label is None else cut(sample.label, IGNORE_ID),
        [cut(f, 0.0) for f in sample.flows],
        cut(sample.valid, 0),
    )


def flip_sample(sample: AlignedSample) -> AlignedSample:
    flows = []
    for flow in sample.flows:
        mirrored = flow[:, ::-1].copy()
        mirrored[..., 0] *= -1.0
        flows.append(mirrored)
    return AlignedSample(
        [np.ascontiguousarray(f[:, ::-1]) for f in sample.frames],
        None if sample.label is None else np.ascontiguousarray(sample.label[:, ::-1]),
        flows,
        np.ascontiguousarray(sample.valid[:, ::-1]),
    )


class AlignedAugmentation:
    """Random scale in ``scale_range``, random crop to ``crop`` ([W, H] or None) and horizontal
    flip."""

    def __init__(self, scale_range=(1.0, 1.0), crop=None, hflip: bool = True):
        self.scale_range = tuple(float(s) for s in scale_range)
        self.crop = tuple(int(c) for c in crop) if crop else None
        self.hflip = hflip

    def __call__(self, sample: AlignedSample, rng: np.random.Generator) -> AlignedSample:
        height, width = sample.frames[0].shape[:2]
        low, high = self.scale_range
        if high > low or low != 1.0:
            scale = rng.uniform(low, high) if high > low else low
            sample = resize_sample(
                sample, max(1, round(width * scale)), max(1, round(height * scale))
            )
        if self.crop:
            crop_w, crop_h = self.crop
            height, width = sample.frames[0].shape[:2]
            x0 = int(rng.integers(0, max(0, width - crop_w) + 1))
            y0 = int(rng.integers(0, max(0, height - crop_h) + 1))
            sample = crop_sample(sample, x0, y0, crop_w, crop_h)
        if self.hflip and rng.random() < 0.5:
            sample = flip_sample(sample)
        return sample
