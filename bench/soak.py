"""Soak and fault bench: one node serving N cameras for hours, with faults on a timeline.

Starts the node as its console script (``video_seg_lifecycle_node`` when lifecycle faults are
scheduled, driven to active by this bench; ``video_seg_node`` otherwise) with ``cameras`` =
cam0..camN-1, keep-latest input queue and reliable input QoS (so that a frame is never lost
between the processes without a counter saying so). This process publishes every camera at
``--rate`` Hz from looping sequences of real frames read once into memory (Cityscapes snippets
from ../shared when present, the synthetic street otherwise): the stamps loop with the sequence
(they jump backwards at every wrap, as a looping bag does). Faults are injected on a schedule
(``--faults``; docs/soak.md lists them): a camera stops longer than ``diagnostics_stale_s``, a
bag loops early, frames change size, malformed messages arrive, the reset services are called,
the output subscriber leaves, a parameter changes, lifecycle deactivate/activate and
cleanup/configure cycles. Every ``--sample-seconds`` it records the node's resident memory, open
file descriptors and threads (/proc/<pid>) and each camera's /diagnostics counters.

At the end it prints one table: per camera, frames published / received / segmented / rejected /
dropped (keep-latest) / skipped (no subscriber) / lost (published minus every outcome counter:
must be 0), latency p50/p95 (publish -> labels received here) in the first and last 10 % of the
run; the node's RSS at the reference point (10th minute, or 10 % of a shorter run), at the end
and its maximum, fds and threads; each fault with the worst diagnostics level and message the
node reported and the time to the first labels after the fault ended. Exit status 1 when a frame
is unaccounted for, the node dies or exits non-zero, RSS grows more than ``--max-rss-growth`` %,
a fault is not recovered within ``--recover-timeout`` s, or the last 10 % latency p50 exceeds
``--max-latency-ratio`` x the first 10 %.

    python bench/soak.py --minutes 120 --cameras 4                      # the 2-hour soak
    python bench/soak.py --minutes 3 --cameras 2 --size 256x128 --faults camera_stop,reset_all
    python bench/soak.py --fuzz 10000 --json /tmp/fuzz.json             # 10,000 + 10,000 messages

``--fuzz N`` runs the fuzz instead: N malformed Image messages to a raw-transport node and N
malformed CompressedImage messages to a compressed-transport node (the seeded generator of
video_seg_ros/ros/malformed_messages.py, as test/test_node_fuzz.py but larger), in rounds of 8
closed by a good frame whose labels are awaited; every bad message must be counted under its
expected reason, every good frame answered, both nodes alive and exiting 0 on SIGINT.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import shared_dir  # noqa: E402 (also puts test/ on the path)

from video_seg_ros.soak_report import (  # noqa: E402
    FAULT_KINDS,
    LIFECYCLE_FAULTS,
    CounterTotals,
    FaultEvent,
    FaultResult,
    Limits,
    account,
    counter_changes,
    counters_from_values,
    default_schedule,
    failures,
    finite_or_none,
    format_report,
    latency_ratio,
    markdown_table,
    parse_fault_kinds,
    reference_time,
    resource_summary,
    run_windows,
    status_rank,
    window_latency,
    worst_status,
)

NODE_NAME = "soak_node"
TOPIC_PREFIX = "/soak"
SERVICE_TIMEOUT = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (after warm-up)")
    parser.add_argument("--cameras", type=int, default=4, help="cameras served by the one node")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second per camera")
    parser.add_argument(
        "--size", default="512x256", help="frame size WxH published (frames are resized)"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help="a frame source per camera (repeat; used in turn): a folder of images, a rosbag2 "
        "folder, a video or synthetic[:seed=...]; default: the Cityscapes snippets of "
        "../shared, else the synthetic street",
    )
    parser.add_argument("--frames", type=int, default=30, help="frames per looping sequence")
    parser.add_argument(
        "--stamps",
        choices=("loop", "monotonic"),
        default="loop",
        help="loop: stamps repeat with the sequence (backwards at every wrap, like a looping "
        "bag); monotonic: they keep growing (a live camera)",
    )
    parser.add_argument("--checkpoint", default="default", help="node parameter checkpoint")
    parser.add_argument("--device", default="cpu", help="node parameter device")
    parser.add_argument("--backend", default="auto", help="node parameter backend")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other node parameter (value in YAML), e.g. --param temporal_mode=fuse",
    )
    parser.add_argument(
        "--faults",
        default="all",
        help="all, none or a comma-separated list of: " + ", ".join(FAULT_KINDS),
    )
    parser.add_argument(
        "--fault-every",
        type=float,
        default=60.0,
        help="at most one fault per this many seconds (every kind at least once)",
    )
    parser.add_argument(
        "--stale-s", type=float, default=3.0, help="node parameter diagnostics_stale_s"
    )
    parser.add_argument(
        "--burst-rate", type=float, default=20.0, help="malformed messages per second in a burst"
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="sampling period")
    parser.add_argument(
        "--warmup-seconds", type=float, default=10.0, help="publishing before the run clock"
    )
    parser.add_argument(
        "--recover-timeout", type=float, default=60.0, help="seconds a camera has to recover"
    )
    parser.add_argument(
        "--max-rss-growth", type=float, default=5.0, help="fail above this RSS growth (%%)"
    )
    parser.add_argument(
        "--max-latency-ratio",
        type=float,
        default=1.1,
        help="fail when the last 10 %% latency p50 exceeds this x the first 10 %% (0: off)",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--fuzz",
        type=int,
        default=0,
        metavar="N",
        help="run the fuzz instead: N malformed Image + N malformed CompressedImage messages",
    )
    parser.add_argument("--seed", type=int, default=20, help="seed of the malformed messages")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="node logs (default: a tmp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write samples and summary here")
    return parser


# ---- small helpers ----------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = yaml.safe_load(value)
    return params


def process_figures(pid: int) -> dict | None:
    """VmRSS and its parts (kB: anonymous, file-backed, shared memory such as Fast DDS
    segments), threads and open fds of a process (None once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "rss_anon_kb": int(fields["RssAnon"].split()[0]),
        "rss_file_kb": int(fields["RssFile"].split()[0]),
        "rss_shmem_kb": int(fields["RssShmem"].split()[0]),
        "threads": int(fields["Threads"].strip()),
        "fds": fds,
    }


