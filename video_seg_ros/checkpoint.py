"""The project's one checkpoint format: weights plus everything needed to use them.

A checkpoint file is a plain ``dict`` written by :func:`torch.save` and read back with
``torch.load(..., weights_only=True)``, so it holds only tensors, numbers, strings, lists and
dicts::

    {
      "format": "video_seg_ros.checkpoint", "version": 1,
      "arch": "espnet", "arch_kwargs": {"p": 2, "q": 8, "num_classes": 20},
      "state_dict": {...},              # of the whole model (memory wrapper included, if any)
      "meta": {
        "label_set": "cityscapes", "class_names": [...], "palette": [[r, g, b], ...],
        "output_to_class": [0, 1, ..., 18, 255],   # model channel -> published id (255 = none)
        "preprocessing": {"input_height": 512, "input_width": 1024, "channel_order": "bgr",
                          "mean": [...], "std": [...], "scale": 0.00392,
                          "interpolation": "linear"},
        "memory": None or {...},        # local-memory-attention settings (models/memory.py)
        "source": {...},                # where the weights came from (import, training run)
        "training": None or {...},      # the training config, for checkpoints we trained
      },
    }

Preprocessing of a uint8 frame, in ``channel_order``: ``x = (pixel - mean) / std * scale`` after
resizing to ``input_width`` x ``input_height``. This one formula covers every source we load:
ESPNet (BGR, 0..255 mean/std, then /255), CGNet (RGB minus mean, std 1, scale 1) and torchvision
style ImageNet statistics (mean*255, std*255, scale 1).
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from video_seg_ros.labels import IGNORE_ID, LABEL_SETS

FORMAT_NAME = "video_seg_ros.checkpoint"
FORMAT_VERSION = 1

#: The model embedded in the package, trained on synthetic sequences (see its model card).
DEFAULT_CHECKPOINT_NAME = "default_model.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not in the project format; the message says what to
    do."""


@dataclass
class Preprocessing:
    """How a uint8 frame becomes the model's input tensor (see the module docstring)."""

    input_height: int
    input_width: int
    channel_order: str = "rgb"
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    scale: float = 1.0 / 255.0
    interpolation: str = "linear"

    def __post_init__(self):
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if self.interpolation not in ("linear", "area", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.input_height <= 0 or self.input_width <= 0:
            raise ValueError("input size must be positive")


@dataclass
class Checkpoint:
    """A model's architecture, weights and metadata, as stored on disk."""

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    label_set: str
    class_names: list[str]
    palette: list[list[int]]
    output_to_class: list[int]
    preprocessing: Preprocessing
    memory: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    @classmethod
    def for_label_set(
        cls,
        arch: str,
        arch_kwargs: dict[str, Any],
        state_dict: dict[str, torch.Tensor],
        label_set: str,
        preprocessing: Preprocessing,
        **extra: Any,
    ) -> "Checkpoint":
        """A checkpoint whose class names, palette and output mapping come from a named label set.

        ``arch_kwargs["num_classes"]`` outputs are published through :func:`output_to_class_for`;
        ``extra`` sets ``memory``, ``source`` or ``training``.
        """
        labels = LABEL_SETS[label_set]
        return cls(
            arch=arch,
            arch_kwargs=dict(arch_kwargs),
            state_dict=state_dict,
            label_set=label_set,
            class_names=list(labels.names),
            palette=[list(c) for c in labels.palette],
            output_to_class=output_to_class_for(label_set, int(arch_kwargs["num_classes"])),
            preprocessing=preprocessing,
            **extra,
        )

    @property
    def num_outputs(self) -> int:
        return len(self.output_to_class)

    @property
    def model_name(self) -> str:
        """Short human-readable name, e.g. ``espnet(p=2,q=8)+memory``; ``onnx:<file stem>`` for an
        imported ONNX graph."""
        if self.arch == "onnx" and self.source.get("weights_file"):
            kind = self.arch_kwargs.get("output", "logits")
            suffix = "" if kind == "logits" else f"({kind})"
            return f"onnx:{Path(self.source['weights_file']).stem}{suffix}"
        args = ",".join(
            f"{k}={v}" for k, v in sorted(self.arch_kwargs.items()) if k != "num_classes"
        )
        name = f"{self.arch}({args})" if args else self.arch
        return name + ("+memory" if self.memory else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "meta": {
                "label_set": self.label_set,
                "class_names": list(self.class_names),
                "palette": [list(map(int, c)) for c in self.palette],
                "output_to_class": [int(c) for c in self.output_to_class],
                "preprocessing": asdict(self.preprocessing),
                "memory": copy.deepcopy(self.memory),
                "source": copy.deepcopy(self.source),
                "training": copy.deepcopy(self.training),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> "Checkpoint":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise CheckpointError(
                f"{origin} is not a video_seg_ros checkpoint (no 'format': '{FORMAT_NAME}' "
                "entry). "
                "If it is a published state_dict, convert it first with `video-seg-import`."
            )
        if data.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{origin} has checkpoint format version {data.get('version')!r}; this package "
                "reads "
                f"version {FORMAT_VERSION}. Re-export it with a matching video_seg_ros."
            )
        try:
            meta = data["meta"]
            return cls(
                arch=data["arch"],
                arch_kwargs=dict(data["arch_kwargs"]),
                state_dict=data["state_dict"],
                label_set=meta["label_set"],
                class_names=list(meta["class_names"]),
                palette=[list(c) for c in meta["palette"]],
                output_to_class=list(meta["output_to_class"]),
                preprocessing=Preprocessing(**meta["preprocessing"]),
                memory=meta.get("memory"),
                source=meta.get("source") or {},
                training=meta.get("training"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{origin} is an incomplete or damaged checkpoint: {error!r}. "
                "Re-create it with `video-seg-import` or `video-seg-train`."
            ) from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename), so a crash never leaves half a
        checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)
        return path


def default_checkpoint_path() -> Path:
    """Path of the model embedded in the package."""
    return Path(str(resources.files("video_seg_ros") / "resources" / DEFAULT_CHECKPOINT_NAME))


def resolve_checkpoint_path(path: str | os.PathLike | None) -> Path:
    """``None``, ``""`` or ``"default"`` mean the embedded default model."""
    if path is None or str(path) in ("", "default"):
        return default_checkpoint_path()
    return Path(os.path.expanduser(str(path)))


def load_checkpoint(path: str | os.PathLike | None) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` with advice."""
    resolved = resolve_checkpoint_path(path)
    if not resolved.is_file():
        raise CheckpointError(
            f"checkpoint not found: {resolved}. Pass an existing file (CLI --checkpoint, node "
            "parameter 'checkpoint'), 'default' for the embedded model, or convert published "
            "weights with `video-seg-import`."
        )
    if resolved.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{resolved} is an ONNX graph, not a checkpoint: import it first with "
            "`video-seg-import --onnx "
            f"{resolved} -o model.pt` (class table and preprocessing from its metadata or flags; "
            "docs/byo_model.md) and pass model.pt."
        )
    try:
        data = torch.load(resolved, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"could not read checkpoint {resolved}: {type(error).__name__}: {str(error)[:200]}. "
            "The file is damaged or not a PyTorch file; re-create it with `video-seg-import` or "
            "`video-seg-train`."
        ) from error
    return Checkpoint.from_dict(data, origin=str(resolved))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_class_lookup(output_to_class: list[int], device=None) -> torch.Tensor:
    """uint8 tensor mapping a model output channel to its published id (out-of-range -> 255)."""
    return torch.tensor(
        [c if 0 <= c < 256 else IGNORE_ID for c in output_to_class],
        dtype=torch.uint8,
        device=device,
    )


