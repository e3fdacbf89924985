"""Contact sheets: generated frames beside their label overlays, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.labels import CITYSCAPES, overlay


def contact_sheet(
    frames, path: str | Path | None = None, tile_width: int = 512, alpha: float = 0.55
) -> np.ndarray:
    """Grid with one row per frame: the camera image and its labels blended over it.

    Args:
        frames: iterable of :class:`~video_seg_ros.synthetic.SyntheticFrame`.
        path: PNG to write (optional).
        tile_width: width of each tile in pixels (height keeps the frame's aspect ratio).

    Returns:
        (H, W, 3) uint8 RGB sheet.
    """
    table = CITYSCAPES.palette_array()
    rows = []
    for frame in frames:
        height, width = frame.labels.shape
        size = (tile_width, max(1, round(height * tile_width / width)))
        image = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(frame.labels, size, interpolation=cv2.INTER_NEAREST)
        rows.append(
            np.concatenate(
                [
                    image,
                    np.full((size[1], 4, 3), 255, np.uint8),
                    overlay(image, labels, table, alpha),
                ],
                axis=1,
            )
        )
    if not rows:
        raise ValueError("contact_sheet needs at least one frame")
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    return sheet
