"""Users' ONNX graphs: read and check them, keep metadata in them, and adapt them for the backends.

A user's graph keeps its own input and output names and its own output layout. The backends run
graphs with the package's contract (:mod:`.onnx_export`: ``image`` (N, 3, H, W) float32 in,
``logits`` (N, C, H, W) float32 out at the input size), so :func:`adapt_graph` appends the few
nodes that turn one into the other:

- the input is renamed ``image`` (a Cast follows when the graph takes float16 or float64) and its
  height and width are fixed to the checkpoint's input size;
- ``logits`` (NCHW) at a lower resolution (an output stride) are resized bilinearly to the input;
- ``probabilities`` (NCHW) are resized, then their logarithm is taken: the argmax is unchanged and
  the engine's max softmax of log-probabilities is the max probability itself;
- ``class_ids`` (NHW) become one-hot scores (0 for the id, :data:`OFF_SCORE` elsewhere), with one
  extra channel for ids outside the class table (published as unlabelled), resized nearest. Their
  confidence is exactly 1.0 (exp(-1e4) is 0 in float32).

The stored bytes stay the user's file; the adaptation runs when a backend converts the model (the
conversion caches key on the bytes). ``metadata_props`` entries named ``video_seg_ros.*``
(:data:`METADATA_PREFIX`) carry a graph's class table and preprocessing (:func:`read_metadata`,
:func:`write_metadata`). No ROS here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from video_seg_ros.backends import BackendError
from video_seg_ros.backends.onnx_export import IMAGE, LOGITS, export_onnx

#: Prefix of the metadata_props keys this package reads and writes.
METADATA_PREFIX = "video_seg_ros."
#: Score of the classes a class-id output did not pick (0 for the one it picked).
OFF_SCORE = -1.0e4
#: The oldest opset whose Resize takes output sizes (what the adaptation appends).
MIN_OPSET = 11

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


class GraphError(BackendError):
    """An ONNX graph cannot be read or does not fit; the message says what to change."""


def import_onnx_package():
    try:
        import onnx
    except ImportError as error:
        raise GraphError(
            "the onnx package is not installed: `pip install onnx==1.23.2` (pinned in "
            "requirements.txt)"
        ) from error
    return onnx


def parse_graph(data: bytes, origin: str, advice: str):
    """``data`` as an ``onnx.ModelProto``, checked by ``onnx.checker``; :class:`GraphError` (ending
    with ``advice``) when it is truncated, damaged or not ONNX."""
    onnx = import_onnx_package()
    if not data:
        raise GraphError(f"{origin} is empty; {advice}")
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError, and others for foreign files
        raise GraphError(
            f"{origin} is not a readable ONNX graph (truncated or damaged: "
            f"{type(error).__name__}: {first_line(error)}); {advice}"
        ) from error
    if not model.graph.node:
        raise GraphError(
            f"{origin} holds no ONNX graph (no nodes; truncated, or not an ONNX file); {advice}"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # ValidationError, and others from damaged protobufs
        raise GraphError(
            f"{origin} is not a valid ONNX graph ({first_line(error)}); {advice}"
        ) from error
    return model


def first_line(error: BaseException) -> str:
    """The first line of an error's message, at most 240 characters (for one-line reports)."""
    text = str(error).strip()
    return text.splitlines()[0][:240] if text else repr(error)


def opset_of(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, ONNX element type, dims (int, or None when dynamic)."""

    name: str
    elem_type: int
    dims: tuple[int | None, ...] | None  # None: rank unknown

    @property
    def type_name(self) -> str:
        onnx = import_onnx_package()
        return (
            onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).name
            if self.elem_type
            else "unknown"
        )

    @property
    def is_float(self) -> bool:
        return self.elem_type in _FLOAT_TYPES

    def describe(self) -> str:
        dims = (
            "?" if self.dims is None else "x".join("?" if d is None else str(d) for d in self.dims)
        )
        return f"'{self.name}' ({self.type_name}, {dims})"


def _info(value_info) -> TensorInfo:
    tensor = value_info.type.tensor_type
    dims = None
    if tensor.HasField("shape"):
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor.shape.dim
        )
    return TensorInfo(value_info.name, tensor.elem_type, dims)


def graph_inputs(model) -> list[TensorInfo]:
    """The graph's real inputs (initializers that old exporters list as inputs left out)."""
    constants = {t.name for t in model.graph.initializer}
    return [_info(v) for v in model.graph.input if v.name not in constants]


def graph_outputs(model) -> list[TensorInfo]:
    return [_info(v) for v in model.graph.output]


def output_info(model, name: str, input_size: tuple[int, int]) -> TensorInfo:
    """Output ``name`` with shapes inferred for an input of ``input_size`` (W, H)."""
    onnx = import_onnx_package()
    fixed = _with_input_size(model, input_size)
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed)
    except Exception:  # noqa: BLE001 - shape inference is a help, not a requirement
        pass
    return next(_info(v) for v in fixed.graph.output if v.name == name)


