"""A seeded generator of malformed camera messages, each with the rejection reason it must get.

The node promises to reject every malformed ``sensor_msgs/Image`` and ``CompressedImage`` with a
counted reason (diagnostics ``rejected_<reason>``) and to keep segmenting the good frames around
them. :func:`malformed_messages` makes the hostile half of that promise reproducible: wrong sizes,
steps and encodings, sizes up to 2^32 - 1 claimed in headers, truncated and corrupted JPEG/PNG,
decompression bombs (a PNG header claiming 60000x60000, a JPEG whose frame header claims a huge
size behind more than 64 KiB of APPn segments), random bytes, WebP/TIFF/PPM/BMP/GIF/JPEG 2000
payloads, and headers with huge or non-ASCII frame ids.

The cases are plain field dicts (no ROS import), so the decoder can be checked against them
without a ROS install (:func:`video_seg_ros.image_encoding.message_to_frame` with
``types.SimpleNamespace``); :func:`to_ros_message` builds the rclpy message. ``reason`` is the
node's key: one of the :class:`~video_seg_ros.image_encoding.ImageDecodeError` reasons, or
``too_small`` (the node refuses frames under 2x2 pixels). The test suite sends a few thousand
(test/test_node_fuzz.py); a bench passes a larger ``count``.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from video_seg_ros.image_encoding import MAX_SIDE

KINDS = ("raw", "compressed")
#: The node's default ``max_input_pixels``; pass the node's value when it differs.
DEFAULT_MAX_PIXELS = 8_388_608
UINT32_MAX = (1 << 32) - 1


@dataclass
class MalformedMessage:
    """One hostile message: ``fields`` of the Image / CompressedImage (header aside), the
    header's ``frame_id``, the ``reason`` the node must count it under, and what it is."""

    kind: str  # "raw" (sensor_msgs/Image) or "compressed"
    fields: dict[str, Any]
    reason: str
    description: str
    frame_id: str = "camera"
    extra: dict[str, Any] = field(default_factory=dict)


