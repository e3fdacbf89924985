"""What the LMANet memory costs: median time per frame with and without it, per backend, and where
it goes.

Usage (from the repository root; needs ../shared)::

    python bench/memory_overhead.py                          # published ESPNet p2q8, 1024x512, T=3
    python bench/memory_overhead.py --backends openvino --windows 9 21 --repeats 7
    python bench/memory_overhead.py --models espnet-p2q8 random-pspnet18 --key-channels 8

The base is a published checkpoint imported from ../shared/weights (``random-*``: random weights,
labelled); the memory model is that checkpoint plus a memory wrapper from
``add_memory_to_checkpoint`` whose memory weights are UNTRAINED: small random values (the time
does not depend on them; a fresh wrapper's zero gates would let OpenVINO fold layers away). Both
run through :class:`~video_seg_ros.engine.SegmentationEngine` (preprocessing + network + argmax,
``model_ms``) on consecutive real Cityscapes sequence frames resized to the input size; the memory
model streams with a full memory of T frames. Base and memory frames alternate, so load from other
processes hits both alike. Each backend in ``--backends`` gets its own row (the ratio that matters
is the one on the fastest backend; ``auto`` is OpenVINO on a CPU). The breakdown (torch backend)
times the memory's parts on the base's real 1/8 features: key/value convs and tiling of the new
frame, query conv, local attention, fusion. ``--profile`` adds torch.profiler's operator table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from bench_utils import (
    PUBLISHED,
    RANDOM,
    benchmark_checkpoint,
    machine_description,
    median_ms,
    require_shared,
    untrained_memory,
)
from video_seg_ros.backends import BackendError
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.models.local_attention import local_attention
from video_seg_ros.models.memory import FUSION_VARIANTS
from video_seg_ros.runtime import PrecisionError
from video_seg_ros.tools.arguments import parse_size


def time_pair(
    base: SegmentationEngine, memory: SegmentationEngine, frames, warmup: int, repeats: int
):
    """Medians of both engines' wall ``model_ms`` and process CPU ms, alternating frame by frame.

    CPU time (all threads of this process) is much less affected by other processes on a shared
    machine than wall time, so both are reported.
    """
    for i in range(max(warmup, memory.model.config.memory_length + 1)):
        base.segment(frames[i % len(frames)])
        memory.segment(frames[i % len(frames)])
    times = {"base_ms": [], "memory_ms": [], "base_cpu_ms": [], "memory_cpu_ms": []}
    for i in range(repeats):
        frame = frames[i % len(frames)]
        for name, engine in (("base", base), ("memory", memory)):
            cpu_start = time.process_time()
            times[f"{name}_ms"].append(engine.segment(frame).model_ms)
            times[f"{name}_cpu_ms"].append((time.process_time() - cpu_start) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def breakdown(memory: SegmentationEngine, frame: np.ndarray, repeats: int, profile: bool) -> dict:
    """Milliseconds of each memory part on real features (the engine's backend settings)."""
    model = memory.model
    x = memory.preprocess([frame])
    with torch.inference_mode(), memory._backend_context():
        features, _ = model.base.encode(x)
        memory_frames = memory.stream_state().memory.frames  # the engine keeps it per stream
        with model._memory_context(features.device):
            query = model.query_key(features)
            read = local_attention(query, memory_frames)
            parts = {
                "encoder": median_ms(lambda: model.base.encode(x), repeats),
                "memory key+value convs": median_ms(
                    lambda: (model.memory_key(features), model.memory_value(features)), repeats
                ),
                "memory entry (convs + tiling)": median_ms(
                    lambda: model.memory_entry(features), repeats
                ),
                "query key conv": median_ms(lambda: model.query_key(features), repeats),
                "local attention": median_ms(
                    lambda: local_attention(query, memory_frames), repeats
                ),
                "fusion": median_ms(lambda: model.fusion(features, read, query), repeats),
            }
            if profile:
                with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]
                ) as prof:
                    local_attention(query, memory_frames)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    parts["feature map"] = "x".join(str(s) for s in features.shape[1:])
    return parts


