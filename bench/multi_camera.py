"""Several cameras: one video_seg_node serving N cameras against N single-camera nodes.

For each N (default 1, 2, 4): N cameras publish 1024x512 real Cityscapes sequence frames at
``--rate`` Hz each (default 10) for ``--seconds``, first to ONE node with ``cameras: [cam0, ...]``
(one model, frames batched), then to N nodes of one camera each. Per camera: frames per second
answered, latency p50/p95 (publish -> labels received in this process); per node process: resident
memory (VmRSS from /proc/<pid>/status, read at the end of the run). Target (issue 17): one process
serving N cameras answers at least the frames per second of N processes, with <= 40 % of their
memory (issue 13 hoped for 1.5x with 4 cameras).

    .venv/bin/python bench/multi_camera.py --weights ../shared/weights/espnet/espnet_p_2_q_8.pth \\
        --cameras 1,2,4 --seconds 20 --backend auto --precision auto \\
        --json outputs/multi_camera.json

Weights: the published ESPNet p=2 q=8 Cityscapes state_dict, converted with the project's importer
(``video-seg-import``'s library function). Frames: ../shared/data/cityscapes_sequences, resized
to 1024x512. Every node is started as the ``video_seg_node`` console script of this environment,
with the Fast DDS large-image profile, keep-latest input (frame_queue_size 1), best-effort camera
QoS, and only ``~/labels`` subscribed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import machine_description, require_shared  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = (1024, 512)  # width, height of the camera frames
TARGET_FPS_RATIO, TARGET_MEMORY_RATIO = 1.0, 0.40


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="published ESPNet p2q8 Cityscapes state_dict (default: in ../shared)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a project checkpoint instead of --weights"
    )
    parser.add_argument("--cameras", default="1,2,4", help="comma-separated camera counts N")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="frames per second per camera (Hz)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="measured publishing time per run"
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=3.0, help="publishing before measuring"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--backend", default="auto", help="auto | torch | openvino | tensorrt")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="node parameter cpu_threads (0 = default)"
    )
    parser.add_argument(
        "--modes", default="one,separate", help="one (one process), separate (N processes)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for the nodes"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser


def resident_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def load_frames(count: int = 12) -> list[np.ndarray]:
    import cv2

    from video_seg_ros.frames import list_frames, read_rgb

    root = require_shared() / "data" / "cityscapes_sequences"
    frames = []
    for sequence in sorted(p for p in root.iterdir() if p.is_dir()):
        for record in list_frames(sequence)[:count]:
            frames.append(cv2.resize(read_rgb(record.path), SIZE, interpolation=cv2.INTER_AREA))
    if not frames:
        raise SystemExit(f"no frames found under {root}")
    return frames


def prepare_checkpoint(args) -> str:
    if args.checkpoint is not None:
        return str(args.checkpoint)
    from video_seg_ros.weights_import import import_weights

    weights = args.weights or require_shared() / "weights" / "espnet" / "espnet_p_2_q_8.pth"
    folder = Path(tempfile.mkdtemp(prefix="multi_camera_"))  # kept: the nodes read it at start-up
    return str(
        import_weights("espnet", "cityscapes", weights).save(folder / "espnet_p2q8_cityscapes.pt")
    )


def node_command(name: str, checkpoint: str, cameras: list[str], args) -> list[str]:
    script = Path(sys.executable).parent / "video_seg_node"
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "video_seg_ros.ros.executable"]
    )
    command += [
        "--ros-args",
        "-r",
        f"__node:={name}",
        "-p",
        f"checkpoint:={checkpoint}",
        "-p",
        f"device:={args.device}",
        "-p",
        f"backend:={args.backend}",
        "-p",
        f"precision:={args.precision}",
        "-p",
        f"cpu_threads:={args.cpu_threads}",
        "-p",
        "publish_color:=false",
        "-p",
        "consistency_metric:=false",
        "-p",
        "diagnostics_period_s:=1.0",
    ]
    if len(cameras) > 1 or name.endswith("_one"):
        command += ["-p", "cameras:=[" + ",".join(f"'{c}'" for c in cameras) + "]"]
        command += [arg for c in cameras for arg in ("-r", f"{c}/image:=/bench_mc/{c}/image")]
    else:
        command += ["-r", f"image:=/bench_mc/{cameras[0]}/image"]
    return command


class Probe:
    """This process's rclpy side: one publisher per camera, one labels subscription per output."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("multi_camera_bench")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.arrivals: dict[tuple[str, int, int], float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # ExternalShutdownException at exit
            pass

    def subscribe(self, camera: str, topic: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        def on_labels(msg):
            with self._lock:
                self.arrivals.setdefault(
                    (camera, msg.header.stamp.sec, msg.header.stamp.nanosec), time.perf_counter()
                )

        return self.node.create_subscription(
            Image, topic, on_labels, QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        )

    def forget(self):
        """Drop earlier runs' arrivals (a camera name recurs in every run)."""
        with self._lock:
            self.arrivals.clear()

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def run(mode: str, count: int, frames, checkpoint: str, args, probe: Probe, env) -> dict:
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from video_seg_ros.image_encoding import fill_image

    cameras = [f"cam{i}" for i in range(count)]
    tag = f"{mode}{count}_{os.getpid()}"
    probe.forget()
    if mode == "one":
        groups = {f"bench_{tag}_one": cameras}
    else:
        groups = {f"bench_{tag}_{camera}": [camera] for camera in cameras}
    logs, processes = {}, {}
    for name, served in groups.items():
        logs[name] = Path(tempfile.gettempdir()) / f"{name}.log"
        with open(logs[name], "wb") as log:  # a file, not a pipe: a full pipe would stall the node
            processes[name] = subprocess.Popen(
                node_command(name, checkpoint, served, args),
                env=env,
                cwd=str(REPO_ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    subscriptions, publishers = [], {}
    for name, served in groups.items():
        for camera in served:
            suffix = f"{camera}/labels" if mode == "one" else "labels"
            subscriptions.append(probe.subscribe(camera, f"/{name}/{suffix}"))
            publishers[camera] = probe.node.create_publisher(
                Image, f"/bench_mc/{camera}/image", qos_profile_sensor_data
            )
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline and not all(
        p.get_subscription_count() for p in publishers.values()
    ):
        if any(p.poll() is not None for p in processes.values()):
            break
        time.sleep(0.2)
    failed = [name for name, p in processes.items() if p.poll() is not None]
    if failed or not all(p.get_subscription_count() for p in publishers.values()):
        for p in processes.values():
            p.kill()
        raise SystemExit(f"nodes did not start ({', '.join(failed) or 'timeout'}); see {logs}")

    messages = [fill_image(Image(), frame, "rgb8") for frame in frames]
    sent: dict[str, dict[tuple[int, int], float]] = {camera: {} for camera in cameras}
    period = 1.0 / args.rate
    start = time.perf_counter()
    measure_from = start + args.warmup_seconds
    end = measure_from + args.seconds
    tick = 0
    while time.perf_counter() < end:
        due = start + tick * period
        time.sleep(max(0.0, due - time.perf_counter()))
        stamp_ns = time.time_ns()
        for index, camera in enumerate(cameras):
            msg = messages[(tick + 5 * index) % len(messages)]
            msg.header.frame_id = camera
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            published_at = time.perf_counter()
            publishers[camera].publish(msg)
            if published_at >= measure_from:
                sent[camera][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = published_at
        tick += 1
    time.sleep(2.0)  # answers still in flight
    memory = {name: resident_mb(p.pid) for name, p in processes.items()}
    for p in processes.values():
        p.send_signal(2)
    for p in processes.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    for subscription in subscriptions:
        probe.node.destroy_subscription(subscription)
    for publisher in publishers.values():
        probe.node.destroy_publisher(publisher)

    per_camera = {}
    for camera in cameras:
        latencies = [
            (probe.arrivals[(camera, *key)] - at) * 1000.0
            for key, at in sent[camera].items()
            if (camera, *key) in probe.arrivals
        ]
        per_camera[camera] = {
            "published": len(sent[camera]),
            "answered": len(latencies),
            "answered_including_warmup": sum(1 for key in probe.arrivals if key[0] == camera),
            "fps": len(latencies) / args.seconds,
            "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        }
    total_fps = sum(c["fps"] for c in per_camera.values())
    total_mb = sum(m for m in memory.values() if m is not None)
    print(
        f"\n{mode:>8} process(es), {count} camera(s): {total_fps:.2f} frames/s answered in all, "
        f"resident memory {total_mb:.0f} MB "
        f"({', '.join(f'{m:.0f}' for m in memory.values() if m)} MB)"
    )
    for camera, figures in per_camera.items():
        p50, p95 = figures["latency_p50_ms"], figures["latency_p95_ms"]
        print(
            f"    {camera}: {figures['answered']}/{figures['published']} answered "
            f"({figures['answered_including_warmup']} with the warm-up), {figures['fps']:.2f} "
            "fps, "
            f"latency p50 {p50 if p50 is None else f'{p50:.0f}'} ms, p95 "
            f"{p95 if p95 is None else f'{p95:.0f}'} ms"
        )
    return {
        "mode": mode,
        "cameras": count,
        "processes": len(processes),
        "total_fps": total_fps,
        "resident_mb": memory,
        "total_resident_mb": total_mb,
        "per_camera": per_camera,
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    counts = [int(n) for n in args.cameras.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("one", "separate") for m in modes):
        raise SystemExit("--modes takes one, separate or both")
    from video_seg_ros.ros.dds import large_image_environment

    env = large_image_environment()
    env.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))  # a private domain per run
    env["PYTHONUNBUFFERED"] = "1"
    os.environ.update(env)  # this process must load the same Fast DDS profile
    checkpoint = prepare_checkpoint(args)
    frames = load_frames()
    command = "python bench/multi_camera.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    print(
        f"{command}\n{machine_description()}\ncheckpoint {checkpoint}; {len(frames)} frames "
        f"{SIZE[0]}x{SIZE[1]}; "
        f"{args.rate:g} Hz per camera, {args.seconds:g} s measured after {args.warmup_seconds:g} s"
    )
    probe = Probe()
    results = []
    try:
        for count in counts:
            for mode in modes:
                if mode == "separate" and count == 1 and "one" in modes:
                    continue  # the same thing as one process with one camera
                results.append(run(mode, count, frames, checkpoint, args, probe, env))
    finally:
        probe.close()
    summary = []
    for count in counts:
        one = next((r for r in results if r["mode"] == "one" and r["cameras"] == count), None)
        separate = next(
            (r for r in results if r["mode"] == "separate" and r["cameras"] == count), None
        )
        if one and separate and separate["total_fps"] and separate["total_resident_mb"]:
            fps_ratio = one["total_fps"] / separate["total_fps"]
            memory_ratio = one["total_resident_mb"] / separate["total_resident_mb"]
            summary.append(
                {"cameras": count, "fps_ratio": fps_ratio, "memory_ratio": memory_ratio}
            )
            print(
                f"\nN={count}: one process / {count} processes: {fps_ratio:.2f}x the frames per "
                "second "
                f"(target >= {TARGET_FPS_RATIO}), {memory_ratio:.0%} of the memory (target <= "
                f"{TARGET_MEMORY_RATIO:.0%})"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine_description(),
                    "runs": results,
                    "summary": summary,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
