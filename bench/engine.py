"""Engine speed per backend x precision on published weights and a real frame, against the
unchanged path.

Usage (from the repository root; needs ../shared)::

    python bench/engine.py                                  # ESPNet p2q8, torch and OpenVINO, CPU
    python bench/engine.py --models espnet-p2q8 espnet-p2q3 --repeats 7 --json bench.json
    python bench/engine.py --models espnet-p2q8 random-pspnet18   # random weights: labelled extra

For each model (published weights imported with ``video-seg-import``'s code, or ``random-*``) and
each backend x precision that can run here (the others are listed with the reason they are
refused), it times ``SegmentationEngine.segment`` on the real Cityscapes frame
frankfurt_000001_058914:

- ``network input``: the frame already at the network input size (1024x512 unless ``--size``):
  normalisation + network + argmax;
- ``camera frame``: the 2048x1024 frame itself: resize + normalisation + network + argmax +
  upsampling to the frame size (the node's and the evaluator's work per frame);

and the fraction of the camera frame's pixels whose label equals torch fp32's. The unchanged path
(torch fp32, the architecture's oneDNN setting, denormals NOT flushed) runs first in a subprocess
(the flush is per thread and never undone in this process), so the speed-ups are ratios of one run;
its labels are compared with the flushed torch fp32 labels too. Settings take turns, medians of
``--repeats`` after ``--warmup``. Prints the command, load, CPU, versions and a Markdown table.
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
    PUBLISHED,
    RANDOM,
    alternating_medians,
    benchmark_checkpoint,
    machine_description,
    require_shared,
)
from video_seg_ros.backends import BACKENDS as ENGINE_BACKENDS
from video_seg_ros.runtime import PRECISIONS as ENGINE_PRECISIONS
from video_seg_ros.tools.arguments import parse_size

PROG = "bench/engine.py"
# Every concrete setting is measured ("auto" only picks one of them).
BACKENDS = tuple(name for name in ENGINE_BACKENDS if name != "auto")
PRECISIONS = tuple(name for name in ENGINE_PRECISIONS if name != "auto")


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
        "--size", type=parse_size, default=(1024, 512), help="network input WIDTHxHEIGHT"
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
        "--cache-dir", default=None, help="conversion cache (default: the engine's)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--baseline-only", default=None, help=argparse.SUPPRESS
    )  # the subprocess's job
    return parser


def real_frames(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 2048x1024 BGR camera frame and the same frame at the network input size."""
    camera = cv2.imread(str(require_shared() / CITYSCAPES_FRAME))
    return camera, cv2.resize(camera, size, interpolation=cv2.INTER_AREA)


def timed(engine, frame):
    return lambda: engine.segment(frame, "bgr").model_ms


def run_baseline(args) -> int:
    """Subprocess: the unchanged path (torch fp32, oneDNN as the model prefers, no flush)."""
    import torch

    from video_seg_ros.engine import SegmentationEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.baseline_only)
    camera, small = real_frames(args.size)
    report = {}
    for name in args.models:
        engine = SegmentationEngine(
            benchmark_checkpoint(name, args.size),
            device=args.device,
            backend="torch",
            precision="fp32",
            flush_denormals=False,
        )
        medians = alternating_medians(
            {"input": timed(engine, small), "camera": timed(engine, camera)},
            args.warmup,
            args.repeats,
        )
        np.save(out.with_name(f"{name}.labels.npy"), engine.segment(camera, "bgr").labels)
        report[name] = {
            **medians,
            "denormals_flushed": bool((torch.tensor([1e-40]) * 1.0).item() == 0.0),
        }
    out.write_text(json.dumps(report))
    return 0


