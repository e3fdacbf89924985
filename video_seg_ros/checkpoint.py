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


#: What every "re-create it" advice names: the tools that write checkpoints.
_RECREATE = "re-create it with `video-seg-import` (published weights) or `video-seg-train`"
_TRAINED_ON = f"{_RECREATE} with the label set the weights were trained on"


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters (library messages span paragraphs)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _unreadable(path: Path, head: bytes, error: Exception) -> CheckpointError:
    """A one-line :class:`CheckpointError` saying why torch could not read ``path`` (``head``: its
    first bytes) and what to do; never torch's own advice to load with ``weights_only=False``."""
    why = _why_unreadable(path, head, error)
    return CheckpointError(f"could not read checkpoint {path}: {why}")


def _why_unreadable(path: Path, head: bytes, error: Exception) -> str:
    import pickle
    import re
    import zipfile

    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)  # the callable a code pickle would run
    pickled = isinstance(error, pickle.UnpicklingError) and (
        found is not None or "Unsupported operand" in text or "Unsupported global" in text
    )
    what = f"a reference to {found.group(1)}" if found else "pickled Python objects"
    refused = (
        f"it holds {what}, not only tensors and plain data: loading it could run code, so it is "
        "refused on purpose (checkpoints are read with weights_only=True). If you trust its "
        "source, save the model's state_dict in the program that made it and convert that with "
        "`video-seg-import`."
    )
    if pickled and found is not None:
        return refused  # before the text check: a protocol-0 pickle is ASCII
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return (
                f"it is truncated or damaged (its zip directory is missing: "
                f"{_one_line(text, 80)}); copy it again or {_RECREATE}."
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(name.endswith("/data.pkl") for name in names):
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return (
                f"it is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl inside; "
                f"it holds {listed or 'nothing'}); pass the checkpoint file itself or {_RECREATE}."
            )
        return (
            f"it is damaged ({type(error).__name__}: {_one_line(text, 120)}); copy it again or "
            f"{_RECREATE}."
        )
    if b"\x00" not in head[:512]:
        try:
            start = head[:512].decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return (
                f"it is a text file, not a checkpoint (it starts with "
                f"{_one_line(start[:40], 60)!r}); pass the .pt file written by "
                "`video-seg-import` or `video-seg-train`."
            )
    if pickled:
        return refused
    if isinstance(error, EOFError) or "truncat" in text.lower():
        return f"it is truncated; copy it again or {_RECREATE}."
    return (
        f"{type(error).__name__}: {_one_line(text, 120)}. It is damaged or not a PyTorch file; "
        f"{_RECREATE}."
    )


def read_checkpoint_data(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line
    :class:`CheckpointError` that says what to do (torch's own text suggests weights_only=False,
    the wrong advice for a file that may run code)."""
    import warnings

    with open(path, "rb") as stream:
        head = stream.read(1024)
    if not head:
        raise CheckpointError(
            f"could not read checkpoint {path}: it is empty (0 bytes), the copy or download was "
            f"cut off; copy it again or {_RECREATE}."
        )
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise _unreadable(path, head, error) from error


def load_checkpoint(path: str | os.PathLike | None) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` and check that its parts agree; raise
    :class:`CheckpointError` with a one-line message that says what to do."""
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
    checkpoint = Checkpoint.from_dict(read_checkpoint_data(resolved), origin=str(resolved))
    validate_checkpoint(checkpoint, str(resolved))
    checkpoint.loaded_from = str(resolved)  # not a field (never saved): for later error messages
    return checkpoint


def validate_checkpoint(checkpoint: Checkpoint, origin: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` when the parts of a checkpoint contradict each other: the
    weights are not a dict of tensors, the model's output count differs from the output -> class
    table, or the class table, palette and label set disagree (a checkpoint of another label set
    whose metadata was edited by hand, or a mix-up of files)."""
    state = checkpoint.state_dict
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{origin}: 'state_dict' is not a dict of tensors; {_RECREATE}.")
    outputs = checkpoint.arch_kwargs.get("num_classes")
    mapped = len(checkpoint.output_to_class)
    if outputs is not None and outputs != mapped:
        raise CheckpointError(
            f"{origin}: the model has {outputs} outputs (arch_kwargs.num_classes) but "
            f"meta.output_to_class maps {mapped}; the weights and the class table are of "
            f"different label sets. {_TRAINED_ON[0].upper()}{_TRAINED_ON[1:]}."
        )
    classes = len(checkpoint.class_names)
    wrong = [c for c in checkpoint.output_to_class if not (0 <= c < classes or c == IGNORE_ID)]
    if wrong:
        raise CheckpointError(
            f"{origin}: meta.output_to_class publishes id {wrong[0]}, but the label set "
            f"{checkpoint.label_set!r} has {classes} classes (0..{classes - 1}, {IGNORE_ID} = "
            f"unlabelled); {_TRAINED_ON}."
        )
    known = LABEL_SETS.get(checkpoint.label_set)
    if known is not None and classes != known.num_classes:
        raise CheckpointError(
            f"{origin}: meta.label_set is {checkpoint.label_set!r} ({known.num_classes} classes) "
            f"but meta.class_names lists {classes}; {_TRAINED_ON}."
        )
    if len(checkpoint.palette) < classes:
        raise CheckpointError(
            f"{origin}: meta.palette has {len(checkpoint.palette)} colours for {classes} classes; "
            f"{_RECREATE}."
        )


def check_weights_fit(
    checkpoint: Checkpoint, expected: dict[str, tuple[int, ...]], origin: str = "the checkpoint"
) -> None:
    """Raise a one-line :class:`CheckpointError` when the stored weights do not fit the model the
    metadata describes (``expected``: parameter name -> shape of that model), e.g. weights
    trained for another label set (another number of classes) or another architecture."""
    stored = checkpoint.state_dict
    missing = [k for k in expected if k not in stored and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in stored if k not in expected]
    mismatched = [
        k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    outputs = checkpoint.arch_kwargs.get("num_classes")
    if mismatched:
        key = mismatched[-1]  # the classifier is last: the likeliest witness of a label-set mix-up
        first = f"{key} is {tuple(stored[key].shape)} but the model needs {tuple(expected[key])}"
    else:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
    with_outputs = f" with {outputs} outputs" if outputs is not None else ""
    raise CheckpointError(
        f"{origin}: the weights do not fit {checkpoint.model_name}{with_outputs} ({first}; "
        f"{len(mismatched)} mismatched, {len(missing)} missing, {len(unexpected)} unexpected "
        "tensors): they were made for another label set or architecture. Convert the weights with "
        "`video-seg-import` and the label set they were trained on (--preset / --label-set)."
    )


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


def randomise_memory_weights(
    checkpoint: Checkpoint, seed: int = 0, scale: float = 1.0
) -> Checkpoint:
    """A copy of a memory checkpoint whose memory layers hold Gaussian noise (``scale`` x N(0, 1),
    from ``seed``); the base is untouched. For benchmarks and tests: a freshly added memory's zero
    gate leaves labels unchanged and lets a graph compiler fold part of the memory away, random
    weights make every memory layer work and change the labels."""
    if not checkpoint.memory:
        raise ValueError("this checkpoint has no memory; add one with add_memory_to_checkpoint()")
    generator = torch.Generator().manual_seed(seed)
    result = copy.copy(checkpoint)
    result.state_dict = {
        key: torch.randn(value.shape, generator=generator) * scale
        if not key.startswith("base.") and value.is_floating_point()
        else value
        for key, value in checkpoint.state_dict.items()
    }
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
