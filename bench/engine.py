"""Engine speed, work and accuracy per backend x precision x input size on published weights and
real frames, against plain torch fp32.

Usage (from the repository root; needs ../shared)::

    python bench/engine.py                                  # ESPNet p2q8, 3 sizes, every backend
    python bench/engine.py --models espnet-p2q8 espnet-p2q3 --repeats 7 --json bench.json
    python bench/engine.py --sizes 1024x512 --no-miou --peak-gflops 400   # quick, with the floor
    python bench/engine.py --models espnet-p2q8 random-pspnet18   # random weights: labelled extra

For each model (published weights imported with ``video-seg-import``'s code, or ``random-*``),
each network input size of ``--sizes`` (``--size`` is the same option;
``benchmark_checkpoint(name, size)``: the same weights at that input size) and each backend x
precision that can run here (the others are listed with the reason they are refused), it times
``SegmentationEngine.segment`` on the real Cityscapes frame frankfurt_000001_058914. Columns:

- ``ms per frame, network input``: the frame already at the network input size: normalisation
  + network + argmax;
- ``ms, 2048x1024 frame``: the camera frame itself: resize + normalisation + network + argmax +
  upsampling to the frame size (the node's and the evaluator's work per frame);
- ``GFLOP per frame``: counted from the model at that input size
  (:func:`video_seg_ros.flops.count_gflops`: ``FlopCounterMode`` on one torch forward pass,
  convolutions and matrix products, a multiply-add = 2 FLOPs); the same count for every backend
  and precision, since they run the same network;
- ``GFLOP/s``: that count / the network-input time (for bf16, fp16 and int8: fp32-equivalent
  work per second);
- ``speed-up vs torch fp32``: the network-input time of this run's torch fp32 engine (denormals
  flushed, as every engine runs) / this row's, so that the ratio does not depend on whether a CPU
  slows down on denormals (needs torch and fp32 among ``--backends`` / ``--precisions``);
- ``speed-up vs unchanged``: the same against the unchanged path (torch fp32, the architecture's
  oneDNN setting, denormals NOT flushed), at the network input and for the camera frame;
- ``mIoU``: the engine over the held-out snippet aachen_000002 (all 30 frames, or
  ``--miou-frames``) through ``video_seg_ros.evaluation.evaluate`` (what ``video-seg-eval`` runs),
  against the snippet's pseudo labels (a strong segmenter's, not ground truth); ``--no-miou``
  skips it;
- ``labels = torch fp32``: the fraction of the camera frame's pixels whose label equals torch
  fp32's at the same size.

The unchanged path runs first, at every size, in a subprocess (the flush is per thread and never
undone in this process). Settings take turns, medians of ``--repeats`` after ``--warmup``. Below
the table, per model and size, the fp32 floor: GFLOP / ``--peak-gflops`` (the peak fp32 GFLOP/s
of the machine, which the user states; none is assumed), i.e. the time no fp32 backend can beat,
with the share of that peak the fastest fp32 engine reached. Prints the command, load, CPU,
versions and a Markdown table.

Reduced precisions are gated (and int8 calibrated, ``--int8-recipe``) on
``--calibration-frames`` real frames spread over ``--calibration-snippets`` (the training
snippets aachen_000000 and aachen_000001 by default, never the scored one).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench_utils import (
    CITYSCAPES_FRAME,
    CITYSCAPES_SNIPPET,
    PUBLISHED,
    RANDOM,
    add_int8_arguments,
    alternating_medians,
    benchmark_checkpoint,
    machine_description,
    require_shared,
    snippet_calibration,
)
from video_seg_ros.backends import BACKENDS as ENGINE_BACKENDS
from video_seg_ros.runtime import PRECISIONS as ENGINE_PRECISIONS
from video_seg_ros.tools.arguments import parse_size, positive_float, positive_int

PROG = "bench/engine.py"
# Every concrete setting is measured ("auto" only picks one of them).
BACKENDS = tuple(name for name in ENGINE_BACKENDS if name != "auto")
PRECISIONS = tuple(name for name in ENGINE_PRECISIONS if name != "auto")
#: Network input sizes (width, height) measured unless --sizes says otherwise.
DEFAULT_SIZES = ((1024, 512), (768, 384), (512, 256))
#: The engine every "speed-up vs torch fp32" divides by (denormals flushed, like every engine).
REFERENCE = ("torch", "fp32")
UNCHANGED = "torch (unchanged: no flush)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["espnet-p2q8"],
        choices=sorted({**PUBLISHED, **RANDOM}),
        help="published checkpoints (imported from ../shared/weights) or random-* extras",
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument(
        "--sizes",
        "--size",
        nargs="+",
        type=parse_size,
        default=list(DEFAULT_SIZES),
        metavar="WxH",
        help="network input sizes WIDTHxHEIGHT (default: 1024x512 768x384 512x256; --size is "
        "the same option)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each setting first")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs; the median is reported"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch (and OpenVINO) CPU threads"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the unflushed torch fp32 subprocess"
    )
    parser.add_argument(
        "--no-miou", action="store_true", help="skip the mIoU on aachen_000002 (quick runs)"
    )
    parser.add_argument(
        "--miou-frames",
        type=positive_int,
        default=None,
        metavar="N",
        help="score only the first N frames of aachen_000002 (default: all 30)",
    )
    parser.add_argument(
        "--peak-gflops",
        type=positive_float,
        default=None,
        help="the machine's peak fp32 GFLOP/s, for the floor line (none: achieved GFLOP/s only)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="conversion cache (default: the engine's)"
    )
    add_int8_arguments(parser, several=False)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--baseline-only", default=None, help=argparse.SUPPRESS
    )  # the subprocess's job
    return parser


def size_text(size: tuple[int, int]) -> str:
    """(1024, 512) -> "1024x512"."""
    return f"{size[0]}x{size[1]}"


def camera_frame() -> np.ndarray:
    """The real 2048x1024 BGR camera frame, (1024, 2048, 3) uint8."""
    return cv2.imread(str(require_shared() / CITYSCAPES_FRAME))


def network_input(camera: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``camera`` resized to the network input ``size`` (W, H): (H, W, 3) uint8, BGR."""
    return cv2.resize(camera, size, interpolation=cv2.INTER_AREA)