def real_sequence(size: tuple[int, int], count: int = 8) -> tuple[list[np.ndarray], str]:
    """Consecutive real Cityscapes frames (RGB) resized to the network input ``size`` (W, H)."""
    from video_seg_ros.frames import list_frames, read_rgb

    folder = require_shared() / "data" / "cityscapes_sequences"
    records = list_frames(folder)[:count]
    if not records:
        raise SystemExit(f"no frames under {folder}")
    return [
        cv2.resize(read_rgb(r.path), size, interpolation=cv2.INTER_AREA) for r in records
    ], str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["espnet-p2q8"],
        choices=sorted({**PUBLISHED, **RANDOM}),
        help="base checkpoints: published (imported from ../shared/weights) or random-* extras",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "openvino"],
        choices=["torch", "openvino", "tensorrt"],
        help="backends to time base and memory model on (default: torch openvino)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(1024, 512),
        help="model input size WIDTHxHEIGHT (default 1024x512)",
    )
    parser.add_argument("--memory-length", type=int, default=3, help="memory frames T (default 3)")
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[9],
        help="attention window sizes to time, odd, in feature pixels (default 9; paper 21)",
    )
    parser.add_argument("--key-channels", type=int, default=16, help="key channels (default 16)")
    parser.add_argument(
        "--value-channels", type=int, default=32, help="value channels (default 32)"
    )
    parser.add_argument(
        "--fusion", choices=FUSION_VARIANTS, default="residual-gated", help="fusion variant"
    )
    parser.add_argument("--tile", type=int, default=8, help="attention tile size (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed frames first (at least T+1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed frames; medians are reported"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="conversion cache (default: the engine's)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's table for the attention"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = args.size
    frames, source = real_sequence(args.size)
    rows = []
    jobs = [
        (name, window, backend)
        for name in args.models
        for window in args.windows
        for backend in args.backends
    ]
    for name, window, backend in tqdm(jobs, desc="timing", unit="model"):
        base_checkpoint = benchmark_checkpoint(name, args.size)
        config = {
            "memory_length": args.memory_length,
            "window": window,
            "key_channels": args.key_channels,
            "value_channels": args.value_channels,
            "fusion": args.fusion,
            "tile": args.tile,
        }
        try:
            base = SegmentationEngine(
                base_checkpoint, device=args.device, backend=backend, cache_dir=args.cache_dir
            )
            memory = SegmentationEngine(
                untrained_memory(base_checkpoint, config),
                device=args.device,
                backend=backend,
                cache_dir=args.cache_dir,
            )
        except (BackendError, PrecisionError) as error:
            tqdm.write(f"{name} window {window} {backend}: refused: {str(error).splitlines()[0]}")
            continue
        timing = time_pair(base, memory, frames, args.warmup, args.repeats)
        parts = (
            breakdown(memory, frames[0], args.repeats, args.profile) if backend == "torch" else {}
        )
        rows.append(
            {
                "model": name,
                "random_weights": name in RANDOM,
                "window": window,
                "backend": backend,
                "precision": base.precision,
                **timing,
                "ratio": timing["memory_ms"] / timing["base_ms"],
                "cpu_ratio": timing["memory_cpu_ms"] / timing["base_cpu_ms"],
                "parts_ms": parts,
                "memory_parameters": sum(p.numel() for p in memory.model.memory_parameters()),
            }
        )
        tqdm.write(
            f"{name} window {window} {backend}: base {timing['base_ms']:.1f} ms, with memory "
            f"{timing['memory_ms']:.1f} ms (ratio {rows[-1]['ratio']:.3f}; CPU time ratio "
            f"{rows[-1]['cpu_ratio']:.3f})"
        )
    command = shlex.join(
        ["python", "bench/memory_overhead.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(
        f"\n{command}\n{machine_description()}\nMemory overhead, {width}x{height} input, "
        f"T={args.memory_length}, "
        f"keys {args.key_channels}, values {args.value_channels}, fusion {args.fusion}, device "
        f"{args.device}; "
        f"real frames from {source}; memory weights UNTRAINED (add_memory_to_checkpoint, small "
        "random memory layers)\n"
    )
    print(
        "| model | backend | precision | window | base ms | with memory ms | ratio | base CPU ms "
        "| "
        "with memory CPU ms | CPU ratio | memory params |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        model = row["model"] + (" (random weights)" if row["random_weights"] else "")
        print(
            f"| {model} | {row['backend']} | {row['precision']} | {row['window']}x{row['window']} "
            "| "
            f"{row['base_ms']:.1f} | {row['memory_ms']:.1f} | {row['ratio']:.3f} | "
            f"{row['base_cpu_ms']:.1f} | "
            f"{row['memory_cpu_ms']:.1f} | {row['cpu_ratio']:.3f} | {row['memory_parameters']:,} |"
        )
    broken_down = [row for row in rows if row["parts_ms"]]
    if broken_down:
        print("\nWhere the memory's time goes, torch backend (ms, medians; encoder for scale):\n")
        part_names = [k for k in broken_down[0]["parts_ms"] if k != "feature map"]
        print("| model | window | features | " + " | ".join(part_names) + " |")
        print("|---|---|---|" + "---|" * len(part_names))
        for row in broken_down:
            parts = row["parts_ms"]
            print(
                f"| {row['model']} | {row['window']} | {parts['feature map']} | "
                + " | ".join(f"{parts[k]:.1f}" for k in part_names)
                + " |"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"command": command, "machine": machine_description(), "rows": rows}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
