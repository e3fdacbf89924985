"""End-to-end latency of video_seg_node against the bare engine, and frames dropped at 5/10/30 Hz.

Starts ``video_seg_node`` (or uses a running one with ``--no-start``) with the published ESPNet
p2q8 Cityscapes weights (imported from ../shared/weights into a temporary checkpoint; or
``--checkpoint``), the same ``--backend`` and ``--precision`` as the bare engine (node parameters
``backend``/``precision``), publishes full-resolution frames (2048x1024 Cityscapes sequence frames
from ../shared when present, a synthetic pattern otherwise) and measures, for the same frames:

- end-to-end: ``publish(image)`` -> ``~/labels`` received, in this process (one frame in flight);
- engine: ``SegmentationEngine.segment`` on the same frame in this process (in a worker thread,
  like the node), interleaved frame by frame with the node measurement so both see the same load.

Then it publishes at each ``--rates`` for ``--rate-seconds`` with camera QoS (best effort) and
reports frames received, processed and dropped (keep-latest queue) from the node's /diagnostics.

Example::

    python bench/node_latency.py --frames 12 --json /tmp/node_latency.json          # backend auto
    python bench/node_latency.py --backend torch --precision fp32 --frames 12
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.backends import BACKENDS
from video_seg_ros.engine import UPSAMPLE_MODES
from video_seg_ros.runtime import PRECISIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.15


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint the node and the bare engine load (default: the published ESPNet "
        "p2q8 Cityscapes weights from ../shared, imported; 'default' = embedded model)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] (node and engine)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="inference backend (node parameter 'backend', and the bare engine)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="arithmetic precision (node parameter 'precision', and the bare engine)",
    )
    parser.add_argument(
        "--upsample",
        default="auto",
        choices=UPSAMPLE_MODES,
        help="engine upsampling mode (node parameter 'upsample')",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=12,
        help="frames for the latency comparison (the first 2 are warm-up, not counted)",
    )
    parser.add_argument("--width", type=int, default=2048, help="frame width")
    parser.add_argument("--height", type=int, default=1024, help="frame height")
    parser.add_argument(
        "--frames-dir",
        default=None,
        help="folder of frames to use (default: ../shared Cityscapes sequences, else synthetic)",
    )
    parser.add_argument(
        "--rates", default="5,10,30", help="comma-separated input rates (Hz) for the drop test"
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=4.0, help="how long to publish at each rate"
    )
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="use an already running node instead of starting one",
    )
    parser.add_argument(
        "--node-name",
        default=None,
        help="node name (topics /<name>/labels; diagnostics status name); "
        "default video_seg_bench_<pid>, required with --no-start",
    )
    parser.add_argument("--topic", default="/bench_camera/image", help="input image topic")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to wait for the node"
    )
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    return parser


def load_frames(args) -> tuple[list[np.ndarray], str]:
    from video_seg_ros.frames import list_frames, read_rgb
    from bench_utils import shared_dir

    root = Path(args.frames_dir) if args.frames_dir else None
    if root is None and shared_dir() is not None:
        root = shared_dir() / "data" / "cityscapes_sequences"
    records = list_frames(root)[: args.frames] if root is not None and root.is_dir() else []
    size = (args.width, args.height)
    if records:
        frames = [read_rgb(r.path) for r in records]
        frames = [
            f if f.shape[1::-1] == size else cv2.resize(f, size, interpolation=cv2.INTER_AREA)
            for f in frames
        ]
        return frames, str(root)
    y, x = np.mgrid[0 : args.height, 0 : args.width]
    frames = [
        np.stack([(x + 8 * i) % 256, y % 256, ((x + y) // 4 + 16 * i) % 256], axis=2).astype(
            np.uint8
        )
        for i in range(args.frames)
    ]
    return frames, "synthetic pattern"


def start_node(args, env, log_path: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "video_seg_ros.ros.executable",
        "--ros-args",
        "-r",
        f"__node:={args.node_name}",
        "-r",
        f"image:={args.topic}",
        "-p",
        f"checkpoint:={args.checkpoint}",
        "-p",
        f"device:={args.device}",
        "-p",
        f"upsample:={args.upsample}",
        "-p",
        f"backend:={args.backend}",
        "-p",
        f"precision:={args.precision}",
        "-p",
        "diagnostics_period_s:=0.5",
        "-p",
        f"max_input_pixels:={max(args.width * args.height, 4)}",
    ]
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the node
        return subprocess.Popen(
            command, env=env, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT
        )


def percentiles(values) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def latency_report(
    end_to_end: list[float], engine_ms: list[float], node_diagnostics: dict
) -> dict:
    """Figures of the latency phase (printed and returned for the JSON report)."""
    e2e_p50, e2e_p95 = percentiles(end_to_end)
    engine_p50, engine_p95 = percentiles(engine_ms)
    ratio = e2e_p50 / engine_p50
    node_model_p50 = float(node_diagnostics.get("model_p50_ms") or "nan")
    print(
        f"\nend-to-end p50 {e2e_p50:.1f} ms  p95 {e2e_p95:.1f} ms | bare engine p50 "
        f"{engine_p50:.1f} ms  "
        f"p95 {engine_p95:.1f} ms | ratio {ratio:.3f} (target <= {TARGET_RATIO})"
    )
    print(
        "engine time measured inside the node (diagnostics model_p50_ms, includes warm-up "
        "frames) "
        f"{node_model_p50:.1f} ms -> end-to-end / that = {e2e_p50 / node_model_p50:.3f}"
    )
    return {
        "frames": len(end_to_end),
        "end_to_end_p50_ms": e2e_p50,
        "end_to_end_p95_ms": e2e_p95,
        "engine_p50_ms": engine_p50,
        "engine_p95_ms": engine_p95,
        "ratio_p50": ratio,
        "node_model_p50_ms": node_model_p50,
        "ratio_to_node_model_p50": e2e_p50 / node_model_p50,
        "node_latency_p50_ms": float(node_diagnostics.get("latency_p50_ms") or "nan"),
        "target_ratio": TARGET_RATIO,
    }


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.node_name is None:
        if args.no_start:
            parser.error("--no-start needs --node-name of the running node")
        args.node_name = f"video_seg_bench_{os.getpid()}"  # never mixes with another run's node
    from video_seg_ros.ros.dds import large_image_environment

    env = large_image_environment()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    os.environ.update(env)  # this process must load the same Fast DDS profile

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from tqdm import tqdm

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.image_encoding import fill_image

    if args.checkpoint is None:
        from bench_utils import benchmark_checkpoint

        # Kept until the process ends: the node reads it at start-up.
        checkpoint_dir = tempfile.mkdtemp(prefix="node_latency_")
        atexit.register(shutil.rmtree, checkpoint_dir, ignore_errors=True)
        checkpoint = benchmark_checkpoint("espnet-p2q8")
        args.checkpoint = str(checkpoint.save(Path(checkpoint_dir) / "espnet_p2q8_cityscapes.pt"))
        print(f"published ESPNet p2q8 Cityscapes weights imported to {args.checkpoint}")
    frames, source = load_frames(args)
    print(
        f"frames: {len(frames)} x {args.width}x{args.height} from {source}; "
        f"Fast DDS profile: {env.get('FASTDDS_DEFAULT_PROFILES_FILE')}"
    )
    node_log = Path(tempfile.gettempdir()) / f"{args.node_name}.log"
    node_process = None if args.no_start else start_node(args, env, node_log)
    rclpy.init()
    bench = rclpy.create_node("node_latency_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(bench)

    def spin():
        try:
            executor.spin()
        except Exception:  # ExternalShutdownException at exit
            pass

    threading.Thread(target=spin, daemon=True).start()
    from bench_utils import NodeOutputs

    outputs = NodeOutputs(args.node_name)
    arrivals, diagnostics = outputs.arrivals, outputs.diagnostics
    bench.create_subscription(Image, f"/{args.node_name}/labels", outputs.on_labels, 10)
    bench.create_subscription(DiagnosticArray, "/diagnostics", outputs.on_diagnostics, 10)
    publisher = bench.create_publisher(Image, args.topic, qos_profile_sensor_data)
    messages = [fill_image(Image(), frame, "rgb8") for frame in frames]
    # Stamps 50 ms apart from the wall clock: unique across runs, and as dense as a 20 Hz camera.
    stamp_counter = [int(time.time()) * 20]

    def publish(index: int) -> tuple[int, int]:
        stamp_counter[0] += 1
        msg = messages[index % len(messages)]
        msg.header.frame_id = "bench_camera"
        msg.header.stamp.sec, msg.header.stamp.nanosec = (
            stamp_counter[0] // 20,
            (stamp_counter[0] % 20) * 50_000_000,
        )
        publisher.publish(msg)
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def wait_for(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            if node_process is not None and node_process.poll() is not None:
                raise SystemExit(
                    f"the node exited:\n{node_log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.002)
        return True

    report: dict = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "frames_source": source,
        "size": [args.width, args.height],
        "checkpoint": args.checkpoint,
        "device": args.device,
        "backend": args.backend,
        "precision": args.precision,
    }
    try:
        engine = SegmentationEngine(
            args.checkpoint,
            device=args.device,
            upsample=args.upsample,
            backend=args.backend,
            precision=args.precision,
        )
        report["engine"] = {
            "backend": engine.backend,
            "precision": engine.precision,
            "fallback_reason": engine.fallback_reason,
        }
        print(
            f"bare engine: backend {engine.backend}, precision {engine.precision}"
            + (f" (auto fell back: {engine.fallback_reason})" if engine.fallback_reason else "")
        )
        if not wait_for(lambda: publisher.get_subscription_count() > 0, args.startup_timeout):
            raise SystemExit("video_seg_node did not subscribe in time")
        time.sleep(1.0)  # let the reverse (labels) connection settle too

        end_to_end, engine_ms, engine_seen = [], [], []
        # Threading exactly as in the node: one warm-up pass in the main thread at the model's
        # input
        # size, then every frame in one long-lived worker thread. PyTorch's CPU time per frame
        # depends on this (3x apart on a loaded 2-core machine), so anything else is not a fair
        # comparison.
        pre = engine.checkpoint.preprocessing
        engine.segment(np.zeros((pre.input_height, pre.input_width, 3), np.uint8))
        engine.reset()
        worker = ThreadPoolExecutor(max_workers=1)

        def timed_segment(frame):
            start = time.perf_counter()
            engine.segment(frame, "rgb")
            return (time.perf_counter() - start) * 1000.0

        for index in tqdm(range(len(frames)), desc="latency (node vs engine)", unit="frame"):
            engine_time = worker.submit(timed_segment, frames[index]).result()
            if index >= 1:
                engine_seen.append(engine_time)
            sent = time.perf_counter()
            key = publish(index)
            if not wait_for(lambda: key in arrivals, max(30.0, 10 * engine_time / 1000.0)):
                print(
                    f"frame {index}: no labels (lost between processes? see the Fast DDS profile)"
                )
                continue
            if index >= 2:  # warm-up frames left out
                end_to_end.append((arrivals[key] - sent) * 1000.0)
                engine_ms.append(engine_time)
        engine_p95 = percentiles(engine_seen)[1] if engine_seen else 5000.0
        if not end_to_end:
            print(
                "\nno frame was answered: nothing to compare (large frames lost between "
                "processes?)"
            )
            report["latency"] = {"frames": 0, "published": len(frames)}
        else:
            time.sleep(1.0)  # one more diagnostics period
            report["latency"] = latency_report(
                end_to_end, engine_ms, diagnostics[-1] if diagnostics else {}
            )
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        report["rates"] = []
        for rate in rates:
            if not wait_for(lambda: diagnostics, 10.0):
                raise SystemExit("no diagnostics from the node")
            time.sleep(1.0)
            before = diagnostics[-1]
            count = max(1, round(rate * args.rate_seconds))
            keys = []
            start = time.perf_counter()
            for i in tqdm(
                range(count), desc=f"publishing at {rate:g} Hz", unit="frame", leave=False
            ):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                keys.append(publish(i))
            time.sleep(max(2.0, 3 * engine_p95 / 1000.0))  # let the last frame finish
            after = diagnostics[-1]

            def delta(name):
                return int(after[name]) - int(before[name])

            answered = sum(1 for k in keys if k in arrivals)
            row = {
                "rate_hz": rate,
                "published": count,
                "received_by_node": delta("received"),
                "dropped_by_queue": delta("dropped"),
                "processed": delta("processed"),
                "answered": answered,
                "lost_in_transport": count - delta("received"),
            }
            report["rates"].append(row)
            print(
                f"{rate:5.1f} Hz: published {count}, node received {row['received_by_node']}, "
                f"dropped (keep-latest) {row['dropped_by_queue']}, processed {row['processed']}, "
                f"lost in transport {row['lost_in_transport']}"
            )
        print(
            "\n| input | published | received | dropped (keep-latest) | processed | lost in "
            "transport |"
        )
        print("|---|---|---|---|---|---|")
        for row in report["rates"]:
            print(
                f"| {row['rate_hz']:g} Hz | {row['published']} | {row['received_by_node']} | "
                f"{row['dropped_by_queue']} | {row['processed']} | {row['lost_in_transport']} |"
            )
        print(f"\ncommand: {report['command']}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json}")
    finally:
        executor.shutdown(timeout_sec=2.0)
        bench.destroy_node()
        rclpy.try_shutdown()
        if node_process is not None and node_process.poll() is None:
            node_process.send_signal(signal.SIGINT)
            try:
                node_process.wait(20)
            except subprocess.TimeoutExpired:
                node_process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
