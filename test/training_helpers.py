"""Tiny training data and configs shared by test_training.py and test_training_ddp.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

WIDTH, HEIGHT = 64, 32


def write_moving_square_sequences(root: Path, sequences=("seqa", "seqb"), frames: int = 6) -> Path:
    """Frames ``<seq>_<n>.png`` of a textured square moving 3 px right per frame over a road/grass
    background, with trainId labels of the same names (13 car, 0 road, 8 vegetation)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    texture = (np.indices((12, 12)).sum(0) % 4 * 50 + 50).astype(np.uint8)
    for seq_number, sequence in enumerate(sequences):
        for t in range(frames):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[:] = (40, 110, 40)
            image[24:] = (128, 64, 128)
            label = np.full((HEIGHT, WIDTH), 8, np.uint8)
            label[24:] = 0
            x = 6 + 3 * t + 4 * seq_number
            image[8:20, x : x + 12, 0] = texture + 50
            image[8:20, x : x + 12, 1] = texture // 2
            image[8:20, x : x + 12, 2] = 200 - texture
            label[8:20, x : x + 12] = 13
            cv2.imwrite(str(root / "images" / f"{sequence}_{t:06d}.png"), image[..., ::-1])
            cv2.imwrite(str(root / "labels" / f"{sequence}_{t:06d}.png"), label)
    return root


def tiny_config(data: Path, run_dir: Path, **extra) -> dict:
    folder = {
        "type": "folder",
        "images": str(data / "images"),
        "labels": str(data / "labels"),
        "label_format": "trainids",
    }
    config = {
        "run_dir": str(run_dir),
        "model": {"arch": "espnet", "kwargs": {"p": 1, "q": 1, "num_classes": 19}},
        "data": {
            "train": [dict(folder, exclude_sequences=["seqb"])],
            "val": [dict(folder, sequences=["seqb"])],
            "crop": [48, 32],
            "scale_range": [0.9, 1.2],
            "max_gap": 2,
        },
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "log_every": 1, "device": "cpu"},
        "losses": {"temporal": {"weight": 1.0}},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
