"""Playing a rosbag2 into ROS topics with rclpy (``video-seg-play``) and the message-type lookup
the recorder shares. The stored CDR bytes are published unchanged, paced by the bag's
timestamps."""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from video_seg_ros.bags import (
    BagError,
    bag_info,
    cdr_stamp_ns,
    has_header,
    read_messages,
    restamp_cdr,
)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy class sensor_msgs.msg.Image."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as error:
        raise BagError(
            f"message type {msgtype} is not installed for rclpy ({error}); install the "
            f"{package} package or leave that topic out"
        ) from error


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
        return {
            "published": self.published,
            "total": sum(self.published.values()),
            "loops": self.loops,
            "wall_s": round(self.wall_s, 3),
            "max_late_ms": round(self.max_late_ms, 1),
        }


class BagPlayer:
    """Publishes a bag through an rclpy node; :meth:`play` blocks until done (or :meth:`stop`).

    Args:
        node: the rclpy node that owns the publishers.
        bag: rosbag2 folder.
        topics: topics to play (all when None).
        speed: playback speed factor (2.0 = twice as fast).
        start_offset_s: skip this many seconds from the bag's start.
        qos: ``reliable`` or ``sensor_data``.
        restamp: replace header stamps by the publish time.
        remap: bag topic -> published topic.
    """

    def __init__(
        self,
        node,
        bag: Path,
        topics: list[str] | None = None,
        speed: float = 1.0,
        start_offset_s: float = 0.0,
        qos: str = "reliable",
        depth: int = 10,
        restamp: bool = False,
        remap: dict[str, str] | None = None,
        keep_log: bool = False,
    ):
        if speed <= 0:
            raise BagError(f"the playback speed must be positive, got {speed}")
        if start_offset_s < 0:
            raise BagError(f"the start offset must be >= 0 s, got {start_offset_s}")
        self.info = bag_info(bag)
        if not self.info["message_count"]:
            raise BagError(f"bag {bag} holds no messages")
        available = self.info["topics"]
        topics = list(topics or available)
        unknown = [t for t in topics if t not in available]
        if unknown:
            raise BagError(
                f"bag {bag} has no topic {', '.join(unknown)}; it has {', '.join(available)}"
            )
        self.node, self.bag, self.topics, self.speed = node, Path(bag), topics, speed
        self.start_ns = self.info["start_ns"] + round(start_offset_s * 1e9)
        self.restamp, self.keep_log = restamp, keep_log
        self.remap = remap or {}
        profile = qos_profile(qos, depth)
        self.publishers = {
            t: node.create_publisher(
                message_class(available[t]["type"]), self.remap.get(t, t), profile
            )
            for t in topics
        }
        self.stamped = {t: has_header(available[t]["type"]) for t in topics}
        self.stats = PlayStats(published={self.remap.get(t, t): 0 for t in topics})
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until every publisher has at least one subscriber (True) or ``timeout_s``
        passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stopped:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return True
            time.sleep(0.05)
        return False

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until reliable subscribers acknowledged every published message (True), or
        ``timeout_s`` passed; call before tearing the node down so the last samples arrive."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout_s
        acked = True
        for publisher in self.publishers.values():
            remaining = max(0.0, deadline - time.monotonic())
            acked &= bool(publisher.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9))))
        return acked

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
            due = origin_wall + (message.timestamp_ns - origin_bag) / 1e9 / self.speed
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
                self.stats.log.append(
                    {
                        "topic": topic,
                        "bag_ns": message.timestamp_ns,
                        "stamp_ns": publish_ns
                        if self.restamp and self.stamped[message.topic]
                        else cdr_stamp_ns(message.data)
                        if self.stamped[message.topic]
                        else None,
                        "publish_ns": publish_ns,
                    }
                )
