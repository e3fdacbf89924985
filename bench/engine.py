"""Median model time per frame of each architecture through SegmentationEngine, on this machine.

Usage (from the repository root)::

    python bench/engine.py                       # CPU: 1024x512 and 512x256, oneDNN off and on
    python bench/engine.py --sizes 512x256 --repeats 10 --archs espnet-q3 pspnet18
    python bench/engine.py --device cuda --json bench.json

Time = preprocessing + network + argmax (``SegmentationResult.model_ms``) for a frame already at
the model's input size, median over ``--repeats`` runs after ``--warmup`` runs. Random weights:
the time does not depend on their values. Prints a Markdown table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys

import numpy as np
import torch
from tqdm import tqdm

from video_seg_ros.checkpoint import Checkpoint, Preprocessing
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.models import available_architectures, build_model
from video_seg_ros.tools.arguments import parse_size

# name -> (arch, builder kwargs)
CONFIGS = {
    "espnet-q3": ("espnet", {"num_classes": 20, "p": 2, "q": 3}),
    "espnet-q8": ("espnet", {"num_classes": 20, "p": 2, "q": 8}),
    "pspnet18": ("pspnet18", {"num_classes": 19}),
    "cgnet": ("cgnet", {"num_classes": 19, "m": 3, "n": 21}),
}


def make_checkpoint(arch: str, kwargs: dict, width: int, height: int) -> Checkpoint:
    model = build_model(arch, **kwargs)
    return Checkpoint.for_label_set(arch, kwargs, model.state_dict(), "cityscapes",
                                    Preprocessing(input_height=height, input_width=width))


def time_engines(engines: dict[str, SegmentationEngine], frame: np.ndarray, warmup: int,
                 repeats: int) -> dict[str, float]:
    """Median ms per setting; the settings take turns, so load changes on a shared machine hit
    them alike and their ratio stays meaningful."""
    for engine in engines.values():
        for _ in range(warmup):
            engine.segment(frame)
    times: dict[str, list[float]] = {setting: [] for setting in engines}
    for _ in range(repeats):
        for setting, engine in engines.items():
            times[setting].append(engine.segment(frame).model_ms)
    return {setting: statistics.median(values) for setting, values in times.items()}



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=None, choices=sorted(CONFIGS),
                        help="configurations to time (default: every registered one)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(1024, 512), (512, 256)],
                        help="model input sizes WIDTHxHEIGHT (default: 1024x512 512x256)")
    parser.add_argument("--mkldnn", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="CPU oneDNN settings to compare (ignored on CUDA)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    registered = set(available_architectures())
    names = args.archs or [n for n, (arch, _) in CONFIGS.items() if arch in registered]
    missing = [n for n in names if CONFIGS[n][0] not in registered]
    if missing:
        parser.error(f"not implemented in this checkout: {', '.join(missing)}")
    settings = args.mkldnn if args.device == "cpu" else ["-"]
    jobs = [(n, s) for n in names for s in args.sizes]
    rows = []
    rng = np.random.default_rng(0)
    for name, (width, height) in tqdm(jobs, desc="timing", unit="config"):
        arch, kwargs = CONFIGS[name]
        checkpoint = make_checkpoint(arch, kwargs, width, height)
        engines = {m: SegmentationEngine(checkpoint, device=args.device,
                                         cpu_mkldnn=(m == "on") if m != "-" else None) for m in settings}
        preferred = getattr(next(iter(engines.values())).model, "prefers_mkldnn", True)
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for mkldnn, ms in time_engines(engines, frame, args.warmup, args.repeats).items():
            rows.append({"model": name, "size": f"{width}x{height}", "mkldnn": mkldnn,
                         "default": mkldnn == "-" or (mkldnn == "on") == preferred, "ms": round(ms, 1)})
    command = shlex.join(["python", "bench/engine.py", *(sys.argv[1:] if argv is None else argv)])
    device = args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, " \
                                                       f"{torch.get_num_threads()} threads)"
    print(f"\n{command}\ndevice: {device}, torch {torch.__version__}, median of {args.repeats}\n")
    print("| model | input | oneDNN | ms/frame | fps |\n|---|---|---|---|---|")
    for row in rows:
        star = " (default)" if row["default"] and row["mkldnn"] != "-" else ""
        print(f"| {row['model']} | {row['size']} | {row['mkldnn']}{star} | {row['ms']:.1f} | "
              f"{1000.0 / row['ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"command": command, "device": device, "rows": rows}, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
