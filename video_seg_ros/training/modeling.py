"""Student and teacher construction for training, and the device-side input normalisation.

Frames reach the device as (N, 3, H, W) RGB in [0, 1]; each model normalises them with its own
checkpoint :class:`~video_seg_ros.checkpoint.Preprocessing` (channel order, mean/std, scale), so a
student and a teacher with different conventions (e.g. ESPNet's BGR statistics) share one batch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from video_seg_ros.checkpoint import (
    Checkpoint,
    CheckpointCache,
    Preprocessing,
    output_to_class_for,
    strip_memory_from_checkpoint,
)
from video_seg_ros.labels import IGNORE_ID, LABEL_SETS
from video_seg_ros.models import build_from_checkpoint, build_model

#: torchvision-style ImageNet statistics, the default for students trained from scratch.
IMAGENET_PREPROCESSING = {
    "channel_order": "rgb",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "scale": 1.0,
}


class InputNormalizer(nn.Module):
    """[0, 1] RGB (N, 3, H, W) -> the model's input: ``(pixel - mean) / std * scale`` in its
    channel order."""

    def __init__(self, preprocessing: Preprocessing):
        super().__init__()
        self.bgr = preprocessing.channel_order == "bgr"
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        factor = torch.tensor([preprocessing.scale / s for s in preprocessing.std]).view(
            1, 3, 1, 1
        )
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("factor", factor, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * 255.0
        if self.bgr:
            pixels = pixels.flip(1)
        return (pixels - self.mean) * self.factor


class SegmenterWithFeatures(nn.Module):
    """Wraps a contract model so one ``forward`` returns logits *and* the 1/8 features.

    Distillation needs the encoder features; going through this module's ``forward`` (instead of
    calling ``encode``/``decode`` on the inner model) keeps DistributedDataParallel's gradient
    hooks in the path. Temporal (memory) models get a clip (N, T, 3, H, W) and return the last
    frame's logits; features are None for them.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        self.normalize = InputNormalizer(preprocessing)

    def forward(self, images: torch.Tensor, with_features: bool = True):
        if images.dim() == 5:
            clip = self.normalize(images.flatten(0, 1)).unflatten(0, images.shape[:2])
            if hasattr(self.model, "forward_sequence"):
                return self.model.forward_sequence(clip), None
            self.model.reset_state()
            logits = None
            for step in range(clip.shape[1]):
                logits = self.model.step(clip[:, step])
            return logits, None
        x = self.normalize(images)
        if not with_features:
            return self.model(x), None
        features, skips = self.model.encode(x)
        return self.model.decode(features, skips, x.shape[-2:]), features


def _preprocessing_from(config_pre: dict | None, init: Checkpoint | None, size) -> Preprocessing:
    width, height = size
    if config_pre:
        values = dict(config_pre)
    elif init is not None:
        values = asdict(init.preprocessing)
    else:
        values = dict(IMAGENET_PREPROCESSING)
    values["input_width"], values["input_height"] = int(width), int(height)
    return Preprocessing(**values)


