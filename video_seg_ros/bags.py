"""rosbag2 files without ROS: write camera bags and read messages back, with the ``rosbags``
package.

Bags are written in the rosbag2 format that ``ros2 bag play`` (Jazzy, Kilted) reads: a folder with
``metadata.yaml`` and one ``.mcap`` (default) or ``.db3`` (sqlite3) file. Messages are stored as
CDR bytes, the same bytes a ROS 2 publisher sends, so a player can publish them unchanged.

Image messages are converted by :mod:`video_seg_ros.image_encoding` (the project's one
numpy <-> message converter); this module only adds the bag plumbing:

- :class:`BagWriter`: writes into a hidden temporary folder beside the destination and renames it
  into place on success, so an error or Ctrl-C never leaves a half-written bag behind.
- :func:`read_messages` / :func:`read_images`: raw or decoded messages in receive-time order.
- :func:`restamp_cdr`: rewrites the header stamp inside a serialized message without decoding it.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from video_seg_ros.image_encoding import (
    FRAME_ENCODINGS,
    compressed_fields,
    image_fields,
    image_to_array,
    message_to_frame,
)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

#: storage name (as ``ros2 bag record -s`` spells it) -> rosbags plugin
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: rosbag2 metadata version 9 (Jazzy and later) stores the message definitions ros2 bag needs.
BAG_VERSION = 9
#: metadata.yaml ``custom_data`` key under which make_bag records which file each frame came from.
FRAMES_KEY = "video_seg_ros.frames"


class BagError(RuntimeError):
    """A bag cannot be written or read; the message says what to do."""


@lru_cache(maxsize=1)
def typestore():
    """Message definitions of ROS 2 Kilted (the types every bag here uses)."""
    return get_typestore(Stores.ROS2_KILTED)


# ---- time -------------------------------------------------------------------------------------
def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Nanoseconds since the epoch -> (sec, nanosec) of builtin_interfaces/Time."""
    return int(ns // 1_000_000_000), int(ns % 1_000_000_000)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags object) -> nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header(ns: int, frame_id: str):
    types = typestore().types
    sec, nanosec = ns_to_stamp(ns)
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )


def _uint8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


# ---- message construction ---------------------------------------------------------------------
def image_message(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """rosbags ``sensor_msgs/msg/Image`` holding ``pixels`` (see image_encoding.image_fields)."""
    fields = image_fields(pixels, encoding)
    fields["data"] = _uint8(fields["data"])
    return typestore().types[IMAGE_TYPE](header=_header(stamp_ns, frame_id), **fields)


def compressed_message(
    pixels: np.ndarray, channel_order: str, stamp_ns: int, frame_id: str, quality: int = 95
):
    """rosbags ``sensor_msgs/msg/CompressedImage`` with a JPEG of ``pixels``."""
    fields = compressed_fields(pixels, channel_order, "jpeg", quality)
    return typestore().types[COMPRESSED_IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), format=fields["format"], data=_uint8(fields["data"])
    )


