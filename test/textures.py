"""Test images that optical flow can track (shared by the flow and metric tests)."""

import cv2
import numpy as np


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (uint8 grey) that DIS can track."""
    noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    return cv2.normalize(
        cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX
    ).astype(np.uint8)
