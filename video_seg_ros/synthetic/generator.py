"""Seeded synthetic driving sequences, and writing them in the Cityscapes folder layout.

``generate_sequence(seed, ...)`` yields :class:`SyntheticFrame` s: an RGB frame, its Cityscapes
trainId labels and the exact optical flow to the next frame. The same seed always gives the same
frames, bit for bit, on any machine with the same numpy/OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from video_seg_ros.synthetic.effects import EffectState, random_effects
from video_seg_ros.synthetic.render import Renderer
from video_seg_ros.synthetic.scene import random_scene

#: City name used in written file names (Cityscapes names are lowercase letters).
CITY = "synth"
#: Seed of the demo's sample sequence (``demo_sequence``).
DEMO_SEED = 2024
DEFAULT_SIZE = (1024, 512)
DEFAULT_FPS = 17.0  # Cityscapes sequences are recorded at 17 Hz


@dataclass(frozen=True)
class SyntheticFrame:
    """One generated frame.

    Attributes:
        rgb: (H, W, 3) uint8 camera image.
        labels: (H, W) uint8 Cityscapes trainIds (0..18, 255 = void: the ego vehicle's bonnet).
        flow_to_next: (H, W, 2) float32 true flow (x, y) to the next frame, in the
            :mod:`video_seg_ros.flow` convention; ``None`` on the last frame.
        flow_valid: (H, W) bool, True where the pixel's surface is visible at ``pixel + flow`` in
            the next frame (not occluded, inside the image); ``None`` on the last frame.
        index: frame number within the sequence.
        seed: the sequence seed.
    """

    rgb: np.ndarray
    labels: np.ndarray
    flow_to_next: np.ndarray | None
    flow_valid: np.ndarray | None
    index: int
    seed: int


def _check_arguments(seed: int, num_frames: int, width: int, height: int, fps: float) -> None:
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if width < 32 or height < 16:
        raise ValueError(f"frame size {width}x{height} is too small; use at least 32x16")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")


def generate_sequence(
    seed: int,
    num_frames: int = 30,
    width: int = DEFAULT_SIZE[0],
    height: int = DEFAULT_SIZE[1],
    fps: float = DEFAULT_FPS,
    effects: bool = True,
    with_flow: bool = True,
    ego_hood: bool = True,
) -> Iterator[SyntheticFrame]:
    """Yield ``num_frames`` frames of the street drawn from ``seed``.

    Args:
        seed: any non-negative int; the whole sequence is a function of it (and of the size, rate).
        width, height: frame size in pixels; the view (field of view, horizon) scales with it.
        fps: frame rate; objects move by ``speed / fps`` between frames.
        effects: camera effects (exposure drift, flicker, motion blur, noise) on the images.
        with_flow: compute the true flow to the next frame (about a third of the time per frame).
        ego_hood: draw the ego vehicle's bonnet at the bottom (label 255, as in Cityscapes).
    """
    _check_arguments(seed, num_frames, width, height, fps)
    duration = num_frames / fps
    scene = random_scene(seed, duration, width, height)
    renderer = Renderer(scene, width, height, ego_hood=ego_hood)
    effect_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xEFFEC7]))
    effect_state = EffectState(random_effects(effect_rng), scene.exposure, scene.white_balance)
    camera = scene.camera
    focus = (camera.cx - 0.5, camera.cy - 0.5)
    travel = camera.speed / fps
    dt = 1.0 / fps

    def finish(view, rng):
        if not effects:
            return np.clip(view.rgb, 0, 255).astype(np.uint8)
        return effect_state.apply(view.rgb, rng, travel, focus)

    view = renderer.render(0.0)
    for index in range(num_frames):
        frame_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF4A3E, index]))
        rgb = finish(view, frame_rng)
        next_view = renderer.render((index + 1) * dt) if index + 1 < num_frames else None
        flow = valid = None
        if with_flow and next_view is not None:
            flow = renderer.flow(view, next_view.pose, dt)
            valid = renderer.visible_in_next(view, flow, next_view, dt)
        yield SyntheticFrame(rgb, view.labels, flow, valid, index, int(seed))
        view = next_view


def demo_sequence(
    num_frames: int = 120, width: int = 512, height: int = 256, fps: float = DEFAULT_FPS
) -> Iterator[SyntheticFrame]:
    """The demo's sample sequence: always the same street (seed :data:`DEMO_SEED`), not in
    training."""
    return generate_sequence(DEMO_SEED, num_frames, width, height, fps, with_flow=False)


def sequence_seed(base_seed: int, index: int) -> int:
    """Seed of the ``index``-th sequence of a data set written with ``base_seed``."""
    return int(base_seed) * 1000 + int(index)


def sequence_name(seed: int) -> str:
    """``synth_<seed:06d>``: the Cityscapes-style sequence name (city_sequence) of ``seed``."""
    return f"{CITY}_{int(seed):06d}"


def frame_stem(seed: int, index: int) -> str:
    """``synth_<seed:06d>_<frame:06d>``: a Cityscapes-style key (city_sequence_frame)."""
    return f"{sequence_name(seed)}_{int(index):06d}"


def write_sequence(
    out_dir: str | Path,
    seed: int,
    num_frames: int = 30,
    width: int = DEFAULT_SIZE[0],
    height: int = DEFAULT_SIZE[1],
    fps: float = DEFAULT_FPS,
    split: str = "train",
    write_flow: bool = False,
    effects: bool = True,
    progress=None,
) -> list[Path]:
    """Write one sequence in the Cityscapes layout under ``out_dir``; returns the image paths.

    Layout (readable by :func:`video_seg_ros.frames.list_frames` / ``index_label_files``)::

        out_dir/leftImg8bit_sequence/<split>/synth/synth_<seed>_<frame>_leftImg8bit.png
        out_dir/gtFine/<split>/synth/synth_<seed>_<frame>_gtFine_labelTrainIds.png
        out_dir/flow/<split>/synth/synth_<seed>_<frame>_flowToNext.npz   (with write_flow)

    Flow files hold ``flow`` (H, W, 2) float16 and ``valid`` (H, W) bool; read with
    :func:`read_flow`.
    ``progress`` is called once per written frame (e.g. a tqdm ``update``).
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "leftImg8bit_sequence" / split / CITY
    label_dir = out_dir / "gtFine" / split / CITY
    flow_dir = out_dir / "flow" / split / CITY
    for folder in (image_dir, label_dir) + ((flow_dir,) if write_flow else ()):
        folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame in generate_sequence(
        seed, num_frames, width, height, fps, effects=effects, with_flow=write_flow
    ):
        stem = frame_stem(seed, frame.index)
        image_path = image_dir / f"{stem}_leftImg8bit.png"
        _imwrite(image_path, cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        _imwrite(label_dir / f"{stem}_gtFine_labelTrainIds.png", frame.labels)
        if write_flow and frame.flow_to_next is not None:
            np.savez_compressed(
                flow_dir / f"{stem}_flowToNext.npz",
                flow=frame.flow_to_next.astype(np.float16),
                valid=frame.flow_valid,
            )
        paths.append(image_path)
        if progress is not None:
            progress(1)
    return paths


def read_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(flow (H, W, 2) float32, valid (H, W) bool) from a ``*_flowToNext.npz`` file."""
    with np.load(path) as data:
        return data["flow"].astype(np.float32), data["valid"].astype(bool)


def _imwrite(path: Path, image: np.ndarray) -> None:
    # PNG compression level 1: several times faster than the default, files ~15% larger.
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path} (disk full or folder not writable?)")
