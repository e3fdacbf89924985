"""Time from starting ``video_seg_node`` to its first published label, cold and warm.

Usage (from the repository root; the published weights need ../shared)::

    python bench/startup.py                                   # ESPNet p2q8, backend auto
    python bench/startup.py --backend torch --precision fp32 --warm-runs 2
    python bench/startup.py --checkpoint default              # the embedded model

Each run starts the node as a new process (``python -m video_seg_ros.ros.executable``), publishes
a real 2048x1024 frame (a synthetic one without ../shared) every 100 ms from this process and stops
the clock at the first ``~/labels`` message. ``cold``: an empty conversion cache
(``XDG_CACHE_HOME`` in a new temporary folder: OpenVINO conversion and the precision gate run);
``warm``: the same cache again (what every later start of a node sees). Phases, from the node's
own log stamps: process start -> ``configured`` (imports, checkpoint, model built, backend
converted or loaded, precision settled, warm-up pass) -> ``ready`` -> first label received here.
Prints the command, load, CPU and a Markdown table.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_utils import (
    CITYSCAPES_FRAME,
    benchmark_checkpoint,
    machine_description,
    shared_dir,
    spinning_node,
)
from video_seg_ros.processes import LoggedProcess

PROG = "bench/startup.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
NODE = "startup_bench_node"
TOPIC = "/startup_bench/image"
#: "[INFO] [1796401900.113593931] [node]: message" -> the epoch seconds of a log line.
LOG_STAMP = re.compile(r"\[(\d+\.\d+)\]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint path or 'default' (default: published ESPNet p2q8, imported)",
    )
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--warm-runs", type=int, default=2, help="starts with the warm cache")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per start")
    return parser


def camera_frame() -> np.ndarray:
    """A real 2048x1024 RGB frame, or the synthetic street at that size without ../shared."""
    root = shared_dir()
    if root is not None and (root / CITYSCAPES_FRAME).is_file():
        from video_seg_ros.frames import read_rgb

        return read_rgb(root / CITYSCAPES_FRAME)
    from video_seg_ros.precision import calibration_frames

    return calibration_frames(2048, 1024)[0]


def log_time(process: LoggedProcess, text: str) -> float | None:
    """Epoch seconds of the node's first log line containing ``text``."""
    for line in process.output().splitlines():
        if text in line:
            match = LOG_STAMP.search(line)
            return float(match.group(1)) if match else None
    return None


def one_start(args, checkpoint: str, cache_home: Path, publish, labels, log_dir, name):
    """Start the node, publish until its first label; phases in seconds from the start."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    command = [
        sys.executable,
        "-m",
        "video_seg_ros.ros.executable",
        "--ros-args",
        "-r",
        f"__node:={NODE}",
        "-r",
        f"image:={TOPIC}",
        "-p",
        f"checkpoint:={checkpoint}",
        "-p",
        f"backend:={args.backend}",
        "-p",
        f"precision:={args.precision}",
    ]
    labels.clear()
    started_wall, started = time.time(), time.perf_counter()
    process = LoggedProcess(command, log_dir / f"{name}.log", env=env, cwd=REPO_ROOT)
    try:
        deadline = started + args.timeout
        while not labels:
            if not process.alive():
                raise SystemExit(f"the node exited during {name}:\n{process.tail()}")
            if time.perf_counter() > deadline:
                raise SystemExit(f"no label within {args.timeout} s ({name}):\n{process.tail()}")
            publish()
            time.sleep(0.1)
        first_label = labels[0] - started
        phases = {
            phase: (stamp - started_wall) if stamp is not None else float("nan")
            for phase, stamp in (
                ("configured", log_time(process, "configured:")),
                ("ready", log_time(process, "] ready") or log_time(process, ": ready")),
            )
        }
        backend = re.search(r"backend (\w+), precision (\w+)", process.output())
    finally:
        process.stop()
    return {
        "run": name,
        **phases,
        "first_label": first_label,
        "runs": " ".join(backend.groups()) if backend else "?",
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", PROG, *(sys.argv[1:] if argv is None else argv)])
    from video_seg_ros.ros.dds import large_image_environment

    os.environ.update(large_image_environment())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    work = Path(tempfile.mkdtemp(prefix="startup_bench_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = str(benchmark_checkpoint("espnet-p2q8").save(work / "espnet_p2q8.pt"))

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from video_seg_ros.image_encoding import fill_image

    bench = spinning_node("startup_bench")
    labels: list[float] = []
    bench.create_subscription(
        Image, f"/{NODE}/labels", lambda msg: labels.append(time.perf_counter()), 10
    )
    publisher = bench.create_publisher(Image, TOPIC, qos_profile_sensor_data)
    message = fill_image(Image(), camera_frame(), "rgb8")

    def publish():
        message.header.stamp = bench.get_clock().now().to_msg()
        publisher.publish(message)

    cache_home = work / "cache"
    rows = []
    for number, kind in enumerate(["cold"] + ["warm"] * args.warm_runs):
        name = f"{kind}{number}"
        rows.append(one_start(args, checkpoint, cache_home, publish, labels, work, name))
    rclpy.shutdown()
    print(f"{command}\n{machine_description()}\ncheckpoint {checkpoint}\n")
    print("| start | runs | configured s | ready s | first label s |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['run']} | {row['runs']} | {row['configured']:.2f} | {row['ready']:.2f} | "
            f"{row['first_label']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