def default_sources(count: int, frames: int, size: tuple[int, int], rate: float) -> list[str]:
    root = shared_dir()
    snippets = root / "data" / "cityscapes_sequences" if root else None
    if snippets is not None and snippets.is_dir():
        folders = sorted(p / "leftImg8bit" for p in snippets.iterdir() if p.is_dir())
        if folders:
            return [str(folder) for folder in folders]
    return [
        f"synthetic:seed={index},frames={frames},size={size[0]}x{size[1]},fps={rate:g}"
        for index in range(count)
    ]


def load_sequence(source: str, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    from video_seg_ros.streams import open_stream

    images = []
    for frame in open_stream(source, limit=frames):  # a synthetic spec gives its own count
        rgb = frame.rgb
        if (rgb.shape[1], rgb.shape[0]) != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        images.append(np.ascontiguousarray(rgb))
        if len(images) >= frames:
            break
    if not images:
        raise SystemExit(f"no frames in {source}")
    return images


def status_level(status) -> int:
    level = status.level
    return int.from_bytes(level, "little") if isinstance(level, bytes) else int(level)


class Clock:
    """Run seconds: 0 at the end of the warm-up (negative before)."""

    def __init__(self):
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


# ---- the camera feeds -------------------------------------------------------------------------
class CameraFeed:
    """One camera's publisher: looping frames, stamps, and the fault switches."""

    def __init__(self, name, publisher, frames, alt_frames, rate, loop_stamps, base_ns):
        from sensor_msgs.msg import Image

        from video_seg_ros.image_encoding import fill_image

        self.name, self.publisher, self.rate = name, publisher, rate
        self.loop_stamps, self.base_ns = loop_stamps, base_ns
        self.messages = [fill_image(Image(), f, "rgb8") for f in frames]
        self.alt_messages = [fill_image(Image(), f, "rgb8") for f in alt_frames]
        for msg in self.messages + self.alt_messages:
            msg.header.frame_id = name
        self.lock = threading.Lock()
        self.cursor = 0  # ticks since the start (also while stopped: stamps jump on resume)
        self.rewind = 0  # ticks the sequence was sent back by bag_loop faults
        self.stopped = False
        self.alt_size = False
        self.published = 0  # every message: good frames and malformed ones
        self.good = 0
        self.malformed = 0
        self.last_stamp_ns = base_ns

    def stamp_ns(self, position: int) -> int:
        length = len(self.messages)
        offset = position % length if self.loop_stamps else position
        return self.base_ns + round(offset * 1e9 / self.rate)

    def tick(self, pending: dict, pending_lock, published_at: float, paused: bool) -> None:
        position = self.cursor - self.rewind
        self.cursor += 1
        if paused or self.stopped:
            return
        stamp = self.stamp_ns(position)
        msg = (self.alt_messages if self.alt_size else self.messages)[
            position % len(self.messages)
        ]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        with pending_lock:
            pending[stamp] = published_at
        with self.lock:
            self.publisher.publish(msg)
            self.published += 1
            self.good += 1
            self.last_stamp_ns = stamp

    def loop_now(self) -> float:
        """Send the sequence back to its start (a looping bag): how far the stamps jump back."""
        position = self.cursor - self.rewind
        back = (
            position % len(self.messages)
            if self.loop_stamps
            else min(position, len(self.messages))
        )
        self.rewind += back
        return back / self.rate

    def publish_malformed(self, message) -> None:
        from video_seg_ros.ros.malformed_messages import to_ros_message

        with self.lock:
            msg = to_ros_message(message, self.last_stamp_ns * 1e-9)
            self.publisher.publish(msg)
            self.published += 1
            self.malformed += 1


class Soak:
    """The bench's ROS side: node process, probe, feeds, diagnostics, samples and faults."""

    def __init__(self, args, log_dir: Path):
        self.args = args
        self.log_dir = log_dir
        self.cameras = [f"cam{index}" for index in range(args.cameras)]
        self.kinds = parse_fault_kinds(args.faults)
        self.lifecycle = any(kind in LIFECYCLE_FAULTS for kind in self.kinds)
        self.duration = args.minutes * 60.0
        self.clock = Clock()
        self.lock = threading.Lock()
        self.totals = CounterTotals()
        self.latest: dict[str, dict[str, str]] = {}  # camera -> newest diagnostics values
        self.latest_at: dict[str, float] = {}  # camera -> run time it arrived
        self.statuses: dict[str, list[tuple[float, int, str]]] = {c: [] for c in self.cameras}
        self.newest_diagnostics_ns = 0
        self.pending: dict[str, dict[int, float]] = {c: {} for c in self.cameras}
        self.pending_lock = threading.Lock()
        # per camera: arrival run times (sorted) and (published_at, latency_ms) alongside
        self.arrivals: dict[str, list[float]] = {c: [] for c in self.cameras}
        self.answers: dict[str, list[tuple[float, float]]] = {c: [] for c in self.cameras}
        self.samples: list[dict] = []
        self.faults: list[FaultResult] = []
        self.paused = False
        self.stop_event = threading.Event()
        self.node_died_at: float | None = None
        self.subscriptions = {}
        self.clients = {}
        self.epoch_end: dict | None = None  # diagnostics just before a cleanup (its last epoch)

    # ---- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from ros_support import (
            NodeProcess,
            RosProbe,
            lifecycle_node_command,
            node_command,
            write_params_file,
        )

        args = self.args
        size = parse_size(args.size)
        alt = (max(16, size[0] * 3 // 4 // 2 * 2), max(16, size[1] * 3 // 4 // 2 * 2))
        sources = args.source or default_sources(len(self.cameras), args.frames, size, args.rate)
        self.sources = {c: sources[i % len(sources)] for i, c in enumerate(self.cameras)}
        cache = {}
        for source in set(self.sources.values()):
            frames = load_sequence(source, args.frames, size)
            cache[source] = (frames, [self._resize(f, alt) for f in frames])
        params = {
            "cameras": self.cameras,
            "checkpoint": args.checkpoint,
            "device": args.device,
            "backend": args.backend,
            "input_qos": "reliable",
            "frame_queue_size": 1,
            "diagnostics_period_s": 1.0,
            "diagnostics_stale_s": args.stale_s,
            **parse_params(args.param),
        }
        self.params = params
        params_file = write_params_file(self.log_dir / "soak_params.yaml", params)
        remaps = {f"{c}/image": f"{TOPIC_PREFIX}/{c}/image" for c in self.cameras}
        command = lifecycle_node_command() if self.lifecycle else node_command()
        self.node = NodeProcess(
            params_file, self.log_dir / "soak_node.log", remaps, NODE_NAME, command
        )
        self.probe = RosProbe("soak_bench")
        node = self.probe.node
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        base_ns = (time.time_ns() // 1_000_000_000) * 1_000_000_000
        self.feeds = {}
        for index, camera in enumerate(self.cameras):
            frames, alt_frames = cache[self.sources[camera]]
            shift = (index * 7) % len(frames)  # cameras sharing a source show different frames
            frames, alt_frames = (
                frames[shift:] + frames[:shift],
                alt_frames[shift:] + alt_frames[:shift],
            )
            publisher = node.create_publisher(Image, f"{TOPIC_PREFIX}/{camera}/image", reliable)
            self.feeds[camera] = CameraFeed(
                camera,
                publisher,
                frames,
                alt_frames,
                args.rate,
                args.stamps == "loop",
                base_ns + index * 1_000_000,  # distinct stamps per camera
            )
            self.subscribe(camera)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.frame_size, self.alt_frame_size = size, alt
        if self.lifecycle:
            from lifecycle_msgs.msg import Transition

            for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                self.change_state(transition, args.startup_timeout)
        self._wait_for_matches(args.startup_timeout)

    @staticmethod
    def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import cv2

        return np.ascontiguousarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))

    def _wait_for_matches(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(f.publisher.get_subscription_count() for f in self.feeds.values()):
            if not self.node.alive():
                raise SystemExit(f"the node exited during start-up:\n{self.node.tail(40)}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the node did not subscribe to the cameras:\n{self.node.tail(40)}"
                )
            time.sleep(0.1)

    # ---- ROS callbacks -----------------------------------------------------------------------
    def subscribe(self, camera: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.subscriptions[camera] = self.probe.node.create_subscription(
            Image,
            f"/{NODE_NAME}/{camera}/labels",
            lambda data, c=camera: self._on_labels(c, data),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
            raw=True,  # only the stamp is read: no deserialisation of the label image
        )

    def unsubscribe(self, camera: str) -> None:
        self.probe.node.destroy_subscription(self.subscriptions.pop(camera))

    def _on_labels(self, camera: str, data: bytes) -> None:
        from video_seg_ros.bags import cdr_stamp_ns

        arrived = time.monotonic()
        stamp = cdr_stamp_ns(data)
        with self.pending_lock:
            published_at = self.pending[camera].pop(stamp, None)
        if published_at is None:
            return  # an answer to a frame of an earlier loop whose stamp was sent again
        with self.lock:
            self.arrivals[camera].append(arrived - self.clock.t0)
            self.answers[camera].append(
                (published_at - self.clock.t0, (arrived - published_at) * 1000.0)
            )

    def _on_diagnostics(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        prefix = f"{NODE_NAME}: "
        ours = [
            s for s in msg.status if s.name.startswith(prefix) and s.name.endswith(" segmentation")
        ]
        if not ours:
            return
        now = self.clock.now()
        with self.lock:
            if stamp <= self.newest_diagnostics_ns:
                return  # older than one already taken (counters must be read in order)
            self.newest_diagnostics_ns = stamp
            for status in ours:
                camera = status.name[len(prefix) : -len(" segmentation")]
                if camera not in self.statuses:
                    continue
                values = {kv.key: kv.value for kv in status.values}
                level = status_level(status)
                values["_level"], values["_message"] = str(level), status.message
                self.latest[camera], self.latest_at[camera] = values, now
                self.totals.update(camera, counters_from_values(values))
                self.statuses[camera].append((now, level, status.message))

    # ---- services ----------------------------------------------------------------------------
    def call(self, srv_type, name: str, request, timeout: float = SERVICE_TIMEOUT):
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = self.probe.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        return future.result() if future.done() else None

    def change_state(self, transition: int, timeout: float = SERVICE_TIMEOUT) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition))
        response = self.call(ChangeState, f"/{NODE_NAME}/change_state", request, timeout)
        if response is None or not response.success:
            raise FaultFailed(
                f"lifecycle transition {transition} "
                f"{'timed out' if response is None else 'failed'}"
            )

    # ---- publishing and sampling threads -----------------------------------------------------
    def publish_loop(self) -> None:
        period = 1.0 / self.args.rate
        due = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            elif now - due > period:
                due = now  # fell behind (a loaded machine): no burst to catch up
            published_at = time.monotonic()
            for camera, feed in self.feeds.items():
                feed.tick(self.pending[camera], self.pending_lock, published_at, self.paused)
            due += period

    def sample_loop(self) -> None:
        while not self.stop_event.wait(self.args.sample_seconds):
            self.sample()

    def sample(self) -> None:
        figures = process_figures(self.node.process.pid) if self.node.alive() else None
        now = self.clock.now()
        if figures is None:
            if self.node_died_at is None:
                self.node_died_at = now
            return
        with self.lock:
            cameras = {
                camera: {
                    key: values.get(key)
                    for key in (
                        "_level",
                        "_message",
                        "received",
                        "processed",
                        "rejected",
                        "dropped",
                        "skipped_no_subscriber",
                        "resets",
                        "fps",
                        "latency_p50_ms",
                        "latency_p95_ms",
                        "temporal_mode",
                    )
                }
                for camera, values in self.latest.items()
            }
        self.samples.append({"t": round(now, 3), **figures, "cameras": cameras})
        cutoff = time.monotonic() - 60.0  # answers older than a minute will not come
        with self.pending_lock:
            for pending in self.pending.values():
                for stamp in [s for s, at in pending.items() if at < cutoff]:
                    del pending[stamp]

    # ---- waiting -----------------------------------------------------------------------------
    def first_answer_after(self, camera: str, published_after: float) -> float | None:
        """Arrival run time of the first labels of a frame published after ``published_after``."""
        with self.lock:
            arrivals, answers = self.arrivals[camera], self.answers[camera]
            for index in range(bisect.bisect_left(arrivals, published_after), len(arrivals)):
                if answers[index][0] >= published_after:
                    return arrivals[index]
        return None

    def wait_recovered(self, cameras: list[str], ended: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            found = [self.first_answer_after(c, ended) for c in cameras]
            if all(t is not None for t in found):
                return max(found) - ended
            if time.monotonic() > deadline or not self.node.alive():
                return None
            time.sleep(0.05)

    def settled(self, idle: bool, after: float) -> bool:
        with self.lock:
            for camera, feed in self.feeds.items():
                if self.latest_at.get(camera, -1e9) <= after:
                    return False
                totals = self.totals.total(camera)
                if totals["received"] != feed.published:
                    return False
                if idle and account(feed.published, totals)["in_node"]:
                    return False
        return True

    def wait_settled(self, idle: bool, timeout: float) -> bool:
        """Wait for diagnostics (newer than now) counting every published frame as received
        (``idle``: and as an outcome)."""
        after = self.clock.now()
        deadline = time.monotonic() + timeout
        while not self.settled(idle, after):
            if time.monotonic() > deadline or not self.node.alive():
                return False
            time.sleep(0.1)
        return True

    def sleep_until(self, run_s: float) -> None:
        while self.clock.now() < run_s and self.node.alive():
            time.sleep(min(0.2, max(0.0, run_s - self.clock.now())))

    # ---- faults ------------------------------------------------------------------------------
    def run_fault(self, event: FaultEvent) -> FaultResult:
        result = FaultResult(event)
        cameras = [event.camera] if event.camera else list(self.cameras)
        with self.lock:
            before = {c: dict(self.latest.get(c, {})) for c in cameras}
        result.started_s = self.clock.now()
        try:
            getattr(self, f"_fault_{event.kind}")(event, result)
        except FaultFailed as error:
            result.error = str(error)
        result.ended_s = self.clock.now()
        recovered = self.wait_recovered(cameras, result.ended_s, self.args.recover_timeout)
        result.recovered_s = None if recovered is None else round(recovered, 3)
        time.sleep(1.5)  # one more diagnostics period (1 s), so the counters include the fault
        end = self.clock.now()
        with self.lock:
            after = {c: dict(self.latest.get(c, {})) for c in cameras}
            worst = [
                (status_rank(status), camera, status)
                for camera in cameras
                if (status := worst_status(self.statuses[camera], result.started_s, end))
            ]
        if worst:
            _, camera, (_, level, message) = max(worst)
            result.level = level
            result.message = f"{camera}: {message}" if len(cameras) > 1 else message
        mid, self.epoch_end = self.epoch_end, None
        groups: dict[str, list[str]] = {}  # the same changes on several cameras: one note
        for camera in cameras:
            if mid is None:
                changes = counter_changes(before[camera], after[camera])
            else:  # counters restarted at configure: the old epoch's end, then the new epoch
                changes = Counter(counter_changes(before[camera], mid[camera]))
                changes.update(counter_changes({}, after[camera]))
            if changes:
                text = ", ".join(f"{key} +{value}" for key, value in sorted(changes.items()))
                groups.setdefault(text, []).append(camera)
        for text, where in groups.items():
            if len(cameras) == 1:
                result.notes.append(text)
            elif len(where) == len(cameras):
                result.notes.append(f"each camera: {text}")
            else:
                result.notes.append(f"{', '.join(where)}: {text}")
        return result

    def _fault_camera_stop(self, event, result) -> None:
        feed = self.feeds[event.camera]
        feed.stopped = True
        self.sleep_until(result.started_s + event.duration_s)
        feed.stopped = False

    def _fault_bag_loop(self, event, result) -> None:
        back = self.feeds[event.camera].loop_now()
        result.notes.append(f"stamps back {back:.1f} s")

    def _fault_size_change(self, event, result) -> None:
        feed = self.feeds[event.camera]
        feed.alt_size = True
        self.sleep_until(result.started_s + event.duration_s)
        feed.alt_size = False
        (w, h), (aw, ah) = self.frame_size, self.alt_frame_size
        result.notes.append(f"{w}x{h} -> {aw}x{ah} -> {w}x{h}")

    def _fault_malformed_burst(self, event, result) -> None:
        from video_seg_ros.ros.malformed_messages import iter_malformed

        feed = self.feeds[event.camera]
        max_pixels = int(self.params.get("max_input_pixels", 8_388_608))
        messages = iter_malformed(self.args.seed + len(self.faults), "raw", max_pixels)
        period, sent = 1.0 / self.args.burst_rate, 0
        end = result.started_s + event.duration_s
        while self.clock.now() < end and self.node.alive():
            feed.publish_malformed(next(messages))
            sent += 1
            time.sleep(period)
        result.notes.append(f"{sent} malformed sent")

    def _reset(self, service: str) -> None:
        from std_srvs.srv import Trigger

        response = self.call(Trigger, service, Trigger.Request())
        if response is None or not response.success:
            raise FaultFailed(f"{service} did not answer")

    def _fault_reset_camera(self, event, result) -> None:
        self._reset(f"/{NODE_NAME}/{event.camera}/reset")

    def _fault_reset_all(self, event, result) -> None:
        self._reset(f"/{NODE_NAME}/reset")

    def _fault_subscriber_leave(self, event, result) -> None:
        self.unsubscribe(event.camera)
        self.sleep_until(result.started_s + event.duration_s)
        self.subscribe(event.camera)

    def _set_parameter(self, name: str, value) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]
        )
        response = self.call(SetParameters, f"/{NODE_NAME}/set_parameters", request)
        if response is None:
            raise FaultFailed("~/set_parameters did not answer")
        if not response.results[0].successful:
            raise FaultFailed(f"{name}={value} refused: {response.results[0].reason}")

    def _wait_for_value(self, key: str, value: str, timeout: float = 10.0) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with self.lock:
                if all(self.latest.get(c, {}).get(key) == value for c in self.cameras):
                    return time.monotonic() - start
            time.sleep(0.1)
        return None

    def _fault_parameter_change(self, event, result) -> None:
        with self.lock:
            current = self.latest.get(self.cameras[0], {}).get("temporal_mode") or "off"
        other = "fuse" if current == "off" else "off"
        for value, until in ((other, result.started_s + event.duration_s), (current, None)):
            self._set_parameter("temporal_mode", value)
            seen = self._wait_for_value("temporal_mode", value)
            result.notes.append(
                f"temporal_mode={value}: "
                + (
                    "not seen in diagnostics"
                    if seen is None
                    else f"in diagnostics after {seen:.1f} s"
                )
            )
            if until is not None:
                self.sleep_until(until)

    def _lifecycle_cycle(self, event, result, cleanup: bool) -> None:
        from lifecycle_msgs.msg import Transition

        self.paused = True
        try:
            if not self.wait_settled(idle=False, timeout=self.args.recover_timeout):
                result.notes.append("not every frame was received before deactivate")
            with self.lock:
                dropped = sum(self.totals.total(c)["dropped"] for c in self.cameras)
            self.change_state(Transition.TRANSITION_DEACTIVATE)
            if not self.wait_settled(idle=True, timeout=self.args.recover_timeout):
                raise FaultFailed("frames not accounted for after deactivate")
            with self.lock:
                dropped = sum(self.totals.total(c)["dropped"] for c in self.cameras) - dropped
                if cleanup:
                    self.epoch_end = {c: dict(self.latest.get(c, {})) for c in self.cameras}
            result.notes.append(f"waiting frames dropped at deactivate: {dropped}")
            if cleanup:
                self.change_state(Transition.TRANSITION_CLEANUP)
                time.sleep(event.duration_s)
                self.change_state(Transition.TRANSITION_CONFIGURE, self.args.startup_timeout)
            else:
                time.sleep(event.duration_s)
            self.change_state(Transition.TRANSITION_ACTIVATE)
            self._wait_for_matches(self.args.recover_timeout)
        finally:
            self.paused = False

    def _fault_lifecycle_deactivate(self, event, result) -> None:
        self._lifecycle_cycle(event, result, cleanup=False)

    def _fault_lifecycle_cleanup(self, event, result) -> None:
        self._lifecycle_cycle(event, result, cleanup=True)

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        publisher = threading.Thread(target=self.publish_loop, name="publish", daemon=True)
        publisher.start()
        # Warm-up: every camera answered (the node has discovered our subscriptions), then a while.
        deadline = time.monotonic() + args.startup_timeout
        while not all(self.arrivals[c] for c in self.cameras):
            if not self.node.alive() or time.monotonic() > deadline:
                raise SystemExit(f"the node did not answer every camera:\n{self.node.tail(40)}")
            time.sleep(0.1)
        time.sleep(args.warmup_seconds)
        with self.lock:
            old_t0 = self.clock.t0
            self.clock.start()  # run time 0; the warm-up's statuses get negative times
            shift = self.clock.t0 - old_t0
            for camera in self.cameras:
                self.arrivals[camera], self.answers[camera] = [], []  # latency: the run only
                self.statuses[camera] = [
                    (t - shift, lvl, m) for t, lvl, m in self.statuses[camera]
                ]
            self.latest_at = {c: t - shift for c, t in self.latest_at.items()}
        self.schedule = default_schedule(
            self.duration, self.cameras, self.kinds, args.stale_s, args.fault_every
        )
        sampler = threading.Thread(target=self.sample_loop, name="sample", daemon=True)
        self.sample()
        sampler.start()
        last_start = self.duration * 0.9
        for event in self.schedule:
            self.sleep_until(event.at_s)
            if not self.node.alive():
                break
            if self.clock.now() > last_start:
                result = FaultResult(event, error="not run: no time left before the last 10 %")
            else:
                result = self.run_fault(event)
            self.faults.append(result)
            print(self._fault_line(result), flush=True)
        self.sleep_until(self.duration)
        self.sample()
        # The end: no more frames; every published one must end in one counter.
        self.paused = True
        settled = self.wait_settled(idle=True, timeout=args.recover_timeout)
        self.stop_event.set()
        publisher.join(timeout=5.0)
        sampler.join(timeout=args.sample_seconds + 5.0)
        alive = self.node.alive() and self.node_died_at is None
        exit_code = self.node.stop(timeout=60.0)  # SIGINT, escalating
        return self.summary(alive, exit_code, settled)

    @staticmethod
    def _fault_line(result: FaultResult) -> str:
        event = result.event
        state = result.error or (
            "not recovered"
            if result.recovered_s is None
            else f"recovered in {result.recovered_s:.2f} s"
        )
        return (
            f"  {result.started_s or event.at_s:7.1f} s  {event.kind} {event.camera or 'all'}: "
            f"{state}; {result.message or '-'}; {'; '.join(result.notes) or '-'}"
        )

    def summary(self, alive: bool, exit_code: int, settled: bool) -> dict:
        windows = run_windows(self.duration)
        excluded = [
            (
                r.started_s,
                (r.ended_s or r.started_s) + (r.recovered_s or self.args.recover_timeout),
            )
            for r in self.faults
            if r.started_s is not None
        ]
        cameras = {}
        for camera, feed in self.feeds.items():
            totals = self.totals.total(camera)
            first = window_latency(self.answers[camera], windows["first"], excluded)
            last = window_latency(self.answers[camera], windows["last"], excluded)
            cameras[camera] = {
                "published": feed.published,
                "published_good": feed.good,
                "published_malformed": feed.malformed,
                **totals,
                **account(feed.published, totals),
                "epochs": self.totals.epochs.get(camera, 1),
                "latency_first": first,
                "latency_last": last,
                "latency_ratio": latency_ratio(first, last),
                "answered": len(self.answers[camera]),
            }
        resources = resource_summary(self.samples, reference_time(self.duration))
        return {
            "cameras": cameras,
            "resources": resources,
            "faults": [r.as_dict() for r in self.faults],
            "node_alive": alive,
            "node_exit_code": exit_code,
            "settled_at_end": settled,
        }


class FaultFailed(RuntimeError):
    """A fault could not be injected as planned (a service did not answer, ...)."""


# ---- fuzz mode --------------------------------------------------------------------------------
ROUND = 8  # bad messages between two good frames (below the node's queue and reader depth)


def _good_frame(rng, kind: str, stamp_s: float):
    from sensor_msgs.msg import CompressedImage

    from ros_support import image_message
    from video_seg_ros.image_encoding import compressed_fields

    height, width = int(rng.integers(24, 64)), int(rng.integers(32, 96))
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], axis=2).astype(np.uint8)
    msg = image_message(pixels, "rgb8", stamp_s)
    if kind == "raw":
        return msg
    compressed = CompressedImage(
        **compressed_fields(pixels, "rgb", "jpeg" if rng.random() < 0.7 else "png")
    )
    compressed.header = msg.header
    return compressed