def baseline_subprocess(args, folder: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--models",
        *args.models,
        "--size",
        f"{args.size[0]}x{args.size[1]}",
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
    for name in report:
        report[name]["labels"] = np.load(folder / f"{name}.labels.npy")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.baseline_only:
        return run_baseline(args)
    command = shlex.join(["python", PROG, *(sys.argv[1:] if argv is None else argv)])
    import torch

    from video_seg_ros.backends import BackendError
    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.runtime import PrecisionError

    if args.threads:
        torch.set_num_threads(args.threads)
    camera, small = real_frames(args.size)
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        baseline = {} if args.no_baseline else baseline_subprocess(args, Path(tmp))
    rows, refused = [], []
    for name in args.models:
        checkpoint = benchmark_checkpoint(name, args.size)
        engines = {}
        for backend in args.backends:
            for precision in args.precisions:
                try:
                    engines[(backend, precision)] = SegmentationEngine(
                        checkpoint,
                        device=args.device,
                        backend=backend,
                        precision=precision,
                        cache_dir=args.cache_dir,
                    )
                except (BackendError, PrecisionError) as error:
                    refused.append((name, backend, precision, str(error).splitlines()[0]))
        auto = SegmentationEngine(checkpoint, device=args.device, cache_dir=args.cache_dir)
        functions = {}
        for key, engine in engines.items():
            functions[(*key, "input")] = timed(engine, small)
            functions[(*key, "camera")] = timed(engine, camera)
        medians = alternating_medians(functions, args.warmup, args.repeats)
        reference = engines.get(("torch", "fp32"))
        reference_labels = reference.segment(camera, "bgr").labels if reference else None
        base = baseline.get(name)
        for (backend, precision), engine in engines.items():
            labels = engine.segment(camera, "bgr").labels
            row = {
                "model": name,
                "random_weights": name in RANDOM,
                "backend": backend,
                "precision": precision,
                "input_ms": medians[(backend, precision, "input")],
                "camera_ms": medians[(backend, precision, "camera")],
                "agreement_with_torch_fp32": None
                if reference_labels is None
                else float(np.mean(labels == reference_labels)),
            }
            if base:
                row["speedup_input"] = base["input"] / row["input_ms"]
                row["speedup_camera"] = base["camera"] / row["camera_ms"]
            rows.append(row)
        if base:
            rows.append(
                {
                    "model": name,
                    "random_weights": name in RANDOM,
                    "backend": "torch (unchanged: no flush)",
                    "precision": "fp32",
                    "input_ms": base["input"],
                    "camera_ms": base["camera"],
                    "speedup_input": 1.0,
                    "speedup_camera": 1.0,
                    "denormals_flushed": base["denormals_flushed"],
                    "agreement_with_torch_fp32": None
                    if reference_labels is None
                    else float(np.mean(base["labels"] == reference_labels)),
                }
            )
        print(
            f"{name}: backend auto -> {auto.backend} {auto.precision} "
            f"({auto.precision_decision.reason})"
            + (f" (backend fallback: {auto.fallback_reason})" if auto.fallback_reason else "")
        )
        for (backend, precision), engine in engines.items():
            if engine.precision_decision.agreement is not None:
                print(f"  gate, {backend} {precision}: {engine.precision_decision.reason}")
    width, height = args.size
    print(
        f"\n{command}\n{machine_description()}\ndevice {args.device}; real frame "
        f"{Path(CITYSCAPES_FRAME).name} "
        f"(2048x1024); median of {args.repeats} after {args.warmup} warm-up runs, settings taking "
        "turns\n"
    )
    print(
        f"| model | backend | precision | ms, {width}x{height} input | ms, 2048x1024 frame "
        "(pre+post) | "
        "speed-up vs unchanged (input / frame) | labels = torch fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        model = row["model"] + (" (random weights)" if row["random_weights"] else "")
        speedup = (
            f"{row['speedup_input']:.2f}x / {row['speedup_camera']:.2f}x"
            if "speedup_input" in row
            else "-"
        )
        agreement = (
            "-"
            if row["agreement_with_torch_fp32"] is None
            else f"{row['agreement_with_torch_fp32']:.4%}"
        )
        print(
            f"| {model} | {row['backend']} | {row['precision']} | {row['input_ms']:.1f} | "
            f"{row['camera_ms']:.1f} | {speedup} | {agreement} |"
        )
    if refused:
        print("\nRefused here:")
        for name, backend, precision, reason in refused:
            print(f"- {name} {backend} {precision}: {reason}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine_description(),
                    "rows": rows,
                    "refused": refused,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
