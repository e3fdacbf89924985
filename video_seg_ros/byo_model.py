"""Bring your own model: a user's ONNX graph or a torchvision network as a package checkpoint.

``video-seg-import --onnx FILE`` (:func:`import_onnx`) and ``video-seg-import --arch
torchvision:NAME`` (:func:`import_torchvision`) write the one checkpoint format
(:mod:`video_seg_ros.checkpoint`), so the node, ``video-seg-eval``, the demo and the label info
work as they do for the package's own architectures (docs/byo_model.md).

What an ONNX checkpoint needs besides the graph comes from the graph's ``video_seg_ros.*``
metadata_props when present (``video-seg-export`` writes them: :func:`graph_metadata`), else from
the caller; an explicit argument wins over the metadata:

- the class table: a label set the package knows (``cityscapes``, ``camvid``) or a YAML table
  (:func:`video_seg_ros.labels.read_class_table`), with the model's id for "no class";
- preprocessing: input size, channel order, mean, std, scale
  (:class:`~video_seg_ros.checkpoint.Preprocessing`);
- the output: ``logits`` or ``probabilities`` (N, C, h, w) at any output stride, or ``class_ids``
  (N, h, w).

A graph the package cannot feed is refused with one line that says what to change. No ROS here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from video_seg_ros.checkpoint import Checkpoint, Preprocessing, file_sha256
from video_seg_ros.labels import IGNORE_ID, LABEL_SETS, LabelSet, default_colour, read_class_table

#: What ``--output-kind`` and the ``video_seg_ros.output`` metadata accept.
OUTPUT_KINDS = ("logits", "probabilities", "class_ids")
#: Version of the metadata layout :func:`graph_metadata` writes.
METADATA_FORMAT = 1
#: torchvision-style ImageNet statistics: the default preprocessing of torchvision networks.
IMAGENET = {
    "channel_order": "rgb",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "scale": 1.0,
}
#: Network input of torchvision networks when no size is given (width, height).
DEFAULT_TORCHVISION_SIZE = (1024, 512)

_REEXPORT = "export it again (torch.onnx.export(..., dynamo=False)) or copy the file again"


class ModelImportError(RuntimeError):
    """A model cannot become a checkpoint; the one-line message says what to change."""


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """Class names and colours plus the model's output id for "no class" (published as 255)."""

    label_set: LabelSet
    ignore_id: int | None = None
    origin: str = ""

    @property
    def size(self) -> int:
        return self.label_set.num_classes


def class_table(
    label_set: str | None = None, classes: str | Path | None = None, ignore_id: int | None = None
) -> ClassTable | None:
    """The table named by ``label_set`` or read from the YAML file ``classes`` (None: neither
    given);
    ``ignore_id`` overrides the file's."""
    if label_set and classes:
        raise ModelImportError("give either --label-set or --classes, not both")
    if classes:
        try:
            table, file_ignore = read_class_table(classes)
        except ValueError as error:
            raise ModelImportError(str(error)) from None
        return ClassTable(
            table,
            file_ignore if ignore_id is None else ignore_id,
            f"class table {Path(classes).name}",
        )
    if label_set:
        if label_set not in LABEL_SETS:
            raise ModelImportError(
                f"unknown label set {label_set!r}; use one of "
                f"{', '.join(sorted(LABEL_SETS))} or a class table (--classes TABLE.yaml)"
            )
        return ClassTable(LABEL_SETS[label_set], ignore_id, f"label set {label_set}")
    return None


def output_mapping(table: ClassTable, channels: int, what: str) -> list[int]:
    """Model output channel -> published id: channel ``i`` is class ``i``; the table's
    ``ignore_id``
    (possibly one channel past the classes, as ESPNet's background) is unlabelled."""
    n = table.size
    if channels == n or (channels == n + 1 and table.ignore_id == n):
        return [IGNORE_ID if c == table.ignore_id else c for c in range(channels)]
    hint = (
        f"pass --ignore-id {n} if channel {n} means 'no class' (as ESPNet's background), or "
        if channels == n + 1
        else ""
    )
    raise ModelImportError(
        f"{what} has {channels} output channels but the {table.origin} has {n} classes; "
        f"{hint}give a class table with {channels} classes (--classes TABLE.yaml)"
    )