def run_fuzz(args, log_dir: Path) -> int:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from ros_support import NodeProcess, RosProbe, make_tiny_checkpoint, write_params_file
    from video_seg_ros.bags import cdr_stamp_ns
    from video_seg_ros.ros.malformed_messages import (
        DEFAULT_MAX_PIXELS,
        iter_malformed,
        to_ros_message,
    )

    checkpoint = args.checkpoint
    if checkpoint == "default" and "checkpoint" not in parse_params(args.param):
        checkpoint = str(make_tiny_checkpoint(log_dir / "tiny.pt", size=(64, 32)))  # as the test
    common = {
        "checkpoint": checkpoint,
        "device": args.device,
        "backend": "torch",
        "precision": "fp32",
        "cpu_threads": 1,
        "input_qos": "reliable",
        "frame_queue_size": 16,
        "diagnostics_period_s": 0.5,
        "consistency_metric": False,
        "max_input_pixels": DEFAULT_MAX_PIXELS,
        **parse_params(args.param),
    }
    kinds = {
        "raw": ("fuzz_raw", Image, "image"),
        "compressed": ("fuzz_jpeg", CompressedImage, "image/compressed"),
    }
    nodes = {}
    for kind, (name, _, _) in kinds.items():
        params = {**common, **({"image_transport": "compressed"} if kind == "compressed" else {})}
        nodes[kind] = NodeProcess(
            write_params_file(log_dir / f"{name}.yaml", params),
            log_dir / f"{name}.log",
            remaps={"image": f"/{name}/image"},
            name=name,
        )
    probe = RosProbe("soak_fuzz")
    reliable = QoSProfile(depth=ROUND + 2, reliability=ReliabilityPolicy.RELIABLE)
    lock = threading.Lock()
    answered = {kind: set() for kind in kinds}
    latest: dict[str, dict] = {}
    results: dict[str, dict] = {}
    errors: list[str] = []

    def on_labels(kind, data):
        with lock:
            answered[kind].add(cdr_stamp_ns(data))

    def on_diagnostics(msg):
        for status in msg.status:
            for kind, (name, _, _) in kinds.items():
                if status.name == f"{name}: segmentation":
                    with lock:
                        latest[kind] = {kv.key: kv.value for kv in status.values}

    publishers = {}
    for kind, (name, msg_type, suffix) in kinds.items():
        publishers[kind] = probe.publisher(msg_type, f"/{name}/{suffix}", reliable)
        probe.node.create_subscription(
            Image,
            f"/{name}/labels",
            lambda data, k=kind: on_labels(k, data),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
            raw=True,
        )
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)

    def send_good(kind, rng, stamp, timeout=30.0) -> bool:
        msg = _good_frame(rng, kind, stamp)
        wanted = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        publishers[kind].publish(msg)
        return bool(probe.wait_for(lambda: wanted in answered[kind], timeout))

    def fuzz(kind):
        node = nodes[kind]
        rng = np.random.default_rng(args.seed)
        before = process_figures(node.process.pid)
        start = time.monotonic()
        generator = iter_malformed(args.seed + (kind == "compressed"), kind, DEFAULT_MAX_PIXELS)
        sent, good, ok, stamp = [], 0, 0, 100.0
        while len(sent) < args.fuzz and node.alive():
            for _ in range(min(ROUND, args.fuzz - len(sent))):
                message = next(generator)
                stamp += 0.05
                publishers[kind].publish(to_ros_message(message, stamp))
                sent.append(message.reason)
            stamp += 0.05
            good += 1
            ok += send_good(kind, rng, stamp)
        total = len(sent) + good + warmup[kind]
        final = probe.wait_for(
            lambda: (latest.get(kind) or {}).get("received") == str(total) and latest[kind], 30.0
        )
        counted = Counter(
            {
                key[len("rejected_") :]: int(value)
                for key, value in (final or {}).items()
                if key.startswith("rejected_") and value.isdigit()
            }
        )
        results[kind] = {
            "malformed_sent": len(sent),
            "rejected": int((final or {}).get("rejected", -1)),
            "reasons_match": counted == Counter(sent),
            "expected_reasons": dict(Counter(sent)),
            "counted_reasons": dict(counted),
            "good_sent": good,
            "good_answered": ok,
            "received": int((final or {}).get("received", -1)),
            "expected_received": total,
            "dropped": int((final or {}).get("dropped", -1)),
            "seconds": round(time.monotonic() - start, 1),
            "rss_before_kb": (before or {}).get("rss_kb"),
            "rss_after_kb": (process_figures(node.process.pid) or {}).get("rss_kb"),
            "alive": node.alive(),
        }

    warmup = {kind: 0 for kind in kinds}
    try:
        for kind, node in nodes.items():
            ready = probe.wait_for(
                lambda: publishers[kind].get_subscription_count() > 0 or not node.alive(),
                args.startup_timeout,
            )
            if not ready or not node.alive():
                raise SystemExit(f"{node.name} did not start:\n{node.tail(40)}")
            rng = np.random.default_rng(0)
            for attempt in range(40):  # until the node has discovered our labels subscription
                warmup[kind] += 1
                if send_good(kind, rng, 10.0 + attempt * 0.05, timeout=1.0):
                    break
        threads = [threading.Thread(target=fuzz, args=(kind,)) for kind in kinds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        probe.close()
        codes = {kind: node.stop(timeout=60.0) for kind, node in nodes.items()}
    rows = []
    for kind, r in results.items():
        r["exit_code"] = codes[kind]
        rows.append(
            [
                kind,
                r["malformed_sent"],
                r["rejected"],
                "yes" if r["reasons_match"] else "NO",
                f"{r['good_answered']}/{r['good_sent']}",
                f"{r['received']}/{r['expected_received']}",
                r["dropped"],
                f"{(r['rss_before_kb'] or 0) / 1024:.0f} -> {(r['rss_after_kb'] or 0) / 1024:.0f}",
                r["seconds"],
                r["exit_code"],
            ]
        )
        if not (
            r["rejected"] == r["malformed_sent"]
            and r["reasons_match"]
            and r["good_answered"] == r["good_sent"]
            and r["received"] == r["expected_received"]
            and r["exit_code"] == 0
        ):
            errors.append(
                f"{kind}: {json.dumps({k: v for k, v in r.items() if 'reasons' not in k})}"
            )
    for kind in kinds:
        if kind not in results:
            errors.append(f"{kind}: the fuzz did not finish")
    print(
        markdown_table(
            [
                "transport",
                "malformed sent",
                "rejected",
                "reasons as expected",
                "good answered",
                "received/expected",
                "dropped",
                "RSS MB",
                "seconds",
                "exit",
            ],
            rows,
        )
    )
    print(
        "verdict: PASS"
        if not errors
        else "verdict: FAIL\n" + "\n".join(f"  - {e}" for e in errors)
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"fuzz": results, "errors": errors}, indent=2))
    return 1 if errors else 0


