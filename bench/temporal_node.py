"""The temporal modes through the node: output rate, latency and keyframe share at a camera's rate.

Usage (from the repository root; needs ../shared)::

    python bench/temporal_node.py  # p2q8, aachen_000002, 10 Hz, off vs adaptive
    python bench/temporal_node.py --modes off fuse adaptive --seconds 30 --rate 10
    python bench/temporal_node.py --modes off adaptive adaptive-lag3 --precision fp32

``adaptive-lagN``: mode adaptive with ``keyframe_lag: N`` (the network in the background, its
result joining N frames later).

For each mode a fresh ``video_seg_node`` process (as its console module, sensor-data QoS,
keep-latest queue: what a live camera gets) serves the real 2048x1024 frames of a shared snippet,
published by this process at ``--rate`` Hz with stamps ``1/rate`` apart (the frames loop; the loop
is a scene cut the adaptive clock must notice) for ``--seconds``. Reported per mode: labels
published per second, end-to-end latency (publish -> labels received here) p50/p95 over every
answered frame, the node's own latency (message received -> labels published, from
``/diagnostics``) for keyframes and for propagated frames, keyframe share, frames dropped by
keep-latest. The ratio of output rates is measured in one run, modes one after the other.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_utils import (
    NodeOutputs,
    benchmark_checkpoint,
    machine_description,
    require_shared,
    untrained_memory,
)

PROG = "bench/temporal_node.py"
REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["off", "adaptive"],
        type=mode_spec,
        help="off, fuse, adaptive, or adaptive-lagN (keyframe_lag N)",
    )
    parser.add_argument(
        "--snippet", default="aachen_000002", help="folder of ../shared/data/cityscapes_sequences"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="input rate in Hz")
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per mode")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--keyframe-max-interval",
        type=int,
        default=None,
        help="the node's keyframe_max_interval (default: the node's own default)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="serve p2q8 with an LMANet memory (default settings, untrained random memory "
        "weights): a memory model through the node",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    return parser


def mode_spec(text: str) -> str:
    if text in ("off", "fuse", "adaptive") or re.fullmatch(r"adaptive-lag\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use off, fuse, adaptive or adaptive-lagN")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", PROG, *(sys.argv[1:] if argv is None else argv)])
    from video_seg_ros.frames import list_frames, read_rgb
    from video_seg_ros.ros.dds import large_image_environment

    env = large_image_environment()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    os.environ.update(env)  # this process loads the same Fast DDS profile
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from video_seg_ros.image_encoding import fill_image

    folder = require_shared() / "data" / "cityscapes_sequences" / args.snippet / "leftImg8bit"
    frames = [read_rgb(record.path) for record in list_frames(folder)]
    workdir = Path(tempfile.mkdtemp(prefix="temporal_node_"))
    model = benchmark_checkpoint("espnet-p2q8")
    if args.memory:
        model = untrained_memory(model, {})
    checkpoint = str(model.save(workdir / "espnet_p2q8.pt"))
    messages = [fill_image(Image(), frame, "rgb8") for frame in frames]
    rclpy.init()
    probe = rclpy.create_node("temporal_node_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=lambda: _spin(executor), daemon=True).start()
    rows = []
    try:
        for mode in args.modes:
            rows.append(
                run_mode(
                    mode,
                    args,
                    env,
                    checkpoint,
                    messages,
                    probe,
                    workdir,
                    Image,
                    DiagnosticArray,
                    qos_profile_sensor_data,
                )
            )
    finally:
        executor.shutdown(timeout_sec=2.0)
        probe.destroy_node()
        rclpy.try_shutdown()
    print(
        f"\n{command}\n{machine_description()}\nfrom {len(frames)} real "
        f"{frames[0].shape[1]}x{frames[0].shape[0]} "
        f"frames of {args.snippet} at {args.rate:g} Hz for {args.seconds:g} s per mode; published "
        f"ESPNet p2q8{' with an untrained LMANet memory' if args.memory else ''}\n"
    )
    print(
        "| mode | backend / precision | published | labels out | output fps | e2e p50 / p95 ms | "
        "node latency keyframe / propagated p50 ms | keyframe share | dropped (keep-latest) | "
        "rejected | error lines in the node's log |"
    )
    print("|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['runs']} | {row['published']} | {row['answered']} | "
            f"{row['fps']:.2f} | "
            f"{row['p50']:.0f} / {row['p95']:.0f} | {row['keyframe_p50']} / "
            f"{row['propagated_p50']} | "
            f"{row['keyframe_share']} | {row['dropped']} | {row['rejected']} | "
            f"{error_lines(row['log'])} |"
        )
    by_mode = {row["mode"]: row for row in rows}
    if "off" in by_mode and by_mode["off"]["fps"] > 0:
        for mode in by_mode:
            if mode.startswith("adaptive"):
                print(
                    f"output rate {mode} / off: "
                    f"{by_mode[mode]['fps'] / by_mode['off']['fps']:.2f}x"
                )
    return 0


def _spin(executor) -> None:
    try:
        executor.spin()
    except Exception:  # ExternalShutdownException at exit
        pass


def run_mode(
    mode, args, env, checkpoint, messages, probe, workdir, Image, DiagnosticArray, sensor_qos
) -> dict:
    name = f"temporal_bench_{mode.replace('-', '_')}_{os.getpid()}"
    topic = f"/{name}_camera/image"
    log_path = workdir / f"{name}.log"
    node_command = [
        sys.executable,
        "-m",
        "video_seg_ros.ros.executable",
        "--ros-args",
        "-r",
        f"__node:={name}",
        "-r",
        f"image:={topic}",
        "-p",
        f"checkpoint:={checkpoint}",
        "-p",
        "device:=cpu",
        "-p",
        f"backend:={args.backend}",
        "-p",
        f"precision:={args.precision}",
        "-p",
        f"temporal_mode:='{mode.split('-')[0]}'",
        "-p",
        "diagnostics_period_s:=0.5",
        "-p",
        "consistency_stride:=5",
    ]
    if "-lag" in mode:
        node_command += ["-p", f"keyframe_lag:={mode.split('-lag')[1]}"]
    if args.keyframe_max_interval is not None:
        node_command += ["-p", f"keyframe_max_interval:={args.keyframe_max_interval}"]
    with open(log_path, "wb") as log:
        node = subprocess.Popen(
            node_command, env=env, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT
        )
    outputs = NodeOutputs(name)
    arrivals, diagnostics = outputs.arrivals, outputs.diagnostics
    sent: dict[tuple[int, int], float] = {}
    labels_sub = probe.create_subscription(Image, f"/{name}/labels", outputs.on_labels, 10)
    diag_sub = probe.create_subscription(
        DiagnosticArray, "/diagnostics", outputs.on_diagnostics, 10
    )
    publisher = probe.create_publisher(Image, topic, sensor_qos)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while publisher.get_subscription_count() == 0 or labels_sub is None:
            if node.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"{name} did not start:\n{log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
        time.sleep(2.0)  # the labels connection settles too
        base_ns = time.time_ns()
        period = 1.0 / args.rate
        count = int(args.seconds * args.rate)
        start = time.perf_counter()
        for i in range(count):
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            msg = messages[i % len(messages)]
            stamp_ns = base_ns + int(i * period * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            msg.header.frame_id = "bench_camera"
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()
            publisher.publish(msg)
        time.sleep(3.0)  # the last frames finish; one more diagnostics period
        latencies = [(arrivals[key] - t) * 1000.0 for key, t in sent.items() if key in arrivals]
        answered_times = sorted(arrivals[key] for key in sent if key in arrivals)
        span = answered_times[-1] - answered_times[0] if len(answered_times) > 1 else float("nan")
        last = diagnostics[-1] if diagnostics else {}
        return {
            "mode": mode,
            "runs": f"{last.get('backend')} / {last.get('precision')}",
            "published": count,
            "answered": len(latencies),
            "fps": (len(answered_times) - 1) / span if span > 0 else 0.0,
            "p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
            "keyframe_p50": last.get("keyframe_latency_p50_ms") or "-",
            "propagated_p50": last.get("propagated_latency_p50_ms") or "-",
            "keyframe_share": last.get("keyframe_share") or "-",
            "dropped": last.get("dropped"),
            "rejected": last.get("rejected"),
            "log": log_path,
        }
    finally:
        probe.destroy_subscription(labels_sub)
        probe.destroy_subscription(diag_sub)
        probe.destroy_publisher(publisher)
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()


def error_lines(log_path: Path) -> int:
    """Lines of the node's log that report an error or a traceback (after it stopped)."""
    text = log_path.read_text(errors="replace")
    return sum(("[ERROR]" in line or "Traceback" in line) for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