def _preprocessing(
    base: dict[str, Any], size: tuple[int, int] | None, overrides: dict[str, Any]
) -> Preprocessing:
    fields = {f.name for f in dataclasses.fields(Preprocessing)}
    values = {k: v for k, v in base.items() if k in fields}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if size is not None:
        values["input_width"], values["input_height"] = int(size[0]), int(size[1])
    for key in ("mean", "std"):
        value = values.get(key)
        if value is not None and (
            len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)
        ):
            raise ModelImportError(
                f"{key} must be three numbers (one per channel), got {values[key]!r}"
            )
    if any(float(s) == 0.0 for s in values.get("std", [1.0])):
        raise ModelImportError("std must not be 0 (the frame is divided by it)")
    try:
        return Preprocessing(**values)
    except (TypeError, ValueError) as error:
        raise ModelImportError(f"invalid preprocessing: {error}") from None


# ---- ONNX ---------------------------------------------------------------------------------------
def import_onnx(
    path: str | Path,
    *,
    label_set: str | None = None,
    classes: str | Path | None = None,
    ignore_id: int | None = None,
    size: tuple[int, int] | None = None,
    channel_order: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    scale: float | None = None,
    interpolation: str | None = None,
    output_kind: str | None = None,
    output_name: str | None = None,
    command: str | None = None,
) -> Checkpoint:
    """An ONNX file as a :class:`Checkpoint` (``arch: onnx``, the file's bytes in the state_dict).

    The adapted graph (:func:`~video_seg_ros.backends.onnx_graph.adapt_graph`) runs once in
    OpenVINO
    fp32 before the checkpoint is made, so a graph that cannot run is refused here, not in the
    node.
    Raises :class:`ModelImportError`.
    """
    from video_seg_ros.backends import BackendError
    from video_seg_ros.backends.graph_check import run_with_openvino
    from video_seg_ros.backends.onnx_graph import (
        MIN_OPSET,
        GraphError,
        adapt_graph,
        graph_inputs,
        graph_outputs,
        import_onnx_package,
        opset_of,
        output_info,
        parse_graph,
        read_metadata,
    )
    from video_seg_ros.models.onnx_graph import graph_tensor

    path = Path(path)
    if not path.is_file():
        raise ModelImportError(
            f"ONNX file not found: {path}; pass the exported .onnx file with --onnx"
        )
    data = path.read_bytes()
    try:
        model = parse_graph(data, path.name, _REEXPORT)
        onnx = import_onnx_package()
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            model = onnx.load(
                str(path)
            )  # weights in files beside it: the checkpoint holds them all
            data = model.SerializeToString()
    except (GraphError, ValueError, OSError) as error:
        raise ModelImportError(str(error)) from None
    if opset_of(model) < MIN_OPSET:
        raise ModelImportError(
            f"{path.name} uses opset {opset_of(model)}; export it with opset >= "
            f"{MIN_OPSET} (torch.onnx.export(..., opset_version=17))"
        )
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        listed = ", ".join(i.describe() for i in inputs)
        raise ModelImportError(
            f"{path.name} has {len(inputs)} inputs ({listed}); the node feeds one image: "
            "export a graph whose only input is the (N, 3, H, W) image (other inputs as "
            "constants)"
        )
    image = inputs[0]
    if not image.is_float:
        raise ModelImportError(
            f"input {image.describe()} is not a float tensor; the engine feeds normalised "
            "float32 images: export with a float (N, 3, H, W) input and give the "
            "normalisation with --mean/--std/--scale"
        )
    if image.dims is None or len(image.dims) != 4:
        rank = "unknown" if image.dims is None else len(image.dims)
        raise ModelImportError(
            f"input {image.describe()} has rank {rank}; the engine feeds (N, 3, H, W) "
            "images: export with a 4-D NCHW input"
        )
    if image.dims[1] not in (None, 3):
        raise ModelImportError(
            f"input {image.describe()} has {image.dims[1]} channels on axis 1; the engine "
            "feeds 3-channel NCHW images (an NHWC graph needs a transpose before export)"
        )
    meta = read_metadata(model)
    meta_pre = meta.get("preprocessing") or {}
    if not isinstance(meta_pre, dict):
        raise ModelImportError(
            f"{path.name}: metadata video_seg_ros.preprocessing is not a JSON object; fix "
            "or remove it, or pass the preprocessing flags"
        )
    size = _input_size(image, size, meta_pre, path.name)

    outputs = graph_outputs(model)
    name = output_name or meta.get("output_name") or outputs[0].name
    if name not in [o.name for o in outputs]:
        raise ModelImportError(
            f"{path.name} has no output {name!r}; its outputs: "
            f"{', '.join(o.describe() for o in outputs)} (--output-name)"
        )
    out = output_info(model, name, size)
    kind = (
        output_kind
        or meta.get("output")
        or (
            "class_ids"
            if not out.is_float or (out.dims is not None and len(out.dims) == 3)
            else "logits"
        )
    )
    kind = kind.replace("-", "_")
    if kind not in OUTPUT_KINDS:
        raise ModelImportError(
            f"unknown output kind {kind!r}; use logits, probabilities or class-ids"
        )
    want_rank = 3 if kind == "class_ids" else 4
    if out.dims is not None and len(out.dims) != want_rank:
        other = (
            "--output-kind logits (or probabilities) for (N, C, H, W) scores"
            if kind == "class_ids"
            else "--output-kind class-ids for an (N, H, W) map of class ids"
        )
        raise ModelImportError(
            f"output {out.describe()} has rank {len(out.dims)}, but {kind} are "
            f"{'(N, H, W)' if want_rank == 3 else '(N, C, H, W)'}; pass {other}"
        )

    table = class_table(label_set, classes, ignore_id)
    meta_mapping = None
    if table is None:
        table, meta_mapping = _table_from_metadata(meta, ignore_id, path.name)
    try:
        adapted = adapt_graph(
            data, kind, name, size, table.size if kind == "class_ids" else None, path.name
        )
        try:
            logits = run_with_openvino(adapted, size)
            channels = int(logits.shape[1])
        except GraphError:
            raise
        except BackendError:  # OpenVINO missing: the graph's static shape must do
            channels = _static_channels(out, kind, table.size, path.name)
    except GraphError as error:
        raise ModelImportError(str(error)) from None
    if kind == "class_ids":
        mapping = [IGNORE_ID if c == table.ignore_id else c for c in range(table.size)] + [
            IGNORE_ID
        ]
    elif meta_mapping is not None and len(meta_mapping) == channels:
        mapping = meta_mapping
    else:
        mapping = output_mapping(table, channels, f"output {out.describe()}")

    preprocessing = _preprocessing(
        meta_pre,
        size,
        {
            "channel_order": channel_order,
            "mean": mean,
            "std": std,
            "scale": scale,
            "interpolation": interpolation,
        },
    )
    source = {
        "tool": "video-seg-import",
        "format": "onnx",
        "weights_file": path.name,
        "sha256": file_sha256(path),
        "command": command or "",
        "input": image.name,
        "output": name,
        "classes": table.origin,
    }
    for key in ("model", "source"):
        if meta.get(key):
            source[f"exported_{key}"] = meta[key]  # provenance of a graph video-seg-export wrote
    arch_kwargs = {"num_classes": len(mapping), "output": kind, "output_name": name}
    return Checkpoint(
        arch="onnx",
        arch_kwargs=arch_kwargs,
        state_dict={"graph": graph_tensor(data)},
        label_set=table.label_set.name,
        class_names=list(table.label_set.names),
        palette=[list(c) for c in table.label_set.palette],
        output_to_class=mapping,
        preprocessing=preprocessing,
        source=source,
    )


