"""video-seg-play: publish a rosbag2's messages into ROS topics with rclpy, paced by their timestamps.

For machines without ``ros2 bag play`` (e.g. a pip-installed rclpy). Examples::

    video-seg-play bags/cityscapes                       # all topics, real time
    video-seg-play bags/cityscapes --rate 0.3 --loop     # 30 % speed (17 Hz -> 5 Hz), forever
    video-seg-play bags/cityscapes --start 2.0 --qos sensor_data --restamp

The stored CDR bytes are published unchanged (no decode/encode per message), so a 2048x1024 frame
costs about as much as ``ros2 bag play``. With ``--restamp`` the header stamp of every message that
has one is replaced by the publish time, written straight into the serialized bytes.

Use the same ``ROS_DOMAIN_ID``/``RMW_IMPLEMENTATION`` (and, for full-size images, the Fast DDS
profile config/fastdds_large_images.xml) as the subscribers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from video_seg_ros.bags import BagError, bag_info, cdr_stamp_ns, has_header, read_messages, restamp_cdr
from video_seg_ros.processes import install_stop_handlers


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy class sensor_msgs.msg.Image."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as error:
        raise BagError(f"message type {msgtype} is not installed for rclpy ({error}); install the "
                       f"{package} package or leave that topic out with --topic") from error


def qos_profile(name: str, depth: int):
    """``reliable`` (depth ``depth``, what ros2 bag play offers by default) or ``sensor_data``."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
    raise ValueError(f"unknown QoS {name!r}; use reliable or sensor_data")


@dataclass
class PlayStats:
    """What a playback published."""

    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    wall_s: float = 0.0
    max_late_ms: float = 0.0
    log: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"published": self.published, "total": sum(self.published.values()), "loops": self.loops,
                "wall_s": round(self.wall_s, 3), "max_late_ms": round(self.max_late_ms, 1)}


class BagPlayer:
    """Publishes a bag through an rclpy node; :meth:`play` blocks until done (or :meth:`stop`).

    Args:
        node: the rclpy node that owns the publishers.
        bag: rosbag2 folder.
        topics: topics to play (all when None).
        rate: playback speed factor (2.0 = twice as fast).
        start_offset_s: skip this many seconds from the bag's start.
        qos: ``reliable`` or ``sensor_data``.
        restamp: replace header stamps by the publish time.
        remap: bag topic -> published topic.
    """

    def __init__(self, node, bag: Path, topics: list[str] | None = None, rate: float = 1.0,
                 start_offset_s: float = 0.0, qos: str = "reliable", depth: int = 10,
                 restamp: bool = False, remap: dict[str, str] | None = None, keep_log: bool = False):
        if rate <= 0:
            raise BagError(f"--rate must be positive, got {rate}")
        if start_offset_s < 0:
            raise BagError(f"--start must be >= 0, got {start_offset_s}")
        self.info = bag_info(bag)
        if not self.info["message_count"]:
            raise BagError(f"bag {bag} holds no messages")
        available = self.info["topics"]
        topics = list(topics or available)
        unknown = [t for t in topics if t not in available]
        if unknown:
            raise BagError(f"bag {bag} has no topic {', '.join(unknown)}; it has {', '.join(available)}")
        self.node, self.bag, self.topics, self.rate = node, Path(bag), topics, rate
        self.start_ns = self.info["start_ns"] + round(start_offset_s * 1e9)
        self.restamp, self.keep_log = restamp, keep_log
        self.remap = remap or {}
        profile = qos_profile(qos, depth)
        self.publishers = {t: node.create_publisher(message_class(available[t]["type"]),
                                                    self.remap.get(t, t), profile) for t in topics}
        self.stamped = {t: has_header(available[t]["type"]) for t in topics}
        self.stats = PlayStats(published={self.remap.get(t, t): 0 for t in topics})
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until every publisher has at least one subscriber (True) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stopped:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return True
            time.sleep(0.05)
        return False

    def play(self, loop: bool = False) -> PlayStats:
        started = time.monotonic()
        try:
            while not self._stopped:
                self._play_once()
                self.stats.loops += 1
                if not loop:
                    break
        finally:
            self.stats.wall_s = time.monotonic() - started
        return self.stats

    def _play_once(self) -> None:
        origin_wall, origin_bag = None, None
        for message in read_messages(self.bag, self.topics, start_ns=self.start_ns):
            if self._stopped:
                return
            if origin_wall is None:
                origin_wall, origin_bag = time.monotonic(), message.timestamp_ns
            due = origin_wall + (message.timestamp_ns - origin_bag) / 1e9 / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.stats.max_late_ms = max(self.stats.max_late_ms, -delay * 1000.0)
            data = message.data
            publish_ns = time.time_ns()
            if self.restamp and self.stamped[message.topic]:
                data = restamp_cdr(data, publish_ns)
            self.publishers[message.topic].publish(bytes(data))
            topic = self.remap.get(message.topic, message.topic)
            self.stats.published[topic] += 1
            if self.keep_log:
                self.stats.log.append({"topic": topic, "bag_ns": message.timestamp_ns,
                                       "stamp_ns": publish_ns if self.restamp and self.stamped[message.topic]
                                       else cdr_stamp_ns(message.data) if self.stamped[message.topic] else None,
                                       "publish_ns": publish_ns})


