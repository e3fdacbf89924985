"""Timing helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

# Developer helpers shared with the tests (../shared lookup, tiny checkpoints) live in test/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from shared_data import shared_dir  # noqa: E402,F401


def median_ms(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def alternating_medians(functions: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of each ``functions[name]()`` (which returns its own ms), taking turns.

    Taking turns makes load changes on a shared machine hit every setting alike, so their ratios
    stay meaningful even when the absolute times move.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name].append(function())
    return {name: statistics.median(values) for name, values in times.items()}


# ---- published checkpoints and real frames (../shared) ----------------------------------------
#: Published weights the benchmarks run: name -> (arch, preset, path inside ../shared).
PUBLISHED = {
    "espnet-p2q8": ("espnet", "cityscapes", "weights/espnet/espnet_p_2_q_8.pth"),
    "espnet-p2q5": ("espnet", "cityscapes", "weights/espnet/espnet_p_2_q_5.pth"),
    "espnet-p2q3": ("espnet", "cityscapes", "weights/espnet/espnet_p_2_q_3.pth"),
    "cgnet-camvid": ("cgnet", "camvid", "weights/cgnet/cgnet_m3n21_camvid_trainval.pth"),
}
#: Random-weight architectures (times only; labelled as such wherever they are printed).
RANDOM = {
    "random-pspnet18": ("pspnet18", {"num_classes": 19}),
    "random-espnet-q8": ("espnet", {"num_classes": 20, "p": 2, "q": 8}),
}
#: The real 2048x1024 Cityscapes frame with ground truth.
CITYSCAPES_FRAME = "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"
#: The real 30-frame Cityscapes snippet held out from training (2048x1024 frames in
#: ``leftImg8bit/``, a strong segmenter's pseudo labels as Cityscapes labelIds in
#: ``pseudo_labelIds/``: not ground truth).
CITYSCAPES_SNIPPET = "data/cityscapes_sequences/aachen_000002"


def require_shared() -> Path:
    """../shared (or $VIDEO_SEG_SHARED), or exit with what to do."""
    root = shared_dir()
    if root is None:
        raise SystemExit(
            "the verification data folder is missing: set VIDEO_SEG_SHARED or place ../shared "
            "beside the repository (the benchmarks run published weights on real frames)"
        )
    return root


def make_checkpoint(arch: str, kwargs: dict, width: int, height: int):
    """A random-init checkpoint of ``arch`` with model input ``width`` x ``height`` (Cityscapes
    classes)."""
    from video_seg_ros.checkpoint import Checkpoint, Preprocessing
    from video_seg_ros.models import build_model

    model = build_model(arch, **kwargs)
    return Checkpoint.for_label_set(
        arch,
        kwargs,
        model.state_dict(),
        "cityscapes",
        Preprocessing(input_height=height, input_width=width),
        source={"kind": "random weights (benchmark)"},
    )


def benchmark_checkpoint(name: str, size: tuple[int, int] | None = None):
    """A published checkpoint (imported with the project's importer) or a random one, by name.

    ``size`` (W, H) overrides the network input size (published ones keep their normalisation).
    """
    import dataclasses

    if name in RANDOM:
        arch, kwargs = RANDOM[name]
        return make_checkpoint(arch, kwargs, *(size or (1024, 512)))
    from video_seg_ros.weights_import import import_weights

    arch, preset, relative = PUBLISHED[name]
    checkpoint = import_weights(arch, preset, require_shared() / relative)
    if size is not None:
        checkpoint.preprocessing = dataclasses.replace(
            checkpoint.preprocessing, input_width=size[0], input_height=size[1]
        )
    return checkpoint


def untrained_memory(base_checkpoint, config: dict):
    """``add_memory_to_checkpoint`` with small random memory weights (seed 0), still untrained.

    A fresh wrapper's gate and projection convs are zero, which lets a graph compiler (OpenVINO)
    fold part of the memory away; random weights keep every layer's work in the timing.
    """
    from video_seg_ros.checkpoint import add_memory_to_checkpoint, randomise_memory_weights

    return randomise_memory_weights(
        add_memory_to_checkpoint(base_checkpoint, config), seed=0, scale=0.05
    )


def machine_description() -> str:
    """Load, CPU, thread count and library versions, for the header of every benchmark report."""
    import os

    import torch

    from video_seg_ros.runtime import cpu_description

    try:
        import openvino

        openvino_version = openvino.get_version().split("-")[0]
    except ImportError:
        openvino_version = "not installed"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"load average {load}; CPU {cpu_description()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}, openvino {openvino_version}"
    )


class NodeOutputs:
    """What a benchmark hears from one node: when each labels message arrived (by header stamp)
    and the node's diagnostics values, newest last. ``on_labels`` / ``on_diagnostics`` are the
    subscription callbacks."""

    def __init__(self, node_name: str):
        self.node_name = node_name
        self.arrivals: dict[tuple[int, int], float] = {}
        self.diagnostics: list[dict[str, str]] = []

    def on_labels(self, msg) -> None:
        self.arrivals.setdefault(
            (msg.header.stamp.sec, msg.header.stamp.nanosec), time.perf_counter()
        )

    def on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.lstrip("/").startswith(f"{self.node_name}:"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})


#: The snippets int8 is calibrated on by default: the training ones, never the scored one.
CALIBRATION_SNIPPETS = ("aachen_000000", "aachen_000001")


def add_int8_arguments(parser, several: bool) -> None:
    """``--int8-recipes`` (``several``: one row each) or ``--int8-recipe``, then
    ``--calibration-snippets`` and ``--calibration-frames``."""
    from video_seg_ros.backends.int8 import DEFAULT_RECIPE, RECIPES

    if several:
        parser.add_argument(
            "--int8-recipes",
            nargs="+",
            default=[DEFAULT_RECIPE],
            choices=sorted(RECIPES),
            help="how int8 is quantised: one row per recipe",
        )
    else:
        parser.add_argument(
            "--int8-recipe",
            default=DEFAULT_RECIPE,
            choices=sorted(RECIPES),
            help="how int8 is quantised (bench/precision.py compares recipes)",
        )
    parser.add_argument(
        "--calibration-snippets",
        nargs="+",
        default=list(CALIBRATION_SNIPPETS),
        help="snippets of ../shared/data/cityscapes_sequences int8 is calibrated on (and the "
        "precision gate measured on)",
    )
    parser.add_argument(
        "--calibration-frames", type=int, default=30, help="spread over those snippets"
    )


def snippet_calibration(snippets, count: int) -> list:
    """``count`` (H, W, 3) RGB frames spread over the snippets' leftImg8bit folders, an equal
    share each."""
    from video_seg_ros.precision import load_calibration

    root = require_shared() / "data" / "cityscapes_sequences"
    share = max(1, count // len(snippets))
    return [
        frame
        for snippet in snippets
        for frame in load_calibration(root / snippet / "leftImg8bit", share)
    ]


def spinning_node(name: str):
    """``rclpy.init()``, a node called ``name`` and a daemon thread spinning it (the
    ExternalShutdownException of the final ``rclpy.shutdown()`` ends the thread quietly)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin():
        try:
            executor.spin()
        except Exception:  # ExternalShutdownException at exit
            pass

    threading.Thread(target=spin, daemon=True).start()
    return node