@dataclass
class CameraCalibration:
    """Intrinsics for sensor_msgs/CameraInfo (all zeros = uncalibrated, as REP 104 allows)."""

    width: int
    height: int
    k: list[float]
    d: list[float]
    r: list[float]
    p: list[float]
    distortion_model: str = "plumb_bob"

    @classmethod
    def uncalibrated(cls, width: int, height: int) -> CameraCalibration:
        return cls(width, height, [0.0] * 9, [], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0] * 12, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> CameraCalibration:
        """Read a camera_calibration / camera_info_manager YAML file (image_width,
        camera_matrix...)."""
        try:
            data = yaml.safe_load(Path(path).read_text())
            return cls(
                int(data["image_width"]),
                int(data["image_height"]),
                [float(v) for v in data["camera_matrix"]["data"]],
                [float(v) for v in data["distortion_coefficients"]["data"]],
                [
                    float(v)
                    for v in data.get("rectification_matrix", {}).get(
                        "data", [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
                    )
                ],
                [float(v) for v in data["projection_matrix"]["data"]],
                str(data.get("distortion_model", "plumb_bob")),
            )
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
            raise BagError(
                f"cannot read camera calibration {path}: {error!r}; expected the YAML "
                "written by ROS camera_calibration (image_width, image_height, "
                "camera_matrix, distortion_coefficients, projection_matrix)"
            ) from error

    def scaled(self, width: int, height: int) -> CameraCalibration:
        """The same camera after resizing its images to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        k, p = list(self.k), list(self.p)
        for matrix, row in ((k, 3), (p, 4)):
            for col in range(row):
                matrix[col] *= sx
                matrix[row + col] *= sy
        return CameraCalibration(
            width, height, k, list(self.d), list(self.r), p, self.distortion_model
        )

    def message(self, stamp_ns: int, frame_id: str):
        types = typestore().types
        roi = types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        return types[CAMERA_INFO_TYPE](
            header=_header(stamp_ns, frame_id),
            height=self.height,
            width=self.width,
            distortion_model=self.distortion_model,
            d=np.array(self.d, dtype=np.float64),
            k=np.array(self.k, dtype=np.float64),
            r=np.array(self.r, dtype=np.float64),
            p=np.array(self.p, dtype=np.float64),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )


# ---- writing ----------------------------------------------------------------------------------
class BagWriter:
    """A rosbag2 bag written atomically: into a temporary folder, renamed to ``path`` on success.

    Use as a context manager; leaving the block by an exception removes everything written::

        with BagWriter("out_bag", storage="mcap") as bag:
            bag.write("/camera/image_raw", image_message(...), timestamp_ns)
    """

    def __init__(self, path: str | Path, storage: str = "mcap", overwrite: bool = False):
        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        self._custom: dict[str, str] = {}
        self._writer: Writer | None = None
        self._staging: Path | None = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists() and not self.overwrite:
            raise BagError(
                f"{self.path} exists already; choose another output path or allow overwriting it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same parent as the destination, so the final rename is atomic and never crosses devices.
        self._staging = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent)
        )
        self._writer = Writer(
            self._staging / self.path.name,
            version=BAG_VERSION,
            storage_plugin=STORAGES[self.storage],
        )
        self._writer.open()
        return self

    def set_custom_data(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-encoded unless a str) in metadata.yaml's ``custom_data``."""
        self._custom[key] = (
            value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        )

    def add_topic(self, topic: str, msgtype: str) -> Any:
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore()
            )
            self.counts[topic] = 0
        elif self._connections[topic].msgtype != msgtype:
            raise BagError(
                f"topic {topic} already holds {self._connections[topic].msgtype}, "
                f"cannot also write {msgtype}"
            )
        return self._connections[topic]

    def write(self, topic: str, message: Any, timestamp_ns: int) -> None:
        """Serialize a rosbags message object and store it with receive time ``timestamp_ns``."""
        msgtype = message.__msgtype__
        self.write_raw(topic, msgtype, typestore().serialize_cdr(message, msgtype), timestamp_ns)

    def write_raw(
        self, topic: str, msgtype: str, data: bytes | memoryview, timestamp_ns: int
    ) -> None:
        """Store already serialized CDR bytes (e.g. as received by an rclpy raw subscription)."""
        connection = self.add_topic(topic, msgtype)
        self._writer.write(connection, int(timestamp_ns), data)
        self.counts[topic] += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        writer, self._writer = self._writer, None
        try:
            if exc_type is None:
                for key, value in self._custom.items():
                    writer.set_custom_data(key, value)
                writer.close()
                if self.path.exists():  # --overwrite: replace only once the new bag is complete
                    shutil.rmtree(self.path)
                (self._staging / self.path.name).rename(self.path)
            else:
                writer.abort()
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)