def _input_size(image, size, meta_pre, origin) -> tuple[int, int]:
    height, width = image.dims[2], image.dims[3]
    given = size or (
        (int(meta_pre["input_width"]), int(meta_pre["input_height"]))
        if meta_pre.get("input_width") and meta_pre.get("input_height")
        else None
    )
    if given is None:
        if height is None or width is None:
            raise ModelImportError(
                f"input {image.describe()} has a dynamic height or width; pass --size WxH "
                "(the input size the network was trained for)"
            )
        return width, height
    for axis, fixed, wanted in (("width", width, given[0]), ("height", height, given[1])):
        if fixed is not None and fixed != wanted:
            raise ModelImportError(
                f"{origin}: the graph's input {axis} is fixed at {fixed} "
                f"({image.describe()}) but {given[0]}x{given[1]} was asked for; pass "
                f"--size {width or given[0]}x{height or given[1]} or leave --size out"
            )
    return int(given[0]), int(given[1])


def _table_from_metadata(
    meta: dict, ignore_id: int | None, origin: str
) -> tuple[ClassTable, list[int] | None]:
    names = meta.get("class_names")
    label_set = meta.get("label_set")
    if names is None and label_set in LABEL_SETS:
        names = list(LABEL_SETS[label_set].names)
        meta = {
            **meta,
            "palette": meta.get("palette") or [list(c) for c in LABEL_SETS[label_set].palette],
        }
    if names is None:
        raise ModelImportError(
            f"{origin} names no classes (no video_seg_ros.* metadata); pass --label-set "
            f"{'|'.join(sorted(LABEL_SETS))} or --classes TABLE.yaml (names, colours, "
            "ignore id)"
        )
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or not 0 < len(names) <= IGNORE_ID
    ):
        raise ModelImportError(
            f"{origin}: metadata video_seg_ros.class_names must be a list of 1..255 names"
        )
    palette = meta.get("palette") or [default_colour(i) for i in range(len(names))]
    if (
        not isinstance(palette, list)
        or len(palette) != len(names)
        or not all(isinstance(c, list) and len(c) == 3 for c in palette)
    ):
        raise ModelImportError(
            f"{origin}: metadata video_seg_ros.palette must hold one [r, g, b] per class"
        )
    mapping = meta.get("output_to_class")
    if mapping is not None and (
        not isinstance(mapping, list)
        or not all(isinstance(c, int) and (0 <= c < len(names) or c == IGNORE_ID) for c in mapping)
    ):
        raise ModelImportError(
            f"{origin}: metadata video_seg_ros.output_to_class must map every channel to "
            f"a class id below {len(names)} or to {IGNORE_ID}"
        )
    if ignore_id is None:
        ignore_id = meta.get("ignore_id")
    else:
        mapping = None  # an explicit --ignore-id redraws the mapping
    table = LabelSet(
        name=str(label_set or "custom"),
        names=tuple(names),
        palette=tuple(tuple(c) for c in palette),
    )
    return ClassTable(table, ignore_id, f"class table in {origin}'s metadata"), mapping