def build_student(
    config: dict, checkpoints: CheckpointCache | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The student model and the metadata its checkpoints carry (arch, kwargs, labels,
    preprocessing).

    ``model.init`` (a project checkpoint) supplies the weights and, unless overridden, the
    architecture, label set and preprocessing. ``memory`` wraps the model with local memory
    attention; ``memory.freeze_base`` stops gradients into the per-frame model. ``checkpoints``:
    the run's reader, so that a file the teacher uses too is read once.
    """
    checkpoints = checkpoints or CheckpointCache()
    model_cfg = config["model"]
    init = checkpoints.load(model_cfg["init"]) if model_cfg.get("init") else None
    _refuse_imported_graph(init, "model.init")
    arch = model_cfg.get("arch") or init.arch
    label_set = model_cfg.get("label_set") or (init.label_set if init else "cityscapes")
    if init is not None and not model_cfg.get("arch"):
        label_set = init.label_set
    if label_set not in LABEL_SETS:
        raise ValueError(f"model.label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    kwargs = dict(init.arch_kwargs) if init is not None and arch == init.arch else {}
    kwargs.update(model_cfg.get("kwargs") or {})
    kwargs.setdefault("num_classes", LABEL_SETS[label_set].num_classes)
    base = build_model(arch, **kwargs)
    memory_cfg = dict(config["memory"]) if config.get("memory") else None
    if init is not None:
        if init.memory and memory_cfg:
            model = build_from_checkpoint(init)
        else:
            # A memory checkpoint initialises a per-frame student with its base weights.
            _load_matching(
                base, strip_memory_from_checkpoint(init).state_dict, str(model_cfg["init"])
            )
            model = base
    else:
        model = base
    memory_settings = None
    if memory_cfg:
        freeze_base = bool(memory_cfg.pop("freeze_base", True))
        if not getattr(model, "is_temporal", False):
            from video_seg_ros.models.memory import wrap_with_memory

            model = wrap_with_memory(model, memory_cfg)
        model.freeze_base(freeze_base)  # no gradients into the base, its BatchNorm in eval mode
        memory_settings = model.config.to_dict()
    num_outputs = int(kwargs["num_classes"])
    size = (
        config["data"].get("val_resize")
        or config["data"].get("resize")
        or (
            (init.preprocessing.input_width, init.preprocessing.input_height)
            if init
            else (1024, 512)
        )
    )
    meta = {
        "arch": arch,
        "arch_kwargs": kwargs,
        "label_set": label_set,
        "class_names": list(LABEL_SETS[label_set].names),
        "palette": [list(c) for c in LABEL_SETS[label_set].palette],
        "output_to_class": list(init.output_to_class)
        if init is not None and init.num_outputs == num_outputs
        else output_to_class_for(label_set, num_outputs),
        "preprocessing": _preprocessing_from(model_cfg.get("preprocessing"), init, size),
        "memory": memory_settings,
        "init": str(model_cfg["init"]) if model_cfg.get("init") else None,
    }
    return model, meta


def _load_matching(model: nn.Module, state: dict, origin: str) -> None:
    """Load ``state``; tensors whose shape differs (a new classifier for another label set) keep
    their fresh initialisation, and the skipped names are reported."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise ValueError(
            f"model.init {origin} does not fit model.arch/kwargs: "
            f"{len(missing)} missing and {len(unknown)} unexpected tensors "
            f"(e.g. {(missing + unknown)[:3]}); check model.kwargs against the checkpoint"
        )
    skipped = [k for k, v in state.items() if own[k].shape != v.shape]
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    if skipped:
        print(
            f"model.init: {len(skipped)} tensors differ in shape and start fresh: "
            f"{', '.join(skipped[:6])}" + (" ..." if len(skipped) > 6 else ""),
            flush=True,
        )


def build_teacher(
    config: dict, student_meta: dict, checkpoints: CheckpointCache | None = None
) -> tuple[nn.Module, Preprocessing, list[int], list[int]] | None:
    """Teacher model (eval, no gradients), its preprocessing, and the student channels that are
    distilled with the teacher channel of the same published class id for each, or None without a
    teacher section.

    A student "no class" channel (published as 255, e.g. the Cityscapes background of ESPNet's
    20-output weights) that the teacher lacks is left out of the pixel-wise distillation; a real
    class the teacher lacks is an error (different label sets). ``checkpoints``: as for
    :func:`build_student`.
    """
    teacher_cfg = config.get("teacher")
    if not teacher_cfg:
        return None
    unknown = set(teacher_cfg) - {"checkpoint", "arch", "kwargs", "preprocessing", "input_size"}
    if unknown:
        raise ValueError(
            f"unknown teacher setting(s) {sorted(unknown)}; known: checkpoint, arch, kwargs, "
            "preprocessing, input_size"
        )
    if teacher_cfg.get("checkpoint"):
        checkpoint = (checkpoints or CheckpointCache()).load(teacher_cfg["checkpoint"])
        _refuse_imported_graph(checkpoint, "teacher.checkpoint")
        model = build_from_checkpoint(checkpoint)
        preprocessing, output_to_class = checkpoint.preprocessing, checkpoint.output_to_class
    elif teacher_cfg.get("arch"):
        model = build_model(teacher_cfg["arch"], **(teacher_cfg.get("kwargs") or {}))
        preprocessing = _preprocessing_from(teacher_cfg.get("preprocessing"), None, (1024, 512))
        output_to_class = output_to_class_for(student_meta["label_set"], model.num_classes)
    else:
        raise ValueError("teacher needs 'checkpoint: PATH' (project format) or 'arch' (+ kwargs)")
    if getattr(model, "is_temporal", False):
        model = model.base  # distillation targets come from the per-frame part
    channel_of_class = {cls: channel for channel, cls in enumerate(output_to_class)}
    student_channels, teacher_channels = [], []
    for channel, cls in enumerate(student_meta["output_to_class"]):
        if cls in channel_of_class:
            student_channels.append(channel)
            teacher_channels.append(channel_of_class[cls])
        elif cls != IGNORE_ID:
            raise ValueError(
                f"the teacher has no output for class id {cls} (student channel {channel}); "
                "distillation needs a teacher trained on the same label set"
            )
    model.eval().requires_grad_(False)
    return model, preprocessing, student_channels, teacher_channels


def _refuse_imported_graph(checkpoint: Checkpoint | None, key: str) -> None:
    if checkpoint is not None and checkpoint.arch == "onnx":
        raise ValueError(
            f"{key} is an imported ONNX graph, which PyTorch cannot run or train; use a "
            "checkpoint of a package or torchvision:NAME architecture (docs/byo_model.md)"
        )


def set_batchnorm_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used, not updated)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
