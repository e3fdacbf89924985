"""Camera effects on rendered frames: exposure drift, lighting flicker, motion blur, sensor noise.

They change the pixels only, never the ground truth, and are what makes a per-frame model flicker
on synthetic video (so temporal consistency has something to fix).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class CameraEffects:
    """Per-sequence effect settings, drawn from the sequence seed (see :func:`random_effects`)."""

    exposure_drift: float  # std of the per-frame log-exposure random walk
    flicker_probability: float
    flicker_strength: float  # max relative gain change of a flicker frame
    noise_sigma: float  # sensor noise std in 0..255 units
    blur_per_metre: float  # zoom-blur strength per metre of forward travel per frame


def random_effects(rng: np.random.Generator) -> CameraEffects:
    return CameraEffects(
        exposure_drift=rng.uniform(0.01, 0.035),
        flicker_probability=rng.uniform(0.03, 0.12),
        flicker_strength=rng.uniform(0.15, 0.35),
        noise_sigma=rng.uniform(1.5, 5.0),
        blur_per_metre=rng.uniform(0.004, 0.012),
    )


class EffectState:
    """Carries the exposure random walk from frame to frame."""

    def __init__(self, effects: CameraEffects, base_exposure: float, white_balance: np.ndarray):
        self.effects = effects
        self.log_exposure = float(np.log(base_exposure))
        self.white_balance = white_balance.astype(np.float32)

    def apply(
        self, rgb: np.ndarray, rng: np.random.Generator, travel: float, focus: tuple[float, float]
    ) -> np.ndarray:
        """Float32 (H, W, 3) 0..255 rendered colour -> uint8 camera image."""
        effects = self.effects
        self.log_exposure = 0.9 * self.log_exposure + rng.normal(0.0, effects.exposure_drift)
        gain = np.exp(self.log_exposure)
        if rng.random() < effects.flicker_probability:
            gain *= 1.0 + rng.uniform(-1.0, 1.0) * effects.flicker_strength
        blur = effects.blur_per_metre * travel
        if blur > 1e-3:
            rgb = zoom_blur(rgb, focus, blur)
        image = rgb * (gain * self.white_balance)
        # Luminance noise plus weaker per-channel (chroma) noise.
        sigma = np.float32(effects.noise_sigma)
        image += rng.standard_normal(image.shape[:2] + (1,), dtype=np.float32) * sigma
        image += rng.standard_normal(image.shape, dtype=np.float32) * (sigma * np.float32(0.5))
        return np.clip(image, 0, 255).astype(np.uint8)


def zoom_blur(
    rgb: np.ndarray, focus: tuple[float, float], amount: float, samples: int = 3
) -> np.ndarray:
    """Radial blur around the focus of expansion, the blur of a camera moving forward.

    Averages the frame with copies magnified by up to ``1 + amount``.
    """
    out = rgb.copy()
    height, width = rgb.shape[:2]
    for index in range(1, samples):
        scale = 1.0 + amount * index / (samples - 1)
        matrix = np.array(
            [[scale, 0, (1 - scale) * focus[0]], [0, scale, (1 - scale) * focus[1]]], np.float32
        )
        out += cv2.warpAffine(
            rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
    return out / samples
