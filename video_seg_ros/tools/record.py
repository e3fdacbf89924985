"""video-seg-record: record video_seg_node's outputs to a rosbag2 or to PNG files, for offline scoring.

Examples::

    video-seg-record --bag runs/replay_out --count 90            # /video_seg_node/labels, 90 msgs
    video-seg-record --png runs/pngs --color --consistency --timeout 60
    video-seg-record --node /cam0/video_seg_node --bag runs/cam0 --overlay

Each topic's type and QoS reliability are taken from its publisher once it appears, and messages
are received as serialized bytes: into a bag they go unchanged (receive time = bag time, as
``ros2 bag record`` does), as PNGs they are decoded once and written as ``<topic>/<stamp_ns>.png``
(labels as mono8 class ids, colour views as RGB). Non-image topics (``~/consistency``) go to
``<topic>.jsonl`` in PNG mode. ``index.json`` (PNG mode) or ``--report`` lists every message's
header stamp and receive time, so latency and losses can be computed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.bags import (IMAGE_TYPES, STORAGES, BagError, BagWriter, RawMessage, cdr_stamp_ns,
                                decode_image, has_header)
from video_seg_ros.processes import install_stop_handlers

#: output name -> topic suffix under the node's name
NODE_OUTPUTS = ("labels", "color", "overlay", "confidence", "consistency")


@dataclass
class TopicRecord:
    """Per topic: type, and (stamp_ns, receive_ns, file) of every message received."""

    topic: str
    msgtype: str
    entries: list[tuple[int | None, int, str | None]] = field(default_factory=list)


class Recorder:
    """Writes raw messages to a bag (``bag_dir``) and/or decoded PNG/JSONL files (``png_dir``)."""

    def __init__(self, bag_dir: Path | None = None, png_dir: Path | None = None, storage: str = "mcap",
                 overwrite: bool = False):
        if bag_dir is None and png_dir is None:
            raise BagError("nothing to write: pass --bag DIR and/or --png DIR")
        self.records: dict[str, TopicRecord] = {}
        self.png_dir = png_dir
        self._bag = BagWriter(bag_dir, storage=storage, overwrite=overwrite) if bag_dir else None
        if self._bag is not None:
            self._bag.__enter__()
        if png_dir is not None:
            if png_dir.exists() and any(png_dir.iterdir()) and not overwrite:
                raise BagError(f"{png_dir} exists and is not empty; choose another folder or pass --overwrite")
            png_dir.mkdir(parents=True, exist_ok=True)

    def add_topic(self, topic: str, msgtype: str) -> None:
        self.records[topic] = TopicRecord(topic, msgtype)

    def write(self, topic: str, data: bytes, receive_ns: int) -> None:
        record = self.records[topic]
        stamp = cdr_stamp_ns(data) if has_header(record.msgtype) else None
        if self._bag is not None:
            self._bag.write_raw(topic, record.msgtype, data, receive_ns)
        name = None
        if self.png_dir is not None:
            name = self._write_file(RawMessage(topic, record.msgtype, receive_ns, data), stamp)
        record.entries.append((stamp, receive_ns, name))

    def _write_file(self, message: RawMessage, stamp: int | None) -> str:
        folder = self.png_dir / message.topic.strip("/").replace("/", "__")
        if message.msgtype in IMAGE_TYPES:
            image = decode_image(message)
            folder.mkdir(exist_ok=True)
            path = folder / f"{stamp:019d}.png"
            pixels = image.pixels
            if pixels.ndim == 3:  # OpenCV writes BGR
                pixels = pixels if image.channel_order == "bgr" else pixels[..., ::-1]
            if pixels.dtype == np.float32:  # confidence: 0..1 -> 16-bit PNG
                pixels = np.clip(pixels * 65535.0, 0, 65535).astype(np.uint16)
            if not cv2.imwrite(str(path), np.ascontiguousarray(pixels)):
                raise BagError(f"cannot write {path}")
            return str(path.relative_to(self.png_dir))
        msg = message.decode()
        line = {"receive_ns": message.timestamp_ns, "stamp_ns": stamp}
        if hasattr(msg, "data") and np.isscalar(msg.data):
            line["data"] = msg.data.item() if hasattr(msg.data, "item") else msg.data
        path = folder.with_suffix(".jsonl")
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        return str(path.relative_to(self.png_dir))

    def report(self) -> dict:
        return {"topics": {t: {"type": r.msgtype, "count": len(r.entries),
                               "messages": [{"stamp_ns": s, "receive_ns": rx, "file": f}
                                            for s, rx, f in r.entries]}
                           for t, r in self.records.items()}}

    def close(self, ok: bool = True) -> None:
        if self._bag is not None:
            bag, self._bag = self._bag, None
            if ok and sum(bag.counts.values()):
                bag.__exit__(None, None, None)
            else:  # nothing recorded: leave no empty bag behind
                bag.__exit__(BagError, BagError("empty"), None)
        if self.png_dir is not None:
            (self.png_dir / "index.json").write_text(json.dumps(self.report()))


def output_topics(node: str, names: list[str]) -> list[str]:
    """'/video_seg_node', ['labels', 'color'] -> ['/video_seg_node/labels', '/video_seg_node/color']."""
    base = "/" + node.strip("/")
    return [f"{base}/{name}" for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video-seg-record", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="video_seg_node",
                        help="the segmentation node's name with its namespace, e.g. /cam0/video_seg_node "
                             "(default video_seg_node); its outputs are <node>/labels etc.")
    parser.add_argument("--no-labels", action="store_true", help="do not record <node>/labels")
    for name in NODE_OUTPUTS[1:]:
        parser.add_argument(f"--{name}", action="store_true", help=f"also record <node>/{name}")
    parser.add_argument("--topic", action="append", default=[], metavar="TOPIC",
                        help="also record this topic (any type); repeat for several")
    parser.add_argument("--bag", type=Path, default=None, metavar="DIR",
                        help="write a rosbag2 folder (created on success; nothing is left if no "
                             "message arrived)")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap",
                        help="bag storage plugin (default mcap)")
    parser.add_argument("--png", type=Path, default=None, metavar="DIR",
                        help="write images as <DIR>/<topic>/<stamp_ns>.png, other messages as "
                             "<DIR>/<topic>.jsonl, and <DIR>/index.json")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many messages on the first recorded topic (0 = no limit)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="stop after this long in total (0 = no limit; Ctrl-C stops too)")
    parser.add_argument("--idle-timeout", type=float, default=0.0, metavar="SECONDS",
                        help="stop when no message arrived for this long after the first one (0 = never)")
    parser.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the topics to be advertised (default 30)")
    parser.add_argument("--depth", type=int, default=100,
                        help="subscription history depth (default 100: a slow disk loses nothing)")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="write counts and every message's stamp and receive time (ns) as JSON")
    parser.add_argument("--ready-file", type=Path, default=None, metavar="PATH",
                        help="create this file once every topic is subscribed and matched with its "
                             "publisher, so a script can start the input only then")
    parser.add_argument("--progress-file", type=Path, default=None, metavar="PATH",
                        help="keep the number of messages recorded on the first topic in this file "
                             "(rewritten on every message), for a script's progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --bag / --png output")
    return parser


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from video_seg_ros.ros.dds import use_large_image_profile

    from video_seg_ros.tools.play_bag import message_class

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(remove_ros_args(["video-seg-record", *argv])[1:])
    names = [] if args.no_labels else ["labels"]
    names += [n for n in NODE_OUTPUTS[1:] if getattr(args, n)]
    topics = output_topics(args.node, names) + list(args.topic)
    if not topics:
        print("video-seg-record: error: no topic to record (--no-labels without --color/... or --topic)",
              file=sys.stderr)
        return 2
    try:
        recorder = Recorder(args.bag, args.png, args.storage, args.overwrite)
    except BagError as error:
        print(f"video-seg-record: error: {error}", file=sys.stderr)
        return 2

    use_large_image_profile()  # full-size frames need the large shared-memory segment
    # Python's own handlers (set explicitly: a shell's background job inherits SIGINT as ignored),
    # so Ctrl-C / SIGTERM end the recording and the bag is still closed properly.
    rclpy.init(args=["video-seg-record", *argv], signal_handler_options=SignalHandlerOptions.NO)
    install_stop_handlers()
    node = rclpy.create_node("video_seg_recorder")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    started = time.monotonic()
    last_message = [None]
    code, ok = 0, True
    try:
        pending = list(topics)
        while pending:  # subscribe as soon as each topic's publisher is known (type + QoS)
            for topic in list(pending):
                publishers = node.get_publishers_info_by_topic(topic)
                if publishers:
                    msgtype = publishers[0].topic_type
                    reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
                    qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                                     else ReliabilityPolicy.BEST_EFFORT)
                    recorder.add_topic(topic, msgtype)

                    def callback(data, topic=topic):
                        recorder.write(topic, data, time.time_ns())
                        last_message[0] = time.monotonic()
                        if args.progress_file is not None and topic == topics[0]:
                            args.progress_file.write_text(str(len(recorder.records[topic].entries)))

                    node.create_subscription(message_class(msgtype), topic, callback, qos, raw=True)
                    pending.remove(topic)
                    print(f"recording {topic} [{msgtype}]", flush=True)
            if pending and time.monotonic() - started > args.wait:
                if len(pending) == len(topics):
                    raise BagError(f"no publisher on {', '.join(pending)} after {args.wait:g} s; is the "
                                   "node running (same ROS_DOMAIN_ID) and is --node its full name?")
                print(f"video-seg-record: warning: {', '.join(pending)} not advertised; not recorded",
                      file=sys.stderr, flush=True)
                break
            executor.spin_once(timeout_sec=0.05)
        first = topics[0] if topics[0] in recorder.records else next(iter(recorder.records))
        subscriptions = list(node.subscriptions)
        while not all(s.get_publisher_count() > 0 for s in subscriptions):
            if time.monotonic() - started > args.wait:
                break
            executor.spin_once(timeout_sec=0.05)
        if args.ready_file is not None:
            args.ready_file.parent.mkdir(parents=True, exist_ok=True)
            args.ready_file.touch()
        while True:
            executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if args.count and len(recorder.records[first].entries) >= args.count:
                break
            if args.timeout and now - started > args.timeout:
                break
            if args.idle_timeout and last_message[0] is not None and now - last_message[0] > args.idle_timeout:
                break
    except BagError as error:
        print(f"video-seg-record: error: {error}", file=sys.stderr)
        code, ok = 2, False
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        recorder.close(ok)
    report = recorder.report()
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report))
    counts = ", ".join(f"{t}: {r['count']}" for t, r in report["topics"].items()) or "nothing"
    print(f"recorded {counts} in {time.monotonic() - started:.1f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