# ---- main -------------------------------------------------------------------------------------
def machine_line() -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load average {load}; {os.cpu_count()} cores"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_fault_kinds(args.faults)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="soak_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = "python bench/soak.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"{command}\n{machine_line()}; logs in {log_dir}", flush=True)
    from video_seg_ros.ros.dds import remove_stale_shared_memory

    # Segments left by killed processes take RAM from the run (tmpfs): start from none.
    print(f"stale Fast DDS segments removed: {remove_stale_shared_memory()}", flush=True)
    if args.fuzz:
        return run_fuzz(args, log_dir)
    soak = Soak(args, log_dir)
    try:
        soak.start()
        print(
            f"{len(soak.cameras)} cameras x {args.rate:g} Hz, {args.size} frames "
            f"({args.stamps} stamps) from {sorted(set(soak.sources.values()))}; "
            f"{'video_seg_lifecycle_node' if soak.lifecycle else 'video_seg_node'} pid "
            f"{soak.node.process.pid}; {args.minutes:g} min, faults: "
            f"{', '.join(soak.kinds) or 'none'}",
            flush=True,
        )
        summary = soak.run()
    finally:
        soak.stop_event.set()
        if hasattr(soak, "node") and soak.node.alive():
            soak.node.stop(timeout=30.0)
        if hasattr(soak, "probe"):
            soak.probe.close()
    limits = Limits(args.max_rss_growth, args.max_latency_ratio, args.recover_timeout)
    if not summary["settled_at_end"]:
        print("warning: the node's counters did not settle at the end", flush=True)
    print(f"\n{machine_line()} (at the end)\n")
    print(format_report(summary, limits))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": command,
            "parameters": soak.params,
            "sources": soak.sources,
            "schedule": [vars(event) for event in soak.schedule],
            "samples": soak.samples,
            "statuses": soak.statuses,
            "latencies": soak.answers,
            "summary": summary,
            "failures": failures(summary, limits),
        }
        args.json.write_text(json.dumps(document, indent=1, default=finite_or_none))
    return 1 if failures(summary, limits) else 0


if __name__ == "__main__":
    sys.exit(main())
