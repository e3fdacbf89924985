"""Training throughput (anchor frames per second) of the student alone and with each ETC loss.

Usage (from the repository root)::

    python bench/train_throughput.py  # published ESPNet p=2 q=3 + p=2 q=8 teacher, 512x256
    # native crops:
    python bench/train_throughput.py --student espnet-p2q8 --size 512x256 --batch 2 --phases
    python bench/train_throughput.py --student runs/weights/espnet_p2_q3_cityscapes.pt \\
        --teacher runs/weights/espnet_p2_q8_cityscapes.pt --batch 4 --steps 5
    python bench/train_throughput.py --student random-espnet-q8 --device cuda --batch 16 --steps 20

Each configuration runs the trainer's own step (``Trainer.compute_losses`` + backward + optimiser
step) on a fixed batch already on the device, so data loading and flow are left out (flow is
cached on disk after the first epoch; ``video-seg-train --profile N`` times a real step with its
data). "frames" are anchor frames t; every loss that needs the neighbour t+k runs the student on
twice as many images. Student and teacher are the published ESPNets from ../shared by default
(imported on the fly): the time DOES depend on the weights, since trained weights drive
activations into denormal floats (the trainer flushes them; issue 10). ``random-*`` names give
random weights, labelled as such. ``--phases`` prints the trainer's per-phase table
(student / teacher / each loss / backward / optimiser) for every row.
On a shared CPU the wall time depends on the other processes; the table also gives the CPU seconds
of this process per step (time.process_time), which the relative-cost column uses.
Prints a Markdown table and the command that made it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from bench_utils import PUBLISHED, RANDOM, benchmark_checkpoint, machine_description
from video_seg_ros.training.config import load_config
from video_seg_ros.training.trainer import Trainer
from video_seg_ros.tools.arguments import parse_size

CONFIGURATIONS = [
    ("student alone (CE)", {}),
    ("+ temporal loss", {"temporal": 0.4}),
    ("+ pixel distillation (t and t+k)", {"distill_pixel": 1.0}),
    ("+ pair-wise distillation", {"distill_pairwise": 1.0}),
    ("+ cross-frame pair-wise", {"distill_cross_frame": 1.0}),
    ("+ temporal distillation", {"distill_temporal": 1.0}),
    (
        "all (full ETC)",
        {
            "temporal": 0.4,
            "distill_pixel": 1.0,
            "distill_pairwise": 1.0,
            "distill_cross_frame": 1.0,
            "distill_temporal": 1.0,
        },
    ),
]


def _checkpoint_file(name_or_path: str, path: Path) -> str:
    """A checkpoint path as given, or a bench_utils name (published / random-*) saved at
    ``path``."""
    if name_or_path in PUBLISHED or name_or_path in RANDOM:
        benchmark_checkpoint(name_or_path).save(path)
        return str(path)
    return name_or_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = ", ".join(sorted(PUBLISHED) + sorted(RANDOM))
    parser.add_argument(
        "--student",
        default="espnet-p2q3",
        help=f"student: a checkpoint file or one of {names} (default espnet-p2q3, published)",
    )
    parser.add_argument(
        "--teacher",
        default="espnet-p2q8",
        help="teacher: a checkpoint file or a name as for --student (default espnet-p2q8)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="train.precision (auto, fp32, bf16, fp16); default: the trainer's (fp32 on a CPU)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also print the per-phase table (training/profiling.py) of every row",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(512, 256),
        help="training resolution WxH (default 512x256)",
    )
    parser.add_argument("--batch", type=int, default=4, help="anchor frames per step (default 4)")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per configuration (default 5)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only rows whose name contains one of these"
    )
    args = parser.parse_args(argv)
    width, height = args.size

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        rng = np.random.default_rng(0)
        for t in range(2):
            cv2.imwrite(
                str(tmp / "images" / f"bench_{t:06d}.png"),
                rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
            )
        student = _checkpoint_file(args.student, tmp / "student.pt")
        teacher = _checkpoint_file(args.teacher, tmp / "teacher.pt")
        batch = {
            "image": torch.rand(args.batch, 3, height, width),
            "neighbour": torch.rand(args.batch, 3, height, width),
            "flow": torch.randn(args.batch, 2, height, width) * 2.0,
            "label": torch.randint(0, 19, (args.batch, height, width)),
            "valid": torch.ones(args.batch, 1, height, width),
        }
        rows = []
        for name, weights in CONFIGURATIONS:
            if args.only and not any(word in name for word in args.only):
                continue
            model = {"init": student}
            overrides = [f"losses.{loss}.weight={w}" for loss, w in weights.items()]
            overrides.append("train.profile=true")
            if args.precision:
                overrides.append(f"train.precision={args.precision}")
            if any(loss.startswith("distill_") for loss in weights):
                overrides.append(f"teacher.checkpoint={teacher}")
            config = {
                "run_dir": str(tmp / "run"),
                "model": model,
                "data": {"train": [{"images": str(tmp / "images")}], "resize": [width, height]},
                "train": {"device": args.device, "batch_size": args.batch, "epochs": 1},
            }
            config_path = tmp / "bench.yaml"

            config_path.write_text(yaml.safe_dump(config))
            trainer = Trainer(load_config(config_path, overrides), progress=False)
            trainer._train_mode()
            device_batch = trainer._to_device(batch)
            times, cpu_times = [], []
            for step in range(args.warmup + args.steps):
                start, cpu_start = time.perf_counter(), time.process_time()
                total = sum(trainer.compute_losses(device_batch).values())
                with trainer.profiler.phase("backward"):
                    trainer.optimizer.zero_grad(set_to_none=True)
                    trainer.scaler.scale(total).backward()
                with trainer.profiler.phase("optimizer"):
                    trainer.scaler.step(trainer.optimizer)
                    trainer.scaler.update()
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                trainer.profiler.end_step(time.perf_counter() - start)
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
            if args.phases:
                print(
                    f"\n### {name}\n\n{trainer.profiler.table(skip_first=args.warmup)}",
                    file=sys.stderr,
                )
            step_s, cpu_s = statistics.median(times), statistics.median(cpu_times)
            rows.append((name, step_s, args.batch / step_s, cpu_s))
            print(
                f"{name}: {step_s * 1000:.0f} ms/step, {args.batch / step_s:.2f} frames/s, "
                f"{cpu_s:.2f} CPU s/step",
                file=sys.stderr,
            )

    base_cpu = rows[0][3] if rows else 1.0
    print(
        f"\nTraining throughput at {width}x{height}, batch {args.batch}, device {args.device}, "
        f"student {args.student}, teacher {args.teacher}; {machine_description()}\n"
    )
    # On a shared CPU wall time depends on the other processes; CPU seconds of this process do
    # much less, so the relative cost column uses them.
    print(
        "| configuration | wall ms / step | frames / s (wall) | CPU s / step | frames / CPU-s | "
        "cost relative to student alone (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, step_s, fps, cpu_s in rows:
        print(
            f"| {name} | {step_s * 1000:.0f} | {fps:.2f} | {cpu_s:.2f} | {args.batch / cpu_s:.2f} "
            "| "
            f"{cpu_s / base_cpu:.2f} |"
        )
    print(
        "\ncommand: python bench/train_throughput.py "
        f"{shlex.join(argv if argv is not None else sys.argv[1:])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