def output_to_class_for(label_set: str, num_outputs: int) -> list[int]:
    """Map model output channels to published ids: channels past the label set become unlabelled.

    Cityscapes checkpoints with a 20th "background" channel and CamVid ones with a 12th "void"
    channel both publish that channel as :data:`IGNORE_ID`.
    """
    known = LABEL_SETS[label_set].num_classes
    return [c if c < known else IGNORE_ID for c in range(num_outputs)]


class CheckpointCache:
    """The checkpoint files of one run, each read once: :meth:`load` returns the same
    :class:`Checkpoint` for every spelling of the same file (a training run's ``model.init`` and
    ``teacher.checkpoint`` are often one file). For inputs that do not change during the run (not
    the run's own ``last.pt``); treat what it returns as read-only, since callers share it."""

    def __init__(self):
        self._read: dict[Path, Checkpoint] = {}

    def load(self, path: str | os.PathLike | None) -> Checkpoint:
        """:func:`load_checkpoint` of ``path``, read from disk the first time only."""
        key = resolve_checkpoint_path(path).resolve()
        if key not in self._read:
            self._read[key] = load_checkpoint(path)  # the caller's spelling in error messages
        return self._read[key]

    @property
    def files(self) -> list[Path]:
        """The resolved paths read so far, in reading order."""
        return list(self._read)


# ---- checkpoint surgery: a memory added, stripped or re-set -------------------------------------
# Model code is imported inside these functions only: reading and checking a checkpoint needs none.


def add_memory_to_checkpoint(
    checkpoint: Checkpoint, config: dict[str, Any] | None = None, seed: int = 0
) -> Checkpoint:
    """A new :class:`Checkpoint` = the base checkpoint plus a fresh memory (models/memory.py).

    The base weights are kept; the memory layers are initialised (deterministically from ``seed``);
    with the default fusion the new model's output equals the base model's until it is trained.
    """
    from video_seg_ros.models import build_from_checkpoint
    from video_seg_ros.models.memory import MemoryConfig, wrap_with_memory

    if checkpoint.memory:
        raise ValueError(
            "this checkpoint already has a memory; use strip_memory_from_checkpoint() first "
            "to replace it"
        )
    memory_config = MemoryConfig.from_dict(config)
    base = build_from_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = wrap_with_memory(base, memory_config)
    result = copy.copy(checkpoint)
    result.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result.memory = memory_config.to_dict()
    result.source = dict(
        checkpoint.source, memory_added="add_memory_to_checkpoint (untrained memory)"
    )
    return result


def strip_memory_from_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """The base model of a memory checkpoint, as a per-frame checkpoint (memory disabled)."""
    if not checkpoint.memory:
        return checkpoint
    result = copy.copy(checkpoint)
    result.state_dict = {
        k[len("base.") :]: v for k, v in checkpoint.state_dict.items() if k.startswith("base.")
    }
    result.memory = None
    return result


def with_memory_settings(checkpoint: Checkpoint, **overrides: Any) -> Checkpoint:
    """A copy of a memory checkpoint with run-time settings changed (memory_length, window, tile).

    These three change no weights: a longer memory or a wider window can be tried without
    retraining.
    """
    from video_seg_ros.models.memory import MemoryConfig

    if not checkpoint.memory:
        raise ValueError("this checkpoint has no memory; add one with add_memory_to_checkpoint()")
    allowed = {"memory_length", "window", "tile"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(
            f"only {', '.join(sorted(allowed))} can change without retraining, not "
            f"{', '.join(bad)}"
        )
    result = copy.copy(checkpoint)
    result.memory = MemoryConfig.from_dict({**checkpoint.memory, **overrides}).to_dict()
    return result