def malformed_messages(
    seed: int, count: int, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[MalformedMessage]:
    """``count`` malformed messages of ``kind`` ("raw" or "compressed"), the same for one seed.

    ``max_pixels``: the node's ``max_input_pixels`` (decides which claimed sizes are
    ``too_large`` rather than accepted).
    """
    generator = iter_malformed(seed, kind, max_pixels)
    return [next(generator) for _ in range(count)]


def iter_malformed(
    seed: int, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[MalformedMessage]:
    """An endless stream of :func:`malformed_messages` (for long benches)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 4 <= max_pixels <= 1 << 28:  # the node parameter's range
        raise ValueError(f"max_pixels must be within 4..{1 << 28}, got {max_pixels}")
    rng = np.random.default_rng(seed)
    makers = _RAW_MAKERS if kind == "raw" else _compressed_makers(rng)
    while True:
        make = makers[int(rng.integers(len(makers)))]
        fields, reason, description = make(rng, max_pixels)
        yield MalformedMessage(kind, fields, reason, description, frame_id=_frame_id(rng))


def expected_reasons(messages: list[MalformedMessage]) -> Counter:
    """How many messages each rejection reason must count."""
    return Counter(message.reason for message in messages)


def to_ros_message(message: MalformedMessage, stamp_s: float):
    """The rclpy ``sensor_msgs`` message of ``message``, stamped ``stamp_s`` seconds."""
    from sensor_msgs.msg import CompressedImage, Image

    msg = Image() if message.kind == "raw" else CompressedImage()
    for name, value in message.fields.items():
        setattr(msg, name, value)
    msg.header.frame_id = message.frame_id
    msg.header.stamp.sec = int(stamp_s)
    msg.header.stamp.nanosec = int(round((stamp_s - int(stamp_s)) * 1e9)) % 1_000_000_000
    return msg


def odd_frame_id(rng: np.random.Generator) -> str:
    """A legal but hostile header frame id: huge, non-ASCII, control characters or empty."""
    choice = int(rng.integers(5))
    if choice == 0:
        return "x" * int(rng.integers(10_000, 100_000))
    if choice == 1:
        return "kamera_ü_相机_🚗_" + "é" * int(rng.integers(1, 500))
    if choice == 2:
        return "cam\t\n\r\x01\x7f" + "\u202e" + "evil"
    if choice == 3:
        return ""
    return "/" * int(rng.integers(1, 2000))


def _frame_id(rng: np.random.Generator) -> str:
    return odd_frame_id(rng) if rng.random() < 0.2 else "camera"


def _pixels(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


# ---- raw sensor_msgs/Image ----------------------------------------------------------------------
_BAD_ENCODINGS = (
    "",
    "RGB8",
    "rgb8 ",
    " bgr8",
    "rgb16",
    "yuv9000",
    "bayer_garbage8",
    "rgb８",
    "8UC9",
    "jpeg",
    "\x00rgb8",
    "mono8\n",
    "e" * 300,
    "ü" * 20,
)


def _raw(
    height: int,
    width: int,
    encoding: str = "rgb8",
    step: int | None = None,
    data: bytes = b"",
    is_bigendian: int = 0,
) -> dict[str, Any]:
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(encoding, 3)
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": is_bigendian,
        "step": width * channels if step is None else step,
        "data": data,
    }


def _raw_bad_encoding(rng, max_pixels):
    height, width = int(rng.integers(2, 40)), int(rng.integers(2, 40))
    encoding = _BAD_ENCODINGS[int(rng.integers(len(_BAD_ENCODINGS)))]
    data = _pixels(rng, height, width).tobytes()
    return (
        _raw(height, width, encoding, width * 3, data),
        "unsupported_encoding",
        f"unknown encoding {encoding[:20]!r}",
    )


def _raw_zero_size(rng, max_pixels):
    height, width = (
        (0, int(rng.integers(0, 100))) if rng.random() < 0.5 else (int(rng.integers(1, 100)), 0)
    )
    return _raw(height, width, data=bytes(int(rng.integers(0, 64)))), "empty", f"{width}x{height}"


def _raw_huge_claim(rng, max_pixels):
    big = int(rng.integers(MAX_SIDE + 1, UINT32_MAX, endpoint=True))
    small = int(rng.integers(1, 64))
    height, width = (big, small) if rng.random() < 0.5 else (small, big)
    step = min(width * 3, UINT32_MAX)
    return (
        _raw(height, width, step=step, data=bytes(int(rng.integers(0, 4096)))),
        "bad_size",
        f"claims {width}x{height}",
    )


def _raw_too_many_pixels(rng, max_pixels):
    height = MAX_SIDE - int(rng.integers(0, 16))
    width = max_pixels // height + 1 + int(rng.integers(0, 64))
    return (
        _raw(height, width, data=b"\x00" * int(rng.integers(0, 1024))),
        "too_large",
        f"{width}x{height} > max_input_pixels",
    )


def _raw_short_step(rng, max_pixels):
    height, width = int(rng.integers(2, 40)), int(rng.integers(2, 40))
    encoding = ("rgb8", "bgr8", "rgba8", "mono8")[int(rng.integers(4))]
    row = width * {"mono8": 1, "rgba8": 4}.get(encoding, 3)
    step = int(rng.integers(0, row))
    return (
        _raw(height, width, encoding, step, bytes(step * height)),
        "bad_step",
        f"step {step} < row {row}",
    )


def _raw_bad_length(rng, max_pixels):
    height, width = int(rng.integers(2, 60)), int(rng.integers(2, 60))
    row = width * 3
    choice = int(rng.integers(4))
    if choice == 0:  # truncated payload
        step, size = row, int(rng.integers(0, row * height))
    elif choice == 1:  # payload longer than the header says
        step, size = row, row * height + int(rng.integers(1, 5000))
    elif choice == 2:  # a step claiming up to 4 GiB per row
        step, size = int(rng.integers(row + 1, UINT32_MAX, endpoint=True)), row * height
    else:  # padding claimed but not sent
        step, size = row + int(rng.integers(1, 64)), row * height
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return (
        _raw(height, width, step=step, data=data),
        "bad_length",
        f"{size} bytes for step {step} x {height} rows",
    )


def _raw_too_small(rng, max_pixels):
    height, width = (
        (1, int(rng.integers(1, 50))) if rng.random() < 0.5 else (int(rng.integers(1, 50)), 1)
    )
    return (
        _raw(height, width, data=_pixels(rng, height, width).tobytes()),
        "too_small",
        f"{width}x{height}",
    )


_RAW_MAKERS: list[Callable] = [
    _raw_bad_encoding,
    _raw_zero_size,
    _raw_huge_claim,
    _raw_too_many_pixels,
    _raw_short_step,
    _raw_bad_length,
    _raw_too_small,
]


# ---- sensor_msgs/CompressedImage ----------------------------------------------------------------
_FORMATS = (
    "jpeg",
    "png",
    "rgb8; jpeg compressed bgr8",
    "bgr8; png compressed bgr8",
    "",
    "tiff",
    "??",
)


def _compressed(data: bytes, rng) -> dict[str, Any]:
    return {"format": _FORMATS[int(rng.integers(len(_FORMATS)))], "data": data}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming ``width`` x ``height``, with one tiny IDAT:
    a decompression bomb if a decoder believed it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int, app_bytes: int = 0) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``width`` x ``height``, placed after ``app_bytes``
    of APP1..APP15 segments (so a reader that peeks only at the first 64 KiB misses it)."""
    parts = [b"\xff\xd8"]
    marker = 0xE1
    while app_bytes > 0:
        size = min(app_bytes, 65533)
        parts.append(bytes([0xFF, marker]) + struct.pack(">H", size + 2) + b"\xa5" * size)
        app_bytes -= size
        marker = 0xE1 + (marker - 0xE0) % 15
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    parts.append(b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof)
    parts.append(
        b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00" + b"\x00" * 64 + b"\xff\xd9"
    )
    return b"".join(parts)


def _jpeg_segments(data: bytes) -> dict[int, int]:
    """First position of each marker before the scan data of an encoder-written JPEG."""
    positions, position = {}, 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        positions.setdefault(marker, position)
        if marker == 0xDA:
            break
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    return positions


def _compressed_makers(rng: np.random.Generator) -> list[Callable]:
    """The compressed cases; real encoded frames are made once per generator (fast for large N)."""
    frames = [
        _pixels(rng, int(rng.integers(16, 96)), int(rng.integers(16, 128))) for _ in range(4)
    ]
    jpegs = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in frames]
    pngs = [cv2.imencode(".png", frame)[1].tobytes() for frame in frames]
    others = []
    for suffix in (".webp", ".tiff", ".ppm", ".bmp", ".gif", ".jp2"):
        try:
            ok, encoded = cv2.imencode(suffix, frames[0])
        except cv2.error:
            ok = False
        if ok:
            others.append((suffix[1:], encoded.tobytes()))

    def pick(items):
        return items[int(rng.integers(len(items)))]

    def empty(rng, max_pixels):
        return _compressed(b"", rng), "empty", "no data"

    def random_bytes(rng, max_pixels):
        data = bytearray(
            rng.integers(0, 256, int(rng.integers(1, 20_000)), dtype=np.uint8).tobytes()
        )
        data[0] = int(rng.integers(0, 0x89))  # never a PNG or JPEG signature by chance
        return _compressed(bytes(data), rng), "unsupported_format", f"{len(data)} random bytes"

    def odd_format(rng, max_pixels):
        name, data = pick(others)
        return {"format": pick(("jpeg", "png", name)), "data": data}, "unsupported_format", name

    def depth(rng, max_pixels):
        return (
            {"format": "16UC1; compressedDepth png", "data": pick(pngs)},
            "unsupported_format",
            "compressedDepth",
        )

    def truncated(rng, max_pixels):
        data = pick(jpegs) if rng.random() < 0.5 else pick(pngs)
        cut = int(rng.integers(3 if data[0] == 0xFF else 8, len(data) - 1))  # keep the signature
        return _compressed(data[:cut], rng), "corrupt", f"{len(data)}-byte image cut at {cut}"

    def corrupt_jpeg(rng, max_pixels):
        data = bytearray(pick(jpegs))
        segments = _jpeg_segments(bytes(data))
        sof, sos, dht = segments[0xC0], segments[0xDA], segments[0xC4]
        choice = int(rng.integers(5))
        if choice == 0:
            data[sof + 4] = int(rng.integers(0, 8))  # sample precision
            what = "SOF precision"
        elif choice == 1:
            data[sof + 9] = pick((0, 2, 5, 7, 200))  # component count
            what = "SOF component count"
        elif choice == 2:
            data[sos + 4] = pick((0, 5, 9, 255))  # scan component count
            what = "SOS component count"
        elif choice == 3:
            data[dht + 5 : dht + 21] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
            what = "Huffman table"
        else:
            data[sof + 12] = int(rng.integers(4, 256))  # quantisation table id
            what = "quantisation table id"
        return _compressed(bytes(data), rng), "corrupt", f"JPEG with a damaged {what}"

    def corrupt_png(rng, max_pixels):
        data = bytearray(pick(pngs))
        idat = data.index(b"IDAT") + 4
        length = struct.unpack(">I", data[idat - 8 : idat - 4])[0]
        position = idat + int(rng.integers(0, length))
        data[position] ^= int(rng.integers(1, 256))  # the chunk's CRC no longer matches
        return _compressed(bytes(data), rng), "corrupt", "PNG with a damaged IDAT"

    def broken_header(rng, max_pixels):
        if rng.random() < 0.5:
            data = (
                b"\x89PNG\r\n\x1a\n"
                + rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
            )
            if data[12:16] == b"IHDR":
                data = data[:12] + b"JUNK" + data[16:]
            return _compressed(data, rng), "corrupt", "PNG signature without IHDR"
        gap = bytes(int(rng.integers(0, 64)))  # segments that do not follow each other
        return (
            _compressed(b"\xff\xd8\xff\xe0\x00\x10" + b"J" * 14 + gap + b"\x01\x02", rng),
            "corrupt",
            "JPEG without a frame header",
        )

    def bomb(rng, max_pixels):
        over = int(rng.integers(MAX_SIDE + 1, 65536))  # both formats keep sizes in 16 / 32 bits
        side = int(np.ceil(np.sqrt(max_pixels + 1)))
        fair = int(rng.integers(side, MAX_SIDE + 1))  # within MAX_SIDE, more than max_pixels
        choice = int(rng.integers(6))
        if choice == 0:
            return (
                _compressed(png_claiming(60000, 60000), rng),
                "bad_size",
                "PNG claiming 60000x60000",
            )
        if choice == 1:
            return (
                _compressed(png_claiming(int(rng.integers(MAX_SIDE + 1, UINT32_MAX)), 1), rng),
                "bad_size",
                "PNG claiming a width up to 2^32",
            )
        if choice == 2:
            return (
                _compressed(png_claiming(fair, fair), rng),
                "too_large",
                f"PNG claiming {fair}x{fair}",
            )
        if choice == 3:
            return (
                _compressed(jpeg_claiming(over, over, int(rng.integers(70_000, 300_000))), rng),
                "bad_size",
                f"JPEG claiming {over}x{over} behind large APP segments",
            )
        if choice == 4:
            return (
                _compressed(jpeg_claiming(fair, fair, int(rng.integers(0, 200_000))), rng),
                "too_large",
                f"JPEG claiming {fair}x{fair}",
            )
        zero = png_claiming(0, 16) if rng.random() < 0.5 else jpeg_claiming(16, 0)
        return _compressed(zero, rng), "empty", "header claiming a zero size"

    return [
        empty,
        random_bytes,
        odd_format,
        depth,
        truncated,
        truncated,
        corrupt_jpeg,
        corrupt_png,
        broken_header,
        bomb,
        bomb,
    ]