# ---- reading ----------------------------------------------------------------------------------
@dataclass
class RawMessage:
    """One stored message: CDR bytes plus the time the recorder received it."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes

    def decode(self) -> Any:
        """The message as a rosbags dataclass (numpy arrays for uint8[] fields, zero-copy)."""
        return typestore().deserialize_cdr(self.data, self.msgtype)


@dataclass
class BagImage:
    """A decoded image message: pixels (H, W, 3) uint8 in ``channel_order``, or (H, W) for mono."""

    topic: str
    timestamp_ns: int
    stamp_ns: int
    frame_id: str
    pixels: np.ndarray
    channel_order: str
    encoding: str

    def rgb(self) -> np.ndarray:
        if self.pixels.ndim == 2 or self.channel_order == "rgb":
            return self.pixels
        return self.pixels[..., ::-1]


def _open_reader(path: str | Path) -> Reader:
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        hint = (
            " (pass the bag folder, not the .mcap/.db3 file inside it)" if path.is_file() else ""
        )
        raise BagError(f"{path} is not a rosbag2 folder: metadata.yaml not found{hint}")
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as error:
        raise BagError(f"cannot open bag {path}: {error}") from error
    return reader


def bag_info(path: str | Path) -> dict[str, Any]:
    """Topics (type, count), duration, storage and ``custom_data`` of a bag."""
    reader = _open_reader(path)
    try:
        metadata = yaml.safe_load((Path(path) / "metadata.yaml").read_text())[
            "rosbag2_bagfile_information"
        ]
        return {
            "path": str(path),
            "storage": metadata.get("storage_identifier"),
            "version": metadata.get("version"),
            "message_count": reader.message_count,
            "start_ns": reader.start_time if reader.message_count else None,
            "duration_s": reader.duration / 1e9 if reader.message_count else 0.0,
            "topics": {
                c.topic: {"type": c.msgtype, "count": c.msgcount} for c in reader.connections
            },
            "custom_data": metadata.get("custom_data") or {},
        }
    finally:
        reader.close()


def frame_keys(path: str | Path) -> list[dict[str, Any]]:
    """Per-frame source info make_bag stored (``[{"stamp_ns", "key", "sequence"}]``), else []."""
    custom = bag_info(path)["custom_data"]
    return json.loads(custom[FRAMES_KEY]) if FRAMES_KEY in custom else []


def read_messages(
    path: str | Path, topics: Iterable[str] | None = None, start_ns: int | None = None
) -> Iterator[RawMessage]:
    """Messages of ``topics`` (all when None) in receive-time order, from ``start_ns`` on."""
    reader = _open_reader(path)
    try:
        wanted = set(topics) if topics is not None else None
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None:
            missing = wanted - {c.topic for c in connections}
            if missing:
                raise BagError(
                    f"bag {path} has no topic {', '.join(sorted(missing))}; it has "
                    f"{', '.join(sorted(c.topic for c in reader.connections)) or 'no topics'}"
                )
        for connection, timestamp, data in reader.messages(
            connections=connections, start=start_ns
        ):
            yield RawMessage(connection.topic, connection.msgtype, timestamp, data)
    finally:
        reader.close()


def image_topics(path: str | Path) -> list[str]:
    """Topics holding Image or CompressedImage messages."""
    return [
        topic for topic, info in bag_info(path)["topics"].items() if info["type"] in IMAGE_TYPES
    ]


def pick_image_topic(
    path: str | Path,
    topic: str | None = None,
    several_hint: str = "name the image topic to use",
    info: dict[str, Any] | None = None,
) -> str:
    """``topic`` if it is an image topic of the bag, else (None) the bag's only image topic.

    Raises BagError listing the bag's topics when ``topic`` is not an image topic or the bag has
    no image topic, and naming them with ``several_hint`` when it has several.
    """
    topics = (info or bag_info(path))["topics"]
    images = sorted(name for name, t in topics.items() if t["type"] in IMAGE_TYPES)
    listing = ", ".join(
        f"{name} ({t['type']}, {t['count']} messages)" for name, t in sorted(topics.items())
    )
    if topic is not None:
        if topic not in images:
            raise BagError(
                f"topic {topic} is not an image topic of bag {path}; topics found: "
                f"{listing or 'none'}"
            )
        return topic
    if not images:
        raise BagError(
            f"bag {path} has no sensor_msgs/msg/Image or CompressedImage topic; topics "
            f"found: {listing or 'none'}. Record the camera topic, or pass a folder of "
            "frames instead"
        )
    if len(images) > 1:
        raise BagError(
            f"bag {path} has {len(images)} image topics ({', '.join(images)}); {several_hint}"
        )
    return images[0]


def default_image_topic(path: str | Path) -> str:
    """The bag's one image topic; a clear error when it has none or several."""
    return pick_image_topic(path)


#: Colour encodings message_to_frame converts; any other raw encoding (mono8, 16-bit...) is read
#: as is.
_COLOUR_ENCODINGS = tuple(e for e in FRAME_ENCODINGS if e != "mono8")


def decode_image(message: RawMessage) -> BagImage:
    """Decode an Image/CompressedImage RawMessage (mono stays (H, W), colour is (H, W, 3))."""
    if message.msgtype not in IMAGE_TYPES:
        raise BagError(f"topic {message.topic} holds {message.msgtype}, not an image")
    msg = message.decode()
    if message.msgtype == IMAGE_TYPE and msg.encoding not in _COLOUR_ENCODINGS:
        pixels, order = image_to_array(msg), "rgb"
    else:
        frame = message_to_frame(msg)
        pixels, order = frame.pixels, frame.channel_order
    return BagImage(
        message.topic,
        message.timestamp_ns,
        stamp_to_ns(msg.header.stamp),
        msg.header.frame_id,
        pixels,
        order,
        getattr(msg, "encoding", getattr(msg, "format", "")),
    )