def timed(engine, frame):
    return lambda: engine.segment(frame, "bgr").model_ms


def run_baseline(args) -> int:
    """Subprocess: the unchanged path (torch fp32, oneDNN as the model prefers, no flush), at
    every size."""
    import torch

    from video_seg_ros.engine import SegmentationEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.baseline_only)
    camera = camera_frame()
    report: dict[str, dict[str, dict]] = {}
    for name in args.models:
        for size in args.sizes:
            engine = SegmentationEngine(
                benchmark_checkpoint(name, size),
                device=args.device,
                backend="torch",
                precision="fp32",
                flush_denormals=False,
            )
            medians = alternating_medians(
                {
                    "input": timed(engine, network_input(camera, size)),
                    "camera": timed(engine, camera),
                },
                args.warmup,
                args.repeats,
            )
            np.save(
                out.with_name(f"{name}_{size_text(size)}.labels.npy"),
                engine.segment(camera, "bgr").labels,
            )
            report.setdefault(name, {})[size_text(size)] = {
                **medians,
                "denormals_flushed": bool((torch.tensor([1e-40]) * 1.0).item() == 0.0),
            }
            engine.release()
    out.write_text(json.dumps(report))
    return 0


def baseline_subprocess(args, folder: Path) -> dict:
    """The unchanged path's figures: {model: {"WxH": {"input", "camera", "labels", ...}}}."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--models",
        *args.models,
        "--sizes",
        *(size_text(size) for size in args.sizes),
        "--device",
        args.device,
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--baseline-only",
        str(folder / "baseline.json"),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    subprocess.run(command, check=True)
    report = json.loads((folder / "baseline.json").read_text())
    for name, sizes in report.items():
        for text, figures in sizes.items():
            figures["labels"] = np.load(folder / f"{name}_{text}.labels.npy")
    return report


def snippet_miou(engine, frame_limit: int | None) -> float | None:
    """mIoU (0..1) of ``engine`` on aachen_000002 against its pseudo labels, through the
    evaluator ``video-seg-eval`` uses (the first ``frame_limit`` frames; None = all 30); no TC.
    Each frame is 2048x1024, so this is the camera-frame path (resize, network, upsampling)."""
    from video_seg_ros.evaluation import EvaluationOptions, evaluate
    from video_seg_ros.streams import FolderStream

    snippet = require_shared() / CITYSCAPES_SNIPPET
    stream = FolderStream(
        snippet / "leftImg8bit", snippet / "pseudo_labelIds", "cityscapes-labelids", frame_limit
    )
    return evaluate(engine, stream, EvaluationOptions(tc=False)).miou


def fastest_fp32(rows: list[dict]) -> dict | None:
    """The fp32 row with the shortest network-input time (the unchanged path included)."""
    fp32 = [row for row in rows if row["precision"] == "fp32"]
    return min(fp32, key=lambda row: row["input_ms"]) if fp32 else None


def floor_line(name: str, size: str, gflops: float, rows: list[dict], peak: float | None) -> str:
    """One model x size: the fp32 floor (GFLOP / peak) and how close the fastest fp32 engine
    came, or, without a peak, the achieved GFLOP/s only."""
    from video_seg_ros.evaluation import percent

    best = fastest_fp32(rows)
    achieved = (
        ""
        if best is None
        else f"fastest fp32 here: {best['backend']} {best['input_ms']:.1f} ms, "
        f"{best['gflops_per_s']:.1f} GFLOP/s"
    )
    if peak is None:
        return f"- {name} {size}: {gflops:.2f} GFLOP per frame; {achieved or 'no fp32 engine'}"
    floor_ms = gflops / peak * 1000.0
    share = "" if best is None else f" = {percent(best['gflops_per_s'] / peak, 1)} of the peak"
    return (
        f"- {name} {size}: {gflops:.2f} GFLOP / {peak:g} GFLOP/s = {floor_ms:.1f} ms per frame "
        f"at the fp32 peak; {achieved or 'no fp32 engine'}{share}"
    )


def print_table(rows: list[dict]) -> None:
    """The Markdown table, one row per model x size x setting (see the module docstring)."""
    from video_seg_ros.evaluation import percent

    print(
        "| model | input size | backend | precision | ms per frame, network input | "
        "ms, 2048x1024 frame (pre+post) | GFLOP per frame | GFLOP/s | speed-up vs torch fp32 | "
        "speed-up vs unchanged (input / frame) | mIoU | labels = torch fp32 |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in rows:
        model = row["model"] + (" (random weights)" if row["random_weights"] else "")
        versus_torch = (
            "-" if row["speedup_vs_torch_fp32"] is None else f"{row['speedup_vs_torch_fp32']:.2f}x"
        )
        versus_unchanged = (
            f"{row['speedup_input']:.2f}x / {row['speedup_camera']:.2f}x"
            if "speedup_input" in row
            else "-"
        )
        miou = "-" if row["miou"] is None else percent(row["miou"])
        agreement = (
            "-"
            if row["agreement_with_torch_fp32"] is None
            else f"{row['agreement_with_torch_fp32']:.4%}"
        )
        print(
            f"| {model} | {row['size']} | {row['backend']} | {row['precision']} | "
            f"{row['input_ms']:.1f} | {row['camera_ms']:.1f} | {row['gflops']:.2f} | "
            f"{row['gflops_per_s']:.1f} | {versus_torch} | {versus_unchanged} | {miou} | "
            f"{agreement} |"
        )


def print_refused(refused: list[dict]) -> None:
    """The settings refused here, one line per model x setting with the sizes it was asked at."""
    if not refused:
        return
    print("\nRefused here:")
    sizes_by_refusal: dict[tuple[str, str, str, str], list[str]] = {}
    for entry in refused:
        key = (entry["model"], entry["backend"], entry["precision"], entry["reason"])
        sizes_by_refusal.setdefault(key, []).append(entry["size"])
    for (name, backend, precision, reason), sizes in sizes_by_refusal.items():
        print(f"- {name} {backend} {precision} ({', '.join(sizes)}): {reason}")


def measure(
    args: argparse.Namespace,
    name: str,
    size: tuple[int, int],
    camera: np.ndarray,
    base: dict | None,
) -> tuple[list[dict], list[dict], float]:
    """One model at one network input size: every backend x precision timed (taking turns),
    counted, compared with torch fp32 and scored; ``base`` is the unchanged path's figures at
    this size (None: not measured).

    Returns:
        (table rows, refused settings, GFLOP per frame).
    """
    from video_seg_ros.backends import BackendError
    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.flops import count_gflops
    from video_seg_ros.models import build_from_checkpoint
    from video_seg_ros.runtime import PrecisionError

    text = size_text(size)
    small = network_input(camera, size)
    checkpoint = benchmark_checkpoint(name, size)
    engines, refused = {}, []
    # Real frames of the camera for the gate and int8 (the synthetic street suits no Cityscapes
    # model); made only when a reduced precision is measured.
    calibration = (
        snippet_calibration(args.calibration_snippets, args.calibration_frames)
        if set(args.precisions) - {"fp32"}
        else None
    )
    for backend in args.backends:
        for precision in args.precisions:
            try:
                engines[(backend, precision)] = SegmentationEngine(
                    checkpoint,
                    device=args.device,
                    backend=backend,
                    precision=precision,
                    cache_dir=args.cache_dir,
                    calibration=calibration,
                    int8_recipe=args.int8_recipe,
                )
            except (BackendError, PrecisionError) as error:
                refused.append(
                    {
                        "model": name,
                        "size": text,
                        "backend": backend,
                        "precision": precision,
                        "reason": str(error).splitlines()[0],
                    }
                )
    auto = SegmentationEngine(checkpoint, device=args.device, cache_dir=args.cache_dir)
    # Counted after the engines exist: they flush denormals in this thread, so the count's one
    # forward pass is not slowed down by the published weights' tiny values.
    gflops = count_gflops(build_from_checkpoint(checkpoint), size)
    functions = {}
    for key, engine in engines.items():
        functions[(*key, "input")] = timed(engine, small)
        functions[(*key, "camera")] = timed(engine, camera)
    medians = alternating_medians(functions, args.warmup, args.repeats)
    reference = engines.get(REFERENCE)
    reference_labels = reference.segment(camera, "bgr").labels if reference else None
    reference_ms = medians[(*REFERENCE, "input")] if reference else None
    size_rows = []
    for (backend, precision), engine in engines.items():
        labels = engine.segment(camera, "bgr").labels
        row = {
            "model": name,
            "random_weights": name in RANDOM,
            "size": text,
            "backend": backend,
            "precision": precision,
            "input_ms": medians[(backend, precision, "input")],
            "camera_ms": medians[(backend, precision, "camera")],
            "agreement_with_torch_fp32": None
            if reference_labels is None
            else float(np.mean(labels == reference_labels)),
            "miou": None if args.no_miou else snippet_miou(engine, args.miou_frames),
        }
        if base:
            row["speedup_input"] = base["input"] / row["input_ms"]
            row["speedup_camera"] = base["camera"] / row["camera_ms"]
        size_rows.append(row)
    if base:
        size_rows.append(
            {
                "model": name,
                "random_weights": name in RANDOM,
                "size": text,
                "backend": UNCHANGED,
                "precision": "fp32",
                "input_ms": base["input"],
                "camera_ms": base["camera"],
                "speedup_input": 1.0,
                "speedup_camera": 1.0,
                "denormals_flushed": base["denormals_flushed"],
                "agreement_with_torch_fp32": None
                if reference_labels is None
                else float(np.mean(base["labels"] == reference_labels)),
                # Not scored: same network and weights as torch fp32, whose labels the
                # agreement column compares it with.
                "miou": None,
            }
        )
    for row in size_rows:
        row["gflops"] = gflops
        row["gflops_per_s"] = gflops / (row["input_ms"] / 1000.0)
        row["speedup_vs_torch_fp32"] = (
            None if reference_ms is None else reference_ms / row["input_ms"]
        )
    print(
        f"{name} {text}: backend auto -> {auto.backend} {auto.precision} "
        f"({auto.precision_decision.reason})"
        + (f" (backend fallback: {auto.fallback_reason})" if auto.fallback_reason else "")
    )
    for (backend, precision), engine in engines.items():
        if engine.precision_decision.agreement is not None:
            print(f"  gate, {backend} {precision}: {engine.precision_decision.reason}")
    for engine in (*engines.values(), auto):
        engine.release()  # the next size builds its own engines
    return size_rows, refused, gflops


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.baseline_only:
        return run_baseline(args)
    command = shlex.join(["python", PROG, *(sys.argv[1:] if argv is None else argv)])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    camera = camera_frame()
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        baseline = {} if args.no_baseline else baseline_subprocess(args, Path(tmp))
    rows, refused, floors = [], [], []
    for name in args.models:
        for size in args.sizes:
            base = baseline.get(name, {}).get(size_text(size))
            size_rows, size_refused, gflops = measure(args, name, size, camera, base)
            rows += size_rows
            refused += size_refused
            floors.append(floor_line(name, size_text(size), gflops, size_rows, args.peak_gflops))
    miou_frames = "all" if args.miou_frames is None else f"the first {args.miou_frames}"
    print(
        f"\n{command}\n{machine_description()}\ndevice {args.device}; real frame "
        f"{Path(CITYSCAPES_FRAME).name} (2048x1024); median of {args.repeats} after "
        f"{args.warmup} warm-up runs, settings taking turns; GFLOP counted from the model "
        "(FlopCounterMode, multiply-add = 2 FLOPs); "
        + (
            "mIoU not measured (--no-miou)"
            if args.no_miou
            else f"mIoU on {Path(CITYSCAPES_SNIPPET).name} ({miou_frames} frames, pseudo labels)"
        )
        + "\n"
    )
    print_table(rows)
    if args.peak_gflops is None:
        print("\nWork per frame (no --peak-gflops given, so no floor):")
    else:
        print(f"\nfp32 floor (GFLOP per frame / the stated peak, {args.peak_gflops:g} GFLOP/s):")
    print("\n".join(floors))
    if REFERENCE not in {(r["backend"], r["precision"]) for r in rows}:
        print("(speed-up vs torch fp32 needs torch among --backends and fp32 among --precisions)")
    print_refused(refused)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine_description(),
                    "peak_gflops": args.peak_gflops,
                    "rows": rows,
                    "refused": refused,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
