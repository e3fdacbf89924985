"""OpenVINO backend: the exported ONNX graph (:mod:`.onnx_export`) converted and compiled for the
CPU.

Conversion (export, ``openvino.convert_model``, IR written with fp32 weights) runs once per model
and is cached under ``<cache_dir>/openvino/<key>/`` (default cache dir
:func:`~video_seg_ros.backends.default_cache_dir`); the key covers the weights and model settings,
the input size, the graph version and the OpenVINO and PyTorch versions, so a
changed checkpoint never finds a stale model (the precision is not in the key: the IR keeps fp32
weights and the precision is a compile-time hint). The newest :data:`CACHE_ENTRIES` conversions are
kept.

Compiled for ``CPU`` with ``INFERENCE_PRECISION_HINT`` f32 (``fp32``: OpenVINO's exact path; it
would pick bf16 by itself on AMX CPUs) or bf16, the latency hint with one stream, as many threads
as PyTorch uses, and denormals flushed like the torch backend.

Several frames (the cameras of one node, evaluation batches) run one frame per infer request on
the model compiled with the throughput hint (OpenVINO's streams share the threads: two streams of
one thread on two cores), the caller post-processing one frame while the next ones run
(:meth:`OpenVinoRunner.run_frames`); one frame alone runs on the latency model. No batch-N model
is compiled: ESPNet's full-resolution activations at 1024x512 outgrow the caches as a batch (4
frames through the engine: 136-142 ms a frame as one batch, 116-122 ms this way, AMX Xeon). When
only labels are wanted, a variant of the model with a TopK over the classes gives each pixel's
class index, so the full-resolution logits are never written.

``int8``: the fp32 IR quantised by NNCF from calibration frames (:mod:`.int8`), cached as its own
entry whose key adds the calibration frames, the recipe and the NNCF version to the fp32 key; the
layers left in fp32 run with the f32 hint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from video_seg_ros.backends import BackendError, default_cache_dir, model_fingerprint
from video_seg_ros.backends.int8 import (
    DEFAULT_RECIPE,
    Int8Recipe,
    nncf_version,
    quantize,
    recipe_named,
)
from video_seg_ros.backends.onnx_export import (
    GRAPH_VERSION,
    IMAGE,
    LOGITS,
    STATE_INPUTS,
    STATE_OUTPUTS,
    is_temporal,
)
from video_seg_ros.backends.onnx_graph import run_in_fixed_batches, write_graph

LOG = logging.getLogger(__name__)

#: Conversions kept in the cache (least recently used ones are deleted beyond this).
CACHE_ENTRIES = 32

_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

#: The output name of the compiled variant that gives class indices (``run_frames(labels=True)``).
CLASS_INDEX = "class_index"


def import_openvino():
    """The ``openvino`` module, or :class:`BackendError` saying how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise BackendError(
            "OpenVINO is not installed: `pip install openvino==2026.4.1` (pinned in "
            "requirements.txt), or use backend 'torch'."
        ) from error
    return openvino


class ExplicitMemory:
    """One stream's memory for a graph with explicit state: the three ``memory_*`` arrays, and
    a second set that the graph writes the next state into (:meth:`advance` swaps them), so the
    state (19 MB for ESPNet at 1024x512, T=3) is never copied in or out of OpenVINO."""

    def __init__(self, shapes: list[tuple[int, ...]]):
        self.arrays = [np.zeros(shape, np.float32) for shape in shapes]
        self.next_arrays = [np.zeros(shape, np.float32) for shape in shapes]

    def advance(self) -> None:
        """The state written into :attr:`next_arrays` becomes the memory."""
        self.arrays, self.next_arrays = self.next_arrays, self.arrays

    def reset(self) -> None:
        self.arrays[-1][...] = 0.0  # valid = 0: the stored keys/values are then never read

    def __len__(self) -> int:
        return int(self.arrays[-1].sum())


