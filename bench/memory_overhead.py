"""What the LMANet memory costs: median time per frame with and without it, and where it goes.

Usage (from the repository root)::

    python bench/memory_overhead.py                          # ESPNet and PSP18, 1024x512, T=3, CPU
    python bench/memory_overhead.py --windows 9 21 --repeats 7
    python bench/memory_overhead.py --archs espnet-q8 --key-channels 8 --value-channels 16

Both models run through :class:`~video_seg_ros.engine.SegmentationEngine` (preprocessing + network +
argmax, ``model_ms``) on frames already at the input size; the memory model streams (``step``) with
a full memory of T frames. Base and memory frames alternate, so load from other processes hits both
alike. The breakdown times the memory's parts on the base's real 1/8 features: key/value convs and
tiling of the new frame, query conv, local attention, fusion. ``--profile`` adds torch.profiler's
operator table for the attention. Random weights: times do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import engine as ENGINE_BENCH  # bench/engine.py: model configurations and checkpoint maker
from bench_utils import median_ms
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.models.local_attention import local_attention
from video_seg_ros.models.memory import FUSION_VARIANTS, add_memory_to_checkpoint
from video_seg_ros.tools.arguments import parse_size




def time_pair(base: SegmentationEngine, memory: SegmentationEngine, frames, warmup: int, repeats: int):
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
        memory_frames = model.state.frames
        with model._memory_context(features.device):
            query = model.query_key(features)
            read = local_attention(query, memory_frames)
            parts = {
                "encoder": median_ms(lambda: model.base.encode(x), repeats),
                "memory key+value convs": median_ms(lambda: (model.memory_key(features), model.memory_value(features)), repeats),
                "memory entry (convs + tiling)": median_ms(lambda: model.memory_entry(features), repeats),
                "query key conv": median_ms(lambda: model.query_key(features), repeats),
                "local attention": median_ms(lambda: local_attention(query, memory_frames), repeats),
                "fusion": median_ms(lambda: model.fusion(features, read, query), repeats),
            }
            if profile:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    local_attention(query, memory_frames)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    parts["feature map"] = "x".join(str(s) for s in features.shape[1:])
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["espnet-q8", "pspnet18"], choices=sorted(ENGINE_BENCH.CONFIGS),
                        help="base configurations (bench/engine.py names; default: espnet-q8 pspnet18)")
    parser.add_argument("--size", type=parse_size, default=(1024, 512),
                        help="model input size WIDTHxHEIGHT (default 1024x512)")
    parser.add_argument("--memory-length", type=int, default=3, help="memory frames T (default 3)")
    parser.add_argument("--windows", type=int, nargs="+", default=[9],
                        help="attention window sizes to time, odd, in feature pixels (default 9; paper 21)")
    parser.add_argument("--key-channels", type=int, default=16, help="key channels (default 16)")
    parser.add_argument("--value-channels", type=int, default=32, help="value channels (default 32)")
    parser.add_argument("--fusion", choices=FUSION_VARIANTS, default="residual-gated", help="fusion variant")
    parser.add_argument("--tile", type=int, default=8, help="attention tile size (default 8)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] (default cpu)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (at least T+1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed frames; medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table for the attention")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = args.size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    rows = []
    jobs = [(name, window) for name in args.archs for window in args.windows]
    for name, window in tqdm(jobs, desc="timing", unit="model"):
        arch, kwargs = ENGINE_BENCH.CONFIGS[name]
        base_checkpoint = ENGINE_BENCH.make_checkpoint(arch, kwargs, width, height)
        config = {"memory_length": args.memory_length, "window": window, "key_channels": args.key_channels,
                  "value_channels": args.value_channels, "fusion": args.fusion, "tile": args.tile}
        base = SegmentationEngine(base_checkpoint, device=args.device)
        memory = SegmentationEngine(add_memory_to_checkpoint(base_checkpoint, config), device=args.device)
        timing = time_pair(base, memory, frames, args.warmup, args.repeats)
        parts = breakdown(memory, frames[0], args.repeats, args.profile)
        rows.append({"model": name, "window": window, **timing,
                     "ratio": timing["memory_ms"] / timing["base_ms"],
                     "cpu_ratio": timing["memory_cpu_ms"] / timing["base_cpu_ms"], "parts_ms": parts,
                     "memory_parameters": sum(p.numel() for p in memory.model.memory_parameters()),
                     "cpu_mkldnn": base.cpu_mkldnn})
        tqdm.write(f"{name} window {window}: base {timing['base_ms']:.1f} ms, with memory {timing['memory_ms']:.1f} ms "
                   f"(ratio {rows[-1]['ratio']:.3f}; CPU time ratio {rows[-1]['cpu_ratio']:.3f}); parts {parts}")
    command = shlex.join(["python", "bench/memory_overhead.py", *(sys.argv[1:] if argv is None else argv)])
    device = str(base.device) if rows else args.device
    print(f"\nMemory overhead, {width}x{height} input, T={args.memory_length}, keys {args.key_channels}, "
          f"values {args.value_channels}, fusion {args.fusion}, device {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}\n")
    print("| model | window | base ms | with memory ms | ratio | base CPU ms | with memory CPU ms | CPU ratio | memory params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['window']}x{row['window']} | {row['base_ms']:.1f} | {row['memory_ms']:.1f} | "
              f"{row['ratio']:.3f} | {row['base_cpu_ms']:.1f} | {row['memory_cpu_ms']:.1f} | {row['cpu_ratio']:.3f} | "
              f"{row['memory_parameters']:,} |")
    print("\nWhere the memory's time goes (ms, medians; encoder for scale):\n")
    part_names = [k for k in rows[0]["parts_ms"] if k != "feature map"] if rows else []
    print("| model | window | features | " + " | ".join(part_names) + " |")
    print("|---|---|---|" + "---|" * len(part_names))
    for row in rows:
        parts = row["parts_ms"]
        print(f"| {row['model']} | {row['window']} | {parts['feature map']} | "
              + " | ".join(f"{parts[k]:.1f}" for k in part_names) + " |")
    print(f"\nCommand: {command}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