def _with_input_size(model, input_size):
    onnx = import_onnx_package()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    (image,) = [v for v in copy.graph.input if v.name in {i.name for i in graph_inputs(copy)}]
    width, height = input_size
    dims = image.type.tensor_type.shape.dim
    for index, value in ((2, height), (3, width)):
        dims[index].Clear()
        dims[index].dim_value = int(value)
    return copy


# ---- metadata -----------------------------------------------------------------------------------
def read_metadata(model) -> dict[str, Any]:
    """The graph's ``video_seg_ros.*`` metadata_props, JSON values decoded, prefix removed."""
    found = {}
    for prop in model.metadata_props:
        if not prop.key.startswith(METADATA_PREFIX):
            continue
        key = prop.key[len(METADATA_PREFIX) :]
        try:
            found[key] = json.loads(prop.value)
        except ValueError:
            found[key] = prop.value  # plain strings may be written without JSON quotes
    return found


def metadata_entries(values: dict[str, Any]) -> dict[str, str]:
    """``{"label_set": "cityscapes", ...}`` -> metadata_props entries (prefixed keys, JSON
    values)."""
    return {
        METADATA_PREFIX + key: json.dumps(value)
        for key, value in values.items()
        if value is not None
    }


def write_metadata(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Set ``video_seg_ros.*`` metadata_props of the ONNX file at ``path`` (other entries kept)."""
    onnx = import_onnx_package()
    model = onnx.load(str(path))
    entries = metadata_entries(values)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


# ---- adaptation ---------------------------------------------------------------------------------
def adapt_graph(
    data: bytes,
    output_kind: str,
    output_name: str,
    input_size: tuple[int, int],
    num_classes: int | None = None,
    origin: str = "the ONNX graph in this checkpoint",
) -> bytes:
    """The graph in ``data`` with the package's contract (module docstring): ``image`` ->
    ``logits``.

    ``num_classes``: the class table's size, for class-id outputs (ids >= it are unlabelled).
    """
    import_onnx_package()
    from onnx import TensorProto, helper, numpy_helper

    model = parse_graph(
        data,
        origin,
        "import the ONNX file again with `video-seg-import --onnx FILE -o CHECKPOINT`",
    )
    if opset_of(model) < MIN_OPSET:
        raise GraphError(
            f"{origin} uses opset {opset_of(model)}; export it with opset >= {MIN_OPSET} "
            "(torch.onnx.export(..., opset_version=17))"
        )
    (image,) = graph_inputs(model)
    width, height = input_size
    model = _with_input_size(model, input_size)
    graph = model.graph
    out = output_info(model, output_name, input_size)
    # Tensors already called "image" (other than a float input of that name) or "logits" step
    # aside;
    # no other tensor is renamed, so references from subgraphs stay valid.
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    input_name = image.name
    keep_input = image.elem_type == TensorProto.FLOAT and input_name == IMAGE
    for name in (IMAGE, LOGITS):
        if name in taken and not (name == IMAGE and keep_input):
            _rename(graph, name, f"{name}__vsr")
            input_name = f"{name}__vsr" if input_name == name else input_name
            output_name = f"{name}__vsr" if output_name == name else output_name
    nodes, constants = [], []

    def constant(name, array):
        constants.append(numpy_helper.from_array(np.asarray(array), f"vsr_{name}"))
        return f"vsr_{name}"

    def add(op, inputs, name, **attributes):
        nodes.append(
            helper.make_node(op, inputs, [f"vsr_{name}"], name=f"vsr_{name}", **attributes)
        )
        return f"vsr_{name}"

    # Input: "image", float32, with the graph's batch dimension and the fixed height and width; an
    # Identity (a Cast for float16/float64 graphs) hands it to the graph's own input name.
    if input_name != IMAGE:
        original = next(v for v in graph.input if v.name == input_name)
        if image.elem_type == TensorProto.FLOAT:
            handover = helper.make_node("Identity", [IMAGE], [input_name], name="vsr_input")
        else:
            handover = helper.make_node(
                "Cast", [IMAGE], [input_name], name="vsr_input", to=image.elem_type
            )
        graph.node.insert(0, handover)
        original.name = IMAGE
        original.type.tensor_type.elem_type = TensorProto.FLOAT
    spatial = out.dims[-2:] if out.dims is not None else (None, None)
    needs_resize = tuple(spatial) != (height, width)

    def resized(tensor, mode):
        if not needs_resize:
            return tensor
        shape = add("Shape", [tensor], f"{mode}_shape")
        leading = add(
            "Slice", [shape, constant("start", [0]), constant("two", [2])], f"{mode}_leading"
        )
        target = constant("size", np.array([height, width], np.int64))
        sizes = add("Concat", [leading, target], f"{mode}_sizes", axis=0)
        settings = (
            {"coordinate_transformation_mode": "half_pixel"}
            if mode == "linear"
            else {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        )
        # Opsets 11-12 require a roi input (unused by these modes); later ones take "" for it.
        roi = "" if opset_of(model) >= 13 else constant("roi", np.zeros(0, np.float32))
        return add("Resize", [tensor, roi, "", sizes], f"{mode}_resize", mode=mode, **settings)

    if output_kind == "class_ids":
        if out.dims is not None and len(out.dims) != 3:
            raise GraphError(
                f"output {out.describe()} is not class ids (N, H, W); pass --output-kind "
                "logits or probabilities for (N, C, H, W) scores"
            )
        if num_classes is None:
            raise ValueError("class-id outputs need num_classes")
        ids = add("Cast", [output_name], "ids", to=TensorProto.INT64)
        negative = add("Less", [ids, constant("zero", np.array(0, np.int64))], "negative")
        below = add("Less", [ids, constant("classes", np.array(num_classes, np.int64))], "below")
        inside = add("And", [add("Not", [negative], "not_negative"), below], "inside")
        unlabelled = constant("unlabelled", np.array(num_classes, np.int64))
        channel = add("Where", [inside, ids, unlabelled], "channel")
        depth = constant("depth", np.array(num_classes + 1, np.int64))
        values = constant("values", np.array([OFF_SCORE, 0.0], np.float32))
        scores = add("OneHot", [channel, depth, values], "one_hot", axis=1)
        result = resized(scores, "nearest")
    else:
        if out.dims is not None and len(out.dims) != 4:
            raise GraphError(
                f"output {out.describe()} is not (N, C, H, W) scores; pass --output-kind "
                "class-ids for an (N, H, W) map of class ids"
            )
        scores = (
            output_name
            if out.elem_type == TensorProto.FLOAT
            else add("Cast", [output_name], "float", to=TensorProto.FLOAT)
        )
        result = resized(scores, "linear")
        if output_kind == "probabilities":
            floor = add("Max", [result, constant("eps", np.array(1e-12, np.float32))], "floor")
            result = add("Log", [floor], "log")
    nodes.append(helper.make_node("Identity", [result], [LOGITS], name="vsr_logits"))
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    del graph.output[:]
    batch = next(v for v in graph.input if v.name == IMAGE).type.tensor_type.shape.dim[0]
    channels = (
        num_classes + 1 if output_kind == "class_ids" else (out.dims[1] if out.dims else None)
    )
    shape = [batch.dim_value or batch.dim_param or None, channels or "classes", height, width]
    graph.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, shape))
    del graph.value_info[:]  # may be stale after a rename; backends infer shapes themselves
    try:
        return model.SerializeToString()
    except ValueError as error:  # protobuf's 2 GB limit
        raise GraphError(
            f"{origin} is over 2 GB; graphs with external data are not supported"
        ) from error


def _rename(graph, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (subgraphs left alone: their
    outer-scope references are rare in segmentation graphs)."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = new
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            if item.name == old:
                item.name = new


def imported_graph(model) -> bool:
    """Is ``model`` an :class:`~video_seg_ros.models.onnx_graph.ImportedGraph` (no torch
    forward)?"""
    return not getattr(model, "runs_in_torch", True)


def write_graph(
    model, input_size: tuple[int, int], path: str | os.PathLike, dynamic_batch: bool = False
) -> Path:
    """The ONNX file a backend converts: an imported graph adapted to the contract, else
    :func:`~.onnx_export.export_onnx` of the module."""
    if not imported_graph(model):
        return export_onnx(model, input_size, path, dynamic_batch=dynamic_batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = model.num_classes - 1 if model.output_kind == "class_ids" else None
    adapted = adapt_graph(
        model.graph_bytes, model.output_kind, model.output_name, input_size, classes
    )
    path.write_bytes(adapted)
    return path


class HostRunner:
    """A CPU runner serving another device: batches go to the CPU, results come back (the OpenVINO
    fp32 reference of an imported graph that TensorRT runs on CUDA)."""

    def __init__(self, runner, device: torch.device):
        self.runner, self.device, self.name = runner, device, runner.name

    def run(self, batch: torch.Tensor, memories=None) -> torch.Tensor:
        return self.runner.run(batch.detach().cpu(), memories).to(self.device)

    def release(self) -> None:
        self.runner.release()


def run_in_fixed_batches(run, batch: torch.Tensor, size: int) -> torch.Tensor:
    """``run`` over chunks of exactly ``size`` frames (the last one padded by repeating its last
    frame), for graphs whose batch dimension is fixed; returns the logits of the real frames."""
    chunks = []
    for part in batch.split(size):
        if len(part) < size:
            part = torch.cat([part, part[-1:].expand(size - len(part), *part.shape[1:])])
        chunks.append(run(part.contiguous()))
    return torch.cat(chunks)[: len(batch)]
