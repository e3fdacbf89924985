"""Training configuration: YAML file + command-line overrides, checked against known defaults.

A config has these sections (see ``config/train/*.yaml`` for complete examples)::

    run_dir: runs/my_run          # checkpoints, metrics.csv, metrics.png, flow cache by default
    seed: 0
    model:    {arch, kwargs, init, label_set, preprocessing}
    memory:   null or {freeze_base: true, ...wrapper settings}
    teacher:  null or {checkpoint: path} or {arch, kwargs, init}
    data:     {train: [...datasets], val: [...datasets], resize, crop, scale_range, hflip,
               mode: pair|clip, max_gap, clip_length, flow: {...}, workers}
    train:    {epochs, batch_size, optimizer, lr, momentum, weight_decay, poly_power, amp,
               freeze_bn, val_every, save_every, max_iters_per_epoch, device, log_every}
    losses:   {ce, temporal, distill_pixel, distill_pairwise, distill_cross_frame,
               distill_temporal}: each {weight: w, ...}; weight 0 switches a loss off.

Overrides on the command line use dotted keys: ``train.epochs=3 losses.temporal.weight=0.4``;
values are parsed as YAML (``true``, ``[512, 256]``, ``null``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "run_dir": "runs/train",
    "seed": 0,
    "model": {
        "arch": None,            # registered architecture name (video_seg_ros.models)
        "kwargs": {},            # builder keyword arguments (num_classes is filled in if missing)
        "init": None,            # project-format checkpoint to start from (weights + arch if arch unset)
        "label_set": "cityscapes",
        # Input normalisation written into the checkpoint; None = the init checkpoint's, else ImageNet.
        "preprocessing": None,
    },
    "memory": None,
    "teacher": None,
    "data": {
        "train": [],
        "val": [],
        "resize": None,          # [W, H] every frame is resized to first (flow is computed at it)
        "crop": None,            # [W, H] random crop after scaling; None = the whole resized frame
        "scale_range": [1.0, 1.0],
        "hflip": True,
        "mode": "pair",          # pair: frame t + neighbour t+k; clip: clip_length frames ending at t
        "max_gap": 3,            # k is drawn uniformly from 1..max_gap (pair mode)
        "direction": "forward",  # forward (t+k), backward (t-k) or both (either, at random)
        "clip_length": 3,
        "clip_stride": 1,
        "flow": {"method": "dis", "preset": "ultrafast", "max_width": None, "cache_dir": None},
        "workers": 0,
        "val_resize": None,      # [W, H] for validation; None = data.resize
    },
    "train": {
        "epochs": 10,
        "batch_size": 4,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "amp": True,             # only takes effect on CUDA
        "freeze_bn": False,      # BatchNorm layers in eval mode (small batches, exact DDP parity)
        "val_every": 1,
        "save_every": 1,
        "max_iters_per_epoch": None,
        "device": "auto",
        "log_every": 10,
        "val_max_frames": None,  # per validation sequence; None = all
        "find_unused_parameters": False,  # DDP: needed only if some parameters get no gradient
    },
    "losses": {
        "ce": {"weight": 1.0},
        "temporal": {"weight": 0.0, "detach_neighbour": False},
        "distill_pixel": {"weight": 0.0, "temperature": 1.0, "neighbour_weight": 0.4},
        "distill_pairwise": {"weight": 0.0, "grid": [16, 32], "neighbour_weight": 0.4},
        "distill_cross_frame": {"weight": 0.0, "grid": [16, 32]},
        "distill_temporal": {"weight": 0.0, "grid": [8, 16], "hidden": 4, "seed": 0},
    },
}

_FREE_FORM = {"model.kwargs", "model.preprocessing", "memory", "teacher", "data.train", "data.val"}


class ConfigError(ValueError):
    """The training config is invalid; the message names the key and what to do."""


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in (update or {}).items():
        path = f"{prefix}{key}"
        if key not in base and prefix.rstrip(".") not in _FREE_FORM:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{path}'; known keys here: {known}")
        if isinstance(base.get(key), dict) and isinstance(value, dict) and path not in _FREE_FORM:
            merged[key] = _merge(base[key], value, path + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(config: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = key.strip().split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            if node.get(part) is None and ".".join(parts[: depth + 1]) in ("memory", "teacher"):
                node[part] = {}
            else:
                raise ConfigError(f"override {override!r}: '{'.'.join(parts[:depth + 1])}' is not a section")
        node = node[part]
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML config, merge it over :data:`DEFAULTS`, apply overrides and validate."""
    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass --config config/train/<name>.yaml.")
        with open(path) as stream:
            user = yaml.safe_load(stream) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{path} must hold a YAML mapping (sections model, data, train, losses)")
    config = _merge(DEFAULTS, user)
    for override in overrides:
        apply_override(config, override)
    config = _merge(DEFAULTS, config)  # re-check keys introduced by overrides
    validate(config)
    return config


def validate(config: dict) -> None:
    model = config["model"]
    if not model.get("arch") and not model.get("init"):
        raise ConfigError("model.arch or model.init must be set (an architecture name or a checkpoint)")
    data = config["data"]
    if not data["train"]:
        raise ConfigError("data.train lists no dataset; add e.g. {type: folder, images: PATH}")
    if data["mode"] not in ("pair", "clip"):
        raise ConfigError("data.mode must be 'pair' or 'clip'")
    if data["direction"] not in ("forward", "backward", "both"):
        raise ConfigError("data.direction must be forward, backward or both")
    for key in ("resize", "crop", "val_resize"):
        value = data.get(key)
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ConfigError(f"data.{key} must be [width, height] or null")
    low, high = data["scale_range"]
    if not 0 < low <= high:
        raise ConfigError("data.scale_range must be [low, high] with 0 < low <= high")
    if (low, high) != (1.0, 1.0) and not data.get("crop") and int(config["train"]["batch_size"]) > 1:
        raise ConfigError("data.scale_range other than [1, 1] gives frames of different sizes; set "
                          "data.crop: [width, height] so a batch can be stacked")
    train = config["train"]
    if train["optimizer"] not in ("sgd", "adam", "adamw"):
        raise ConfigError("train.optimizer must be sgd, adam or adamw")
    if int(train["batch_size"]) < 1 or int(train["epochs"]) < 1:
        raise ConfigError("train.batch_size and train.epochs must be at least 1")
    losses = config["losses"]
    distill = [name for name in losses if name.startswith("distill_") and losses[name]["weight"]]
    if distill and not config.get("teacher"):
        raise ConfigError(f"losses {', '.join(distill)} need a teacher: set teacher.checkpoint")
    if data["mode"] == "clip" and any(losses[n]["weight"] for n in losses if n != "ce"):
        raise ConfigError("data.mode 'clip' (memory training) supports only the ce loss; set the "
                          "other loss weights to 0")


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