def parse_remap(items: list[str] | None) -> dict[str, str]:
    remap = {}
    for item in items or []:
        if ":=" not in item:
            raise BagError(f"--remap takes FROM:=TO, got {item!r}")
        source, target = item.split(":=", 1)
        remap[source] = target
    return remap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video-seg-play", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="rosbag2 folder (metadata.yaml + .mcap or .db3)")
    parser.add_argument("--topic", action="append", default=None, metavar="TOPIC",
                        help="play only this topic; repeat for several (default: all topics)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="speed factor: 1.0 = as recorded, 0.5 = half speed (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument("--start", type=float, default=0.0, metavar="SECONDS",
                        help="skip this many seconds from the start of the bag (default 0)")
    parser.add_argument("--qos", choices=("reliable", "sensor_data"), default="reliable",
                        help="publisher QoS: reliable (default, like ros2 bag play; no frame is lost "
                             "by a reliable subscriber) or sensor_data (best effort, depth 5)")
    parser.add_argument("--depth", type=int, default=10,
                        help="history depth of reliable publishers (default 10)")
    parser.add_argument("--restamp", action="store_true",
                        help="set header stamps to the publish time (for subscribers that drop "
                             "old stamps); the default keeps the recorded stamps, like ros2 bag play")
    parser.add_argument("--remap", action="append", default=None, metavar="FROM:=TO",
                        help="publish bag topic FROM as TO, e.g. /camera/image_raw:=/cam0/image_raw")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="before playing, wait up to this long until every topic has a subscriber "
                             "(default 0: start at once)")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="sleep this long after creating the publishers, so subscribers can "
                             "match (default 0)")
    parser.add_argument("--log", type=Path, default=None, metavar="JSON",
                        help="write a JSON report: counts, and per message its topic, bag time, "
                             "header stamp and publish time (ns), e.g. to measure end-to-end latency")
    parser.add_argument("--node-name", default="video_seg_player", help="rclpy node name")
    return parser


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from video_seg_ros.ros.dds import use_large_image_profile

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(remove_ros_args(["video-seg-play", *argv])[1:])

    use_large_image_profile()  # full-size frames need the large shared-memory segment
    # Python's own handlers, not rclpy's: Ctrl-C and SIGTERM (launch, the demo) stop playback
    # between messages and the summary and --log are still written. Set explicitly: a process
    # started in the background by a shell inherits SIGINT as ignored.
    rclpy.init(args=["video-seg-play", *argv], signal_handler_options=SignalHandlerOptions.NO)
    install_stop_handlers()
    node = rclpy.create_node(args.node_name)
    player, code = None, 0
    try:
        player = BagPlayer(node, args.bag, args.topic, args.rate, args.start, args.qos, args.depth,
                           args.restamp, parse_remap(args.remap), keep_log=args.log is not None)
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(args.wait_for_subscribers):
            print(f"video-seg-play: no subscriber on {', '.join(player.publishers)} after "
                  f"{args.wait_for_subscribers:g} s; playing anyway", file=sys.stderr, flush=True)
        if args.delay > 0:
            time.sleep(args.delay)
        count = sum(player.info["topics"][t]["count"] for t in player.topics)
        print(f"playing {args.bag}: {count} messages, "
              f"{player.info['duration_s']:.2f} s at rate {args.rate:g}", flush=True)
        player.play(args.loop)
    except BagError as error:
        print(f"video-seg-play: error: {error}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if player is not None:
            summary = player.stats.summary()
            print("published " + ", ".join(f"{t}: {n}" for t, n in summary["published"].items())
                  + f" in {summary['wall_s']:.2f} s (max {summary['max_late_ms']:.0f} ms late)", flush=True)
            if args.log is not None:
                args.log.parent.mkdir(parents=True, exist_ok=True)
                args.log.write_text(json.dumps({**summary, "messages": player.stats.log}))
            time.sleep(0.2)  # let reliable writers hand their last samples over before teardown
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
