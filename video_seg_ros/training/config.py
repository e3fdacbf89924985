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
               precision, freeze_bn, val_every, save_every, max_iters_per_epoch, max_iters,
               device, log_every, profile}
    losses:   {ce, temporal, distill_pixel, distill_pairwise, distill_cross_frame,
               distill_temporal, pseudo_label}: each {weight: w, ...}; weight 0 switches a
               loss off.

Overrides on the command line use dotted keys: ``train.epochs=3 losses.temporal.weight=0.4``;
values are parsed as YAML (``true``, ``[512, 256]``, ``null``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from video_seg_ros.runtime import TORCH_PRECISIONS

DEFAULTS: dict[str, Any] = {
    "run_dir": "runs/train",
    "seed": 0,
    "model": {
        "arch": None,  # registered architecture name (video_seg_ros.models)
        "kwargs": {},  # builder keyword arguments (num_classes is filled in if missing)
        "init": None,  # project-format checkpoint to start from (weights + arch if arch unset)
        "label_set": "cityscapes",
        # Input normalisation written into the checkpoint; None = the init checkpoint's, else
        # ImageNet.
        "preprocessing": None,
    },
    "memory": None,
    "teacher": None,
    "data": {
        "train": [],
        "val": [],
        "resize": None,  # [W, H] every frame is resized to first (flow is computed at it)
        "crop": None,  # [W, H] random crop after scaling; None = the whole resized frame
        "scale_range": [1.0, 1.0],
        "hflip": True,
        "mode": "pair",  # pair: frame t + neighbour t+k; clip: clip_length frames ending at t
        "max_gap": 3,  # k is drawn uniformly from 1..max_gap (pair mode)
        "direction": "forward",  # forward (t+k), backward (t-k) or both (either, at random)
        "clip_length": 3,
        "clip_stride": 1,
        "flow": {"method": "dis", "preset": "ultrafast", "max_width": None, "cache_dir": None},
        "workers": 0,
        "val_resize": None,  # [W, H] for validation; None = data.resize
    },
    "train": {
        "epochs": 10,  # null: as many as train.max_iters needs (set max_iters then)
        "batch_size": 4,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "amp": True,  # float16 autocast on CUDA when train.precision is null
        # null: fp16 on CUDA if train.amp, else fp32 (the behaviour before this key existed);
        # auto|fp32|bf16|fp16: video_seg_ros.runtime.resolve_precision (bf16 needs a CPU with
        # native bf16).
        "precision": None,
        "freeze_bn": False,  # BatchNorm layers in eval mode (small batches, exact DDP parity)
        "val_every": 1,  # epochs between validations; 0 = never validate during training
        "save_every": 1,  # epochs between last.pt saves; 0 = only at the end (and on a new best)
        "max_iters_per_epoch": None,
        "max_iters": None,  # total step budget over all epochs (stops the run early); null = none
        "device": "auto",
        "log_every": 10,
        # per-phase seconds of every step in steps.csv (see training/profiling.py)
        "profile": False,
        "val_max_frames": None,  # per validation sequence; None = all
        "find_unused_parameters": False,  # DDP: needed only if some parameters get no gradient
    },
    "losses": {
        # class_weights: null, enet (1 / ln(1.02 + share), shares counted over the training
        # labels at start-up) or one positive number per output channel.
        "ce": {"weight": 1.0, "class_weights": None},
        "temporal": {"weight": 0.0, "detach_neighbour": False},
        "distill_pixel": {"weight": 0.0, "temperature": 1.0, "neighbour_weight": 0.4},
        "distill_pairwise": {"weight": 0.0, "grid": [16, 32], "neighbour_weight": 0.4},
        "distill_cross_frame": {"weight": 0.0, "grid": [16, 32]},
        "distill_temporal": {"weight": 0.0, "grid": [8, 16], "hidden": 4, "seed": 0},
        # Cross-entropy on the teacher's confident pixels (label-free adaptation): targets are the
        # teacher's argmax where its max softmax >= confidence, ignored elsewhere.
        "pseudo_label": {"weight": 0.0, "confidence": 0.9, "neighbour_weight": 0.0},
    },
}

#: Integer settings: key -> (smallest allowed value, may be null, what the value means).
_INTEGER_KEYS = {
    "seed": (0, False, "the random seed"),
    "train.epochs": (
        1,
        True,
        "passes over the training data; null = as many as train.max_iters needs",
    ),
    "train.batch_size": (1, False, "samples per step (per process under DDP)"),
    "train.val_every": (
        0,
        False,
        "epochs between validations; 0 = never validate during training",
    ),
    "train.save_every": (
        0,
        False,
        "epochs between last.pt saves; 0 = only at the end and on a new best",
    ),
    "train.log_every": (1, False, "steps between steps.csv rows"),
    "train.max_iters_per_epoch": (
        1,
        True,
        "a cap on the steps of one epoch; null = the whole data",
    ),
    "train.max_iters": (1, True, "the total step budget; null = epochs x steps per epoch"),
    "train.val_max_frames": (1, True, "frames per validation sequence; null = all"),
    "data.workers": (0, False, "data-loader worker processes; 0 = load in the training process"),
    "data.max_gap": (1, False, "the largest frame step k of a neighbour t+k"),
    "data.clip_length": (1, False, "frames per clip (memory training)"),
    "data.clip_stride": (1, False, "frame step inside a clip"),
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
        section = isinstance(base.get(key), dict) and path not in _FREE_FORM
        if section and not isinstance(value, dict):
            if value is not None:  # an empty section keeps its defaults
                raise ConfigError(f"'{path}' must be a section (a mapping of keys), got {value!r}")
        elif section:
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
                raise ConfigError(
                    f"override {override!r}: '{'.'.join(parts[: depth + 1])}' is not a section"
                )
        node = node[part]
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a YAML config, merge it over :data:`DEFAULTS`, apply overrides and validate."""
    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {path}. Pass --config config/train/<name>.yaml."
            )
        try:
            with open(path) as stream:
                user = yaml.safe_load(stream) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from error
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the config file ({error})") from error
        if not isinstance(user, dict):
            raise ConfigError(
                f"{path} must hold a YAML mapping (sections model, data, train, losses)"
            )
    try:
        config = _merge(DEFAULTS, user)
        for override in overrides:
            apply_override(config, override)
        config = _merge(DEFAULTS, config)  # re-check keys introduced by overrides
        validate(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path is not None else str(error)) from error
    except (TypeError, ValueError, KeyError) as error:  # a value of the wrong kind in a section
        raise ConfigError(
            f"{path or 'the config'}: a value has the wrong type "
            f"({type(error).__name__}: {error}); compare with config/train/*.yaml"
        ) from error
    return config


def _lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_integers(config: dict) -> None:
    for key, (minimum, nullable, meaning) in _INTEGER_KEYS.items():
        value = _lookup(config, key)
        allowed = f"an integer >= {minimum}" + (" or null" if nullable else "")
        if value is None and nullable:
            continue
        # bool is an int subclass in Python; 'true' for a count is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key} must be {allowed} ({meaning}); got {value!r}")


def config_from_dict(user: dict, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Like :func:`load_config` for a config built in code (e.g. by video-seg-adapt)."""
    config = _merge(DEFAULTS, user)
    for override in overrides:
        apply_override(config, override)
    config = _merge(DEFAULTS, config)
    validate(config)
    return config


def _positive_numbers(value) -> bool:
    """A non-empty list of numbers > 0 (booleans are not numbers here)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    )


def validate(config: dict) -> None:
    _check_integers(config)
    model = config["model"]
    if not model.get("arch") and not model.get("init"):
        raise ConfigError(
            "model.arch or model.init must be set (an architecture name or a checkpoint)"
        )
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
    if (
        (low, high) != (1.0, 1.0)
        and not data.get("crop")
        and int(config["train"]["batch_size"]) > 1
    ):
        raise ConfigError(
            "data.scale_range other than [1, 1] gives frames of different sizes; set "
            "data.crop: [width, height] so a batch can be stacked"
        )
    train = config["train"]
    if train["epochs"] is None and train["max_iters"] is None:
        raise ConfigError(
            "train.epochs is null, which means 'as many as train.max_iters needs': set "
            "train.max_iters (the total step budget) or give train.epochs a number"
        )
    if train["optimizer"] not in ("sgd", "adam", "adamw"):
        raise ConfigError("train.optimizer must be sgd, adam or adamw")
    precision = train["precision"]
    if precision is not None and str(precision).lower() not in TORCH_PRECISIONS:
        raise ConfigError(
            f"train.precision must be null or one of {', '.join(TORCH_PRECISIONS)}; "
            f"got {precision!r}"
        )
    if not isinstance(train["amp"], bool):
        raise ConfigError(f"train.amp must be true or false; got {train['amp']!r}")
    if not 0.0 <= float(config["losses"]["pseudo_label"]["confidence"]) <= 1.0:
        raise ConfigError("losses.pseudo_label.confidence must be a probability in [0, 1]")
    losses = config["losses"]
    class_weights = losses["ce"]["class_weights"]
    if class_weights not in (None, "enet") and not _positive_numbers(class_weights):
        raise ConfigError(
            "losses.ce.class_weights must be null, enet or a list of positive numbers (one per "
            f"output channel); got {class_weights!r}"
        )
    distill = [
        name
        for name in losses
        if (name.startswith("distill_") or name == "pseudo_label") and losses[name]["weight"]
    ]
    if distill and not config.get("teacher"):
        raise ConfigError(f"losses {', '.join(distill)} need a teacher: set teacher.checkpoint")
    scaling = [e for e in data["train"] if isinstance(e, dict) and e.get("loss_scale")]
    if scaling:
        from video_seg_ros.training.losses import PER_SAMPLE_LOSSES

        others = [n for n in losses if losses[n]["weight"] and n not in PER_SAMPLE_LOSSES]
        if others or data["mode"] == "clip":
            raise ConfigError(
                "a dataset entry's loss_scale works in pair mode with the losses "
                f"{', '.join(PER_SAMPLE_LOSSES)}; "
                + (f"also on: {', '.join(others)}" if others else "data.mode is 'clip'")
            )
    if data["mode"] == "clip" and any(losses[n]["weight"] for n in losses if n != "ce"):
        raise ConfigError(
            "data.mode 'clip' (memory training) supports only the ce loss; set the "
            "other loss weights to 0"
        )


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