def read_images(path: str | Path, topic: str | None = None) -> Iterator[BagImage]:
    """Decoded images of ``topic`` (the bag's only image topic when None), in receive order."""
    topic = topic or default_image_topic(path)
    for message in read_messages(path, [topic]):
        yield decode_image(message)


# ---- serialized messages ----------------------------------------------------------------------
_CDR_LE, _CDR_BE = b"\x00\x01", b"\x00\x00"


def has_header(msgtype: str) -> bool:
    """True when the message starts with a std_msgs/Header (Image, CompressedImage,
    CameraInfo...)."""
    fields = typestore().fielddefs.get(msgtype)
    if not fields:
        return False
    _name, (_kind, type_info) = fields[1][0]
    return type_info == "std_msgs/msg/Header"


def restamp_cdr(data: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a serialized message whose leading std_msgs/Header stamp is ``stamp_ns``.

    In CDR the header is the first field and its stamp (int32 sec, uint32 nanosec) the first
    eight bytes after the four-byte encapsulation prefix, so no decoding is needed. Only call this
    for types where :func:`has_header` is True.
    """
    prefix = bytes(data[:2])
    if prefix not in (_CDR_LE, _CDR_BE):
        raise BagError("message is not plain CDR (unknown encapsulation); cannot restamp it")
    out = bytearray(data)
    struct.pack_into("<iI" if prefix == _CDR_LE else ">iI", out, 4, *ns_to_stamp(stamp_ns))
    return bytes(out)


def cdr_stamp_ns(data: bytes | memoryview) -> int:
    """The leading std_msgs/Header stamp of a serialized message, in ns (see
    :func:`restamp_cdr`)."""
    prefix = bytes(data[:2])
    if prefix not in (_CDR_LE, _CDR_BE):
        raise BagError("message is not plain CDR (unknown encapsulation); cannot read its stamp")
    sec, nanosec = struct.unpack_from("<iI" if prefix == _CDR_LE else ">iI", data, 4)
    return sec * 1_000_000_000 + nanosec


__all__ = [
    "BAG_VERSION",
    "BagError",
    "BagImage",
    "BagWriter",
    "CAMERA_INFO_TYPE",
    "COMPRESSED_IMAGE_TYPE",
    "CameraCalibration",
    "FRAMES_KEY",
    "IMAGE_TYPE",
    "IMAGE_TYPES",
    "RawMessage",
    "STORAGES",
    "bag_info",
    "cdr_stamp_ns",
    "compressed_message",
    "decode_image",
    "default_image_topic",
    "frame_keys",
    "has_header",
    "image_message",
    "image_topics",
    "ns_to_stamp",
    "pick_image_topic",
    "read_images",
    "read_messages",
    "restamp_cdr",
    "stamp_to_ns",
    "typestore",
]


# ---- frames -> bag ----------------------------------------------------------------------------
#: Stamps of frames without a natural rate are 1/17 s apart, the Cityscapes camera rate.
CITYSCAPES_RATE_HZ = 17.0


def camera_info_topic(image_topic: str) -> str:
    """/camera/image_raw -> /camera/camera_info (the image_transport convention)."""
    namespace = image_topic.rsplit("/", 1)[0]
    return f"{namespace}/camera_info"


def _resized(pixels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``pixels`` resized to ``size`` (W, H) with area interpolation; unchanged if None or
    already that size."""
    if size is not None and (pixels.shape[1], pixels.shape[0]) != size:
        import cv2

        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return pixels


def write_bag(
    source,
    output: Path,
    *,
    topic: str = "/camera/image_raw",
    frame_id: str = "camera",
    rate: float = CITYSCAPES_RATE_HZ,
    encoding: str = "rgb8",
    compressed: bool = False,
    jpeg_quality: int = 95,
    resize: tuple[int, int] | None = None,
    camera_info: str | None = None,
    storage: str = "mcap",
    start_time_ns: int | None = None,
    sequence_gap: float = 1.0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the frames of ``source`` (a :class:`video_seg_ros.streams.FrameStream`: iterable of
    frames with ``rgb``, ``sequence`` and ``key``, with ``len()`` and ``description``) into a new
    bag at ``output``.

    Each header stamp equals the message's receive time in the bag, starting at ``start_time_ns``
    (default: now) and ``1/rate`` apart; a new sequence starts ``sequence_gap`` seconds after the
    previous one ended. ``camera_info`` ("uncalibrated" or a camera_calibration YAML) adds
    CameraInfo messages with the same stamps. The frame list (stamp, sequence, file key) goes into
    metadata.yaml under :data:`FRAMES_KEY`. Returns a summary dict (topics, counts, stamps).
    """
    import time

    from tqdm import tqdm

    if rate <= 0:
        raise BagError(f"the frame rate must be positive, got {rate}")
    if encoding not in ("rgb8", "bgr8"):
        raise BagError(f"encoding must be rgb8 or bgr8, got {encoding!r}")
    if not 1 <= jpeg_quality <= 100:
        raise BagError(f"JPEG quality must be 1..100, got {jpeg_quality}")
    period_ns = round(1e9 / rate)
    stamp = time.time_ns() if start_time_ns is None else int(start_time_ns)
    image_topic = f"{topic}/compressed" if compressed else topic
    info_topic = camera_info_topic(topic) if camera_info else None
    calibration: CameraCalibration | None = None
    frames_meta, previous_sequence = [], None
    size = None
    with BagWriter(output, storage=storage, overwrite=overwrite) as bag:
        for frame in tqdm(
            source, total=len(source), unit="frame", desc="make-bag", disable=not progress
        ):
            pixels = _resized(frame.rgb, resize)
            if size is None:
                size = (pixels.shape[1], pixels.shape[0])
            if previous_sequence is not None:
                stamp += period_ns + (
                    round(sequence_gap * 1e9) if frame.sequence != previous_sequence else 0
                )
            previous_sequence = frame.sequence
            if compressed:
                message = compressed_message(pixels, "rgb", stamp, frame_id, jpeg_quality)
            else:
                ordered = pixels if encoding == "rgb8" else np.ascontiguousarray(pixels[..., ::-1])
                message = image_message(ordered, encoding, stamp, frame_id)
            bag.write(image_topic, message, stamp)
            if info_topic:
                if calibration is None:
                    calibration = _calibration(camera_info, *size)
                bag.write(info_topic, calibration.message(stamp, frame_id), stamp)
            frames_meta.append({"stamp_ns": stamp, "sequence": frame.sequence, "key": frame.key})
        if not frames_meta:
            raise BagError(f"{source.description}: no frames could be read")
        bag.set_custom_data(FRAMES_KEY, frames_meta)
        counts = dict(bag.counts)
    return {
        "bag": str(output),
        "storage": storage,
        "topics": counts,
        "frames": len(frames_meta),
        "width": size[0],
        "height": size[1],
        "rate_hz": rate,
        "start_ns": frames_meta[0]["stamp_ns"],
        "end_ns": frames_meta[-1]["stamp_ns"],
        "sequences": sorted({f["sequence"] for f in frames_meta}),
    }


def verify_bag(
    bag: Path, source, topic: str, resize: tuple[int, int] | None = None, progress: bool = True
) -> dict:
    """Read ``bag`` back and compare every image with its source frame.

    Returns frames compared, frames identical pixel for pixel, the largest absolute difference and
    whether stamps equal receive times and increase strictly (JPEG frames are never identical;
    their largest difference shows the compression loss).
    """
    from tqdm import tqdm

    compared = identical = 0
    max_diff, stamps_ok, previous = 0, True, None
    images = read_images(bag, topic)
    for frame in tqdm(
        source, total=len(source), unit="frame", desc="verify", disable=not progress
    ):
        expected = _resized(frame.rgb, resize)
        image = next(images, None)
        if image is None:
            break
        got = image.rgb()
        compared += 1
        if got.shape != expected.shape:
            max_diff = 255
            continue
        diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
        identical += diff == 0
        max_diff = max(max_diff, diff)
        stamps_ok &= image.stamp_ns == image.timestamp_ns and (
            previous is None or image.stamp_ns > previous
        )
        previous = image.stamp_ns
    extra = sum(1 for _ in images)
    return {
        "frames_compared": compared,
        "frames_identical": identical,
        "max_abs_diff": max_diff,
        "extra_messages": extra,
        "stamps_monotonic_and_equal_receive_time": bool(stamps_ok),
    }


def _calibration(camera_info: str, width: int, height: int) -> CameraCalibration:
    if camera_info == "uncalibrated":
        return CameraCalibration.uncalibrated(width, height)
    calibration = CameraCalibration.from_yaml(camera_info)
    if (calibration.width, calibration.height) != (width, height):
        calibration = calibration.scaled(width, height)
    return calibration


def topic_rate_hz(path: str | Path, topic: str) -> float | None:
    """Recording rate of ``topic`` in Hz from the median stamp interval (sequence gaps do not
    count)."""
    stamps = [f["stamp_ns"] for f in frame_keys(path)] or [
        m.timestamp_ns for m in read_messages(path, [topic])
    ]
    intervals = np.diff(stamps)
    intervals = intervals[intervals > 0]
    return 1e9 / float(np.median(intervals)) if intervals.size else None
