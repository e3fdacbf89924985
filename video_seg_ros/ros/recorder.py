"""Recording the segmentation node's outputs (``video-seg-record``): a Node that subscribes to each
topic once its publisher appears (type and reliability taken from it) and writes the serialized
messages to a bag and/or decoded PNG/JSONL files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node

from video_seg_ros.bags import (
    IMAGE_TYPES,
    BagError,
    BagWriter,
    RawMessage,
    cdr_stamp_ns,
    decode_image,
    has_header,
)
from video_seg_ros.ros.player import message_class

#: output name -> topic suffix under the node's name
NODE_OUTPUTS = ("labels", "color", "overlay", "confidence", "consistency")
#: Start of the line logged once every subscription matched its publisher (a supervisor's ready
#: line: video_seg_ros.tools.demo_pipeline.RECORDER_READY_PATTERN)
READY_PREFIX = "ready: "


@dataclass
class TopicRecord:
    """Per topic: type, and (stamp_ns, receive_ns, file) of every message received."""

    topic: str
    msgtype: str
    entries: list[tuple[int | None, int, str | None]] = field(default_factory=list)


class Recorder:
    """Writes raw messages to a bag (``bag_dir``) and/or decoded PNG/JSONL files (``png_dir``)."""

    def __init__(
        self,
        bag_dir: Path | None = None,
        png_dir: Path | None = None,
        storage: str = "mcap",
        overwrite: bool = False,
    ):
        if bag_dir is None and png_dir is None:
            raise BagError("nothing to write: give a bag folder and/or a PNG folder")
        self.records: dict[str, TopicRecord] = {}
        self.png_dir = png_dir
        self._bag = BagWriter(bag_dir, storage=storage, overwrite=overwrite) if bag_dir else None
        if self._bag is not None:
            self._bag.__enter__()
        if png_dir is not None:
            if png_dir.exists() and any(png_dir.iterdir()) and not overwrite:
                raise BagError(
                    f"{png_dir} exists and is not empty; choose another folder or allow "
                    "overwriting"
                )
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
        return {
            "topics": {
                t: {
                    "type": r.msgtype,
                    "count": len(r.entries),
                    "messages": [
                        {"stamp_ns": s, "receive_ns": rx, "file": f} for s, rx, f in r.entries
                    ],
                }
                for t, r in self.records.items()
            }
        }

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
    """'/video_seg_node', ['labels', 'color']
    -> ['/video_seg_node/labels', '/video_seg_node/color']."""
    base = "/" + node.strip("/")
    return [f"{base}/{name}" for name in names]


@dataclass
class StopConditions:
    """When a recording ends (0 = no limit): messages on the first topic, total seconds, seconds
    without a message after the first one."""

    limit: int = 0
    timeout_s: float = 0.0
    idle_timeout_s: float = 0.0


class RecorderNode(Node):
    """Subscribes to ``topics`` as their publishers appear and hands every message to ``recorder``.

    Discovery and the stop conditions run on timers, so the node is spun by rclpy like any other
    (``rclpy.spin_until_future_complete(node, node.done)``); :attr:`done` completes when the
    recording should end, with the reason as its result. Once every subscription has matched its
    publisher (DDS-level match, reported by the ``matched`` event) a line starting with
    :data:`READY_PREFIX` is logged and ``ready_file`` is created, so a script can start its input
    only then; ``progress_file`` holds the count of the first topic.

    Raises (through :attr:`done`'s exception): :class:`BagError` when none of the topics was
    advertised within ``wait_s``.
    """

    def __init__(
        self,
        recorder: Recorder,
        topics: list[str],
        stop: StopConditions,
        *,
        wait_s: float = 30.0,
        depth: int = 100,
        ready_file: Path | None = None,
        progress_file: Path | None = None,
        log=print,
        node_name: str = "video_seg_recorder",
    ):
        from rclpy.task import Future

        super().__init__(node_name)
        self.recorder, self.topics, self.stop = recorder, list(topics), stop
        self.wait_s, self.depth = wait_s, depth
        self.ready_file, self.progress_file, self.log = ready_file, progress_file, log
        self.done = Future()
        self.started = time.monotonic()
        self.last_message: float | None = None
        self._pending = list(self.topics)
        self._matched: set[str] = set()
        self._topic_subscriptions = {}
        self._ready = False
        self._discovery = self.create_timer(0.05, self._discover)
        self._check = self.create_timer(0.05, self._check_stop)

    @property
    def first_topic(self) -> str | None:
        return next((t for t in self.topics if t in self.recorder.records), None)

    def _discover(self) -> None:
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        for topic in list(self._pending):
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            msgtype = publishers[0].topic_type
            reliable = all(
                p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers
            )
            qos = QoSProfile(
                depth=self.depth,
                reliability=ReliabilityPolicy.RELIABLE
                if reliable
                else ReliabilityPolicy.BEST_EFFORT,
            )
            self.recorder.add_topic(topic, msgtype)
            events = SubscriptionEventCallbacks(
                matched=lambda info, topic=topic: self._on_matched(topic, info)
            )
            self._topic_subscriptions[topic] = self.create_subscription(
                message_class(msgtype),
                topic,
                lambda data, topic=topic: self._on_message(topic, data),
                qos,
                raw=True,
                event_callbacks=events,
            )
            self._pending.remove(topic)
            self.log(f"recording {topic} [{msgtype}]")
        if self._pending and time.monotonic() - self.started > self.wait_s:
            if len(self._pending) == len(self.topics):
                self._finish(
                    error=BagError(
                        f"no publisher on {', '.join(self._pending)} after {self.wait_s:g} s; "
                        "is the node "
                        "running (same ROS_DOMAIN_ID) and is its full name right?"
                    )
                )
                return
            self.log(f"warning: {', '.join(self._pending)} not advertised; not recorded")
            self._pending.clear()
        self._mark_ready_when_matched()

    def _on_matched(self, topic: str, info) -> None:
        if info.current_count > 0:
            self._matched.add(topic)
        self._mark_ready_when_matched()

    def _mark_ready_when_matched(self) -> None:
        if self._ready or self._pending or not self._topic_subscriptions:
            return
        if (
            set(self._topic_subscriptions) <= self._matched
            or time.monotonic() - self.started > self.wait_s
        ):
            self._ready = True
            self._discovery.cancel()
            self.log(f"{READY_PREFIX}recording {', '.join(self._topic_subscriptions)}")
            if self.ready_file is not None:
                self.ready_file.parent.mkdir(parents=True, exist_ok=True)
                self.ready_file.touch()

    def _on_message(self, topic: str, data: bytes) -> None:
        self.recorder.write(topic, data, time.time_ns())
        self.last_message = time.monotonic()
        if self.progress_file is not None and topic == self.first_topic:
            self.progress_file.write_text(str(len(self.recorder.records[topic].entries)))

    def _check_stop(self) -> None:
        if self.done.done():
            return
        now = time.monotonic()
        first = self.first_topic
        if (
            self.stop.limit
            and first is not None
            and len(self.recorder.records[first].entries) >= self.stop.limit
        ):
            self._finish("limit")
        elif self.stop.timeout_s and now - self.started > self.stop.timeout_s:
            self._finish("timeout")
        elif (
            self.stop.idle_timeout_s
            and self.last_message is not None
            and now - self.last_message > self.stop.idle_timeout_s
        ):
            self._finish("idle")

    def _finish(self, reason: str | None = None, error: Exception | None = None) -> None:
        if self.done.done():
            return
        self._discovery.cancel()
        self._check.cancel()
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(reason)