def _static_channels(out, kind: str, classes: int, origin: str) -> int:
    if kind == "class_ids":
        return classes + 1
    if out.dims is not None and out.dims[1] is not None:
        return int(out.dims[1])
    raise ModelImportError(
        f"{origin}: the number of output channels is not in the graph's shapes and "
        "OpenVINO is not installed to run it once: `pip install openvino==2026.4.1`"
    )


def graph_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    """What ``video-seg-export`` writes into an ONNX file's metadata_props (``video_seg_ros.*``),
    so
    ``video-seg-import --onnx`` rebuilds the checkpoint's labels and preprocessing with no
    flags."""
    return {
        "format": METADATA_FORMAT,
        "model": checkpoint.model_name,
        "label_set": checkpoint.label_set,
        "class_names": list(checkpoint.class_names),
        "palette": [list(map(int, c)) for c in checkpoint.palette],
        "output_to_class": [int(c) for c in checkpoint.output_to_class],
        "output": "logits",
        "output_name": "logits",
        "preprocessing": asdict(checkpoint.preprocessing),
        "source": checkpoint.source or None,
    }


# ---- torchvision --------------------------------------------------------------------------------
def import_torchvision(
    arch: str,
    *,
    label_set: str | None = None,
    classes: str | Path | None = None,
    ignore_id: int | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    size: tuple[int, int] | None = None,
    channel_order: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    scale: float | None = None,
    interpolation: str | None = None,
    command: str | None = None,
) -> Checkpoint:
    """A torchvision segmentation network (``arch`` = ``torchvision:NAME``) as a
    :class:`Checkpoint`:
    random init, or ``weights`` (a state_dict read with ``weights_only=True``). Preprocessing
    defaults to torchvision's ImageNet statistics at 1024x512. Raises :class:`ModelImportError`."""
    from video_seg_ros.models import build_model
    from video_seg_ros.models.torchvision_models import PREFIX, TORCHVISION_SEGMENTERS

    name = arch[len(PREFIX) :] if arch.startswith(PREFIX) else arch
    if name not in TORCHVISION_SEGMENTERS:
        raise ModelImportError(
            f"unknown torchvision network {arch!r}; use one of "
            f"{', '.join(PREFIX + n for n in TORCHVISION_SEGMENTERS)}"
        )
    table = class_table(label_set, classes, ignore_id)
    if table is None:
        raise ModelImportError(
            "name the classes: --label-set "
            + "|".join(sorted(LABEL_SETS))
            + " or --classes TABLE.yaml"
        )
    channels = int(num_classes or table.size)
    mapping = output_mapping(table, channels, f"torchvision:{name} with --num-classes {channels}")
    model = build_model(PREFIX + name, num_classes=channels)
    source = {
        "tool": "video-seg-import",
        "format": "torchvision",
        "arch": PREFIX + name,
        "command": command or "",
        "classes": table.origin,
    }
    if weights is not None:
        _load_torchvision_weights(model, Path(weights), PREFIX + name)
        source.update({"weights_file": Path(weights).name, "sha256": file_sha256(weights)})
    else:
        source["weights_file"] = "random init"
    preprocessing = _preprocessing(
        IMAGENET,
        size or DEFAULT_TORCHVISION_SIZE,
        {
            "channel_order": channel_order,
            "mean": mean,
            "std": std,
            "scale": scale,
            "interpolation": interpolation,
        },
    )
    return Checkpoint(
        arch=PREFIX + name,
        arch_kwargs={"num_classes": channels},
        state_dict=model.state_dict(),
        label_set=table.label_set.name,
        class_names=list(table.label_set.names),
        palette=[list(c) for c in table.label_set.palette],
        output_to_class=mapping,
        preprocessing=preprocessing,
        source=source,
    )


def _load_torchvision_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelImportError(
            f"weights file not found: {path}; pass a torchvision state_dict with --weights"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle of objects, foreign format ...
        raise ModelImportError(
            f"could not read {path} as a state_dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelImportError(
            f"{path} holds no state_dict (a dict of tensors); save one with "
            "torch.save(model.state_dict(), path)"
        )
    # DataParallel's prefix goes; the auxiliary head (torchvision's aux_loss training) is not
    # built.
    state = {re.sub(r"^module\.", "", k): v for k, v in data.items()}
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        found = (("missing", missing), ("unexpected", unexpected), ("shapes differ", mismatched))
        parts = [
            f"{title}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
            for title, keys in found
            if keys
        ]
        raise ModelImportError(
            f"{path.name} does not fit {what}: {'; '.join(parts)}; check the network name "
            "and --num-classes against the weights"
        )
    model.load_state_dict(state, strict=True)