class OpenVinoRunner:
    """Runs a model through OpenVINO on the CPU (see the module docstring).

    ``model`` is the eval-mode torch module (CPU); ``input_size`` (W, H) the network input.
    Raises :class:`BackendError` when OpenVINO is missing or cannot convert or compile the model.
    """

    name = "openvino"

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
        flush_denormals: bool = True,
        fingerprint_extra: tuple = (),
        calibration=None,
        int8_recipe: str | Int8Recipe = DEFAULT_RECIPE,
    ):
        if precision not in _PRECISION_HINTS:
            raise BackendError(
                f"the OpenVINO backend runs {', '.join(_PRECISION_HINTS)}, not {precision!r}"
            )
        ov = import_openvino()
        self._ov = ov
        self.temporal = is_temporal(model)
        if precision == "int8" and self.temporal:
            raise BackendError(
                "precision 'int8' quantises per-frame models; a memory (temporal) model runs "
                "'fp32' or 'bf16'."
            )
        self.input_size = tuple(input_size)
        self.precision = precision
        # The IR keeps fp32 weights whatever the precision (chosen at compile time), so one
        # conversion serves fp32 and bf16 and an engine falling back from bf16 does not convert
        # again.
        key = model_fingerprint(
            model,
            tuple(input_size),
            GRAPH_VERSION,
            ov.get_version(),
            torch.__version__,
            *fingerprint_extra,
        )[:32]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = root / "openvino" / key
        self._core = ov.Core()
        self._ov_model = self._load_or_convert(model)
        if precision == "int8":
            self._ov_model = self._load_or_quantize(
                calibration, recipe_named(int8_recipe), int(threads or torch.get_num_threads())
            )
        #: Names the model that runs (fp32 IR or its int8 quantisation): keys the gate's verdict.
        self.conversion_key = self.cache_path.name
        self._config = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "CPU_DENORMALS_OPTIMIZATION": bool(flush_denormals),
        }
        self._compiled: dict[tuple[int, str, bool], object] = {}  # (batch, hint, class index)
        self._requests: dict[tuple[int, bool], object] = {}  # latency model's, per batch size
        self._frame_requests: dict[bool, list] = {}  # throughput model's (run_frames), per output
        if self.temporal:
            self._state_shapes = [
                tuple(self._ov_model.input(name).get_shape()) for name in STATE_INPUTS
            ]
        # An imported graph may fix its batch size (torch.onnx.export's default: 1): frames run in
        # chunks.
        batch_dim = self._ov_model.input(IMAGE).get_partial_shape()[0]
        self._fixed_batch = (
            None if self.temporal or batch_dim.is_dynamic else batch_dim.get_length()
        )
        logits_shape = self._ov_model.output(LOGITS).get_partial_shape()
        #: Whether ``run_frames(..., labels=True)`` applies: frame by frame, and logits with a
        #: class axis (N, C > 1, h, w) to take the maximum of (not a graph giving class ids).
        self.gives_class_index = (
            self.runs_frame_by_frame
            and logits_shape.rank.is_static
            and len(logits_shape) == 4
            and logits_shape[1].is_static
            and logits_shape[1].get_length() > 1
        )
        try:
            # compile now: a model OpenVINO cannot compile fails at start-up
            self._request(self._fixed_batch or 1)
        except RuntimeError as error:
            raise BackendError(
                f"OpenVINO could not compile the converted model: {str(error)[:300]}"
            ) from error

    # ---- conversion cache --------------------------------------------------------------------
    def _read_cached(self):
        """The IR stored at ``cache_path``, or None (missing or unreadable: made again)."""
        xml = self.cache_path / "model.xml"
        if xml.is_file() and (self.cache_path / "model.bin").is_file():
            try:
                ov_model = self._core.read_model(str(xml))
                os.utime(self.cache_path / "info.json", None)  # most recently used
                return ov_model
            except (RuntimeError, OSError) as error:
                LOG.warning(
                    "ignoring unreadable OpenVINO cache entry %s (%s); making it again",
                    self.cache_path,
                    error,
                )
        return None

    def _load_or_convert(self, model: nn.Module):
        cached = self._read_cached()
        if cached is not None:
            return cached
        with tempfile.TemporaryDirectory(prefix="video_seg_ov_") as tmp:
            onnx_path = write_graph(
                model, self.input_size, Path(tmp) / "model.onnx", dynamic_batch=not self.temporal
            )
            try:
                ov_model = self._ov.convert_model(str(onnx_path))
            except Exception as error:  # OpenVINO raises its own exception types
                raise BackendError(
                    f"OpenVINO could not convert the exported model: "
                    f"{type(error).__name__}: {str(error).strip()[:300]}"
                ) from error
            self._store(ov_model)
        return ov_model

    def _load_or_quantize(self, calibration, recipe: Int8Recipe, threads: int):
        """The int8 model of the fp32 IR, from the cache or quantised now (:mod:`.int8`)."""
        if calibration is None:
            raise BackendError("precision 'int8' needs calibration frames")
        key = hashlib.sha256(
            repr(
                (self.cache_path.name, calibration.fingerprint, recipe.key(), nncf_version())
            ).encode()
        ).hexdigest()[:32]
        self.cache_path = self.cache_path.parent / f"{key}-int8"
        cached = self._read_cached()
        if cached is not None:
            return cached
        started = time.perf_counter()
        batches = [batch.numpy() for batch in calibration.batches]
        quantized = quantize(self._ov_model, batches, recipe, IMAGE, threads)
        LOG.info(
            "quantised to int8 on %d calibration frames in %.1f s (recipe %s)",
            len(batches),
            time.perf_counter() - started,
            recipe,
        )
        self._store(quantized, {"precision": "int8", "recipe": recipe.key()})
        return quantized

    def _store(self, ov_model, info: dict | None = None) -> None:
        """Write the IR atomically (temporary folder + rename); a read-only cache is only
        logged."""
        parent = self.cache_path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=parent))
            # fp32 weights in the IR: the precision is chosen when compiling, not here.
            self._ov.save_model(ov_model, str(staging / "model.xml"), compress_to_fp16=False)
            (staging / "info.json").write_text(
                json.dumps(
                    {
                        "input_size": list(self.input_size),
                        "temporal": self.temporal,
                        "openvino": self._ov.get_version(),
                        "torch": torch.__version__,
                        "graph_version": GRAPH_VERSION,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        **(info or {}),
                    },
                    indent=2,
                )
            )
            try:
                os.replace(staging, self.cache_path)
            except OSError:  # another process stored the same conversion first
                shutil.rmtree(staging, ignore_errors=True)
            _prune(parent, CACHE_ENTRIES)
        except OSError as error:
            LOG.warning(
                "could not write the OpenVINO conversion cache %s (%s); converting again next "
                "time",
                parent,
                error,
            )

    # ---- inference ---------------------------------------------------------------------------
    def _compile(self, batch: int, hint: str = "LATENCY", labels: bool = False):
        """The model compiled for ``batch`` frames with OpenVINO's ``hint`` (LATENCY: one stream
        using every thread; THROUGHPUT: streams sharing them, one frame each); ``labels``: its
        output is the class index of each pixel instead of the logits."""
        compiled = self._compiled.get((batch, hint, labels))
        if compiled is None:
            ov_model = self._ov_model
            if not self.temporal and ov_model.input(IMAGE).get_partial_shape()[0].is_dynamic:
                ov_model = ov_model.clone()
                width, height = self.input_size
                ov_model.reshape({IMAGE: [batch, 3, height, width]})  # static shapes compile best
            if labels:
                ov_model = _with_class_index_output(ov_model)
            config = dict(self._config, PERFORMANCE_HINT=hint)
            if hint != "LATENCY":
                del config["NUM_STREAMS"]  # OpenVINO's choice for the threads given
            compiled = self._compiled[(batch, hint, labels)] = self._core.compile_model(
                ov_model, "CPU", config
            )
        return compiled

    def _request(self, batch: int, labels: bool = False):
        request = self._requests.get((batch, labels))
        if request is None:
            request = self._compile(batch, labels=labels).create_infer_request()
            self._requests[(batch, labels)] = request
        return request

    @property
    def runs_frame_by_frame(self) -> bool:
        """Whether :meth:`run_frames` applies: a model without memory whose graph takes one
        frame (a dynamic batch, or a batch fixed at 1)."""
        return not self.temporal and self._fixed_batch in (None, 1)

    def run_frames(self, batch: torch.Tensor, labels: bool = False):
        """Yields ``(index, logits (1, C, h, w))`` for each frame of a normalised CPU batch, in
        order; with ``labels``, ``(index, class index (1, h, w) int32)`` instead: the maximum is
        taken in the graph, which then never writes the full-resolution logits (ESPNet at
        1024x512: 63 instead of 94 ms with the engine's own maximum, the same labels). One frame
        runs with the latency model; several run on the throughput model's streams, the next
        frames already running while the caller handles the yielded one. The tensor is the
        request's own output buffer: valid until the next iteration (copy to keep). Models
        without memory only (:attr:`runs_frame_by_frame`, :attr:`gives_class_index`)."""
        if not (self.gives_class_index if labels else self.runs_frame_by_frame):
            raise BackendError(
                "run_frames needs a model without memory taking one frame"
                + (" and giving logits" if labels else "")
            )
        image = batch.detach().contiguous().numpy()
        if len(image) == 1:
            request = self._request(1, labels)
            request.infer({IMAGE: image}, share_outputs=True)
            yield 0, _frame_output(request, labels)
            return
        requests = self._frame_requests.get(labels)
        if requests is None:
            compiled = self._compile(1, "THROUGHPUT", labels)
            count = max(2, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            requests = [compiled.create_infer_request() for _ in range(count)]
            self._frame_requests[labels] = requests
        try:
            for index in range(min(len(requests), len(image))):
                requests[index].start_async({IMAGE: image[index : index + 1]})
            for index in range(len(image)):
                request = requests[index % len(requests)]
                request.wait()
                yield index, _frame_output(request, labels)
                following = index + len(requests)
                if following < len(image):  # this request's frame has been handled
                    request.start_async({IMAGE: image[following : following + 1]})
        finally:  # a caller that stops early leaves no request running
            for request in requests:
                request.wait()

    def new_memory(self) -> ExplicitMemory:
        return ExplicitMemory(self._state_shapes)

    def run(
        self, batch: torch.Tensor, memories: list[ExplicitMemory] | None = None
    ) -> torch.Tensor:
        """Logits (N, C, h, w) of a normalised CPU batch; temporal models update ``memories``."""
        image = batch.detach().contiguous().numpy()
        if self._fixed_batch and len(image) != self._fixed_batch:
            return run_in_fixed_batches(self.run, batch, self._fixed_batch)
        if self.runs_frame_by_frame and len(image) > 1:
            logits = None
            for index, frame_logits in self.run_frames(batch):
                if logits is None:
                    logits = frame_logits.new_empty((len(image), *frame_logits.shape[1:]))
                logits[index] = frame_logits[0]
            return logits
        if not self.temporal:
            outputs = self._request(len(image)).infer({IMAGE: image})
            return torch.from_numpy(outputs[LOGITS])
        # The memory graph is exported for one frame (static shapes): one request per stream.
        ov = import_openvino()
        logits = []
        request = self._request(1)
        for i, memory in enumerate(memories):
            for name, array in zip(STATE_OUTPUTS, memory.next_arrays):
                request.set_tensor(name, ov.Tensor(array, shared_memory=True))
            inputs = {IMAGE: image[i : i + 1], **dict(zip(STATE_INPUTS, memory.arrays))}
            outputs = request.infer(inputs, share_inputs=True, share_outputs=True)
            memory.advance()
            logits.append(torch.from_numpy(outputs[LOGITS].copy()))
        return torch.cat(logits)

    def release(self) -> None:
        self._frame_requests = {}
        self._requests.clear()
        self._compiled.clear()
        self._ov_model = None


def _with_class_index_output(ov_model):
    """``ov_model`` whose one output is the index of the largest logit of each pixel (N, 1, h,
    w) int32, taken by a TopK in the graph."""
    from openvino import opset13

    ov = import_openvino()
    (result,) = [r for r in ov_model.get_results() if LOGITS in r.output(0).get_names()]
    top = opset13.topk(
        result.input_value(0),
        opset13.constant(np.int64(1)),
        axis=1,
        mode="max",
        sort="none",
        index_element_type=ov.Type.i32,
    )
    output = opset13.result(top.output(1))
    output.output(0).get_tensor().set_names({CLASS_INDEX})
    return ov.Model([output], ov_model.get_parameters(), "class_index")


def _frame_output(request, labels: bool) -> torch.Tensor:
    """The request's output as a tensor on its buffer: logits (1, C, h, w), or with ``labels``
    the class index (1, h, w)."""
    if labels:
        return torch.from_numpy(request.get_tensor(CLASS_INDEX).data)[:, 0]
    return torch.from_numpy(request.get_tensor(LOGITS).data)


def _prune(folder: Path, keep: int) -> None:
    entries = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(entries) <= keep:
        return

    def last_used(path: Path) -> float:
        try:
            return (path / "info.json").stat().st_mtime
        except OSError:
            return 0.0

    for stale in sorted(entries, key=last_used)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
