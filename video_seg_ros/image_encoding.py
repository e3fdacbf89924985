"""Image messages <-> numpy arrays, without ROS (the node's fallback for cv_bridge).

Duck-typed: any object with the fields of ``sensor_msgs/Image`` (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``) or ``sensor_msgs/CompressedImage``
(``format``, ``data``) works, so rclpy messages, rosbags' message classes and plain
``types.SimpleNamespace`` objects all go through the same checks. ``data`` may be ``bytes``,
``array.array('B')`` (rclpy), a uint8 ``np.ndarray`` (rosbags) or a list of ints.

Decoding is zero-copy where the buffer allows it (``np.frombuffer`` plus a strided view that skips
the ``step`` padding at the end of each row). Every malformed message raises
:class:`ImageDecodeError` whose message says what is wrong and what a sender should do; the
``reason`` attribute is a short fixed key, so callers can count rejections per cause.

Encoding (publishing) goes the other way: :func:`image_fields` turns an array into the field
values of an Image message with ``data = array.tobytes()``; :func:`fill_image` sets them on a
message object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: encoding -> (numpy dtype of one channel, channels). Names as in sensor_msgs/image_encodings.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

#: Encodings a segmenter can take as a colour frame (mono8 is replicated to three channels).
FRAME_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

#: Largest width or height accepted; far above any camera, it catches garbage header values.
MAX_SIDE = 1 << 15


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an image; ``reason`` is a short key for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Frame:
    """A decoded colour frame as the engine takes it.

    ``pixels`` is (H, W, 3) uint8 in ``channel_order`` ('rgb' or 'bgr'), possibly a view into the
    message's buffer (do not write to it).
    """

    pixels: np.ndarray
    channel_order: str
    encoding: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB (a reversed-channel view when the frame is BGR)."""
        return self.pixels if self.channel_order == "rgb" else self.pixels[..., ::-1]


# ---- raw Image messages -------------------------------------------------------------------------
def _buffer(data: Any) -> np.ndarray:
    """The message payload as a flat uint8 array, without copying when it exposes a buffer."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError as error:
        raise ImageDecodeError(
            "bad_data",
            f"image data of type {type(data).__name__} is not a byte buffer; send bytes / uint8[]",
        ) from error


def check_image_size(msg: Any, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of an Image-like header; raises ImageDecodeError for zero, absurd or too
    many pixels (``max_pixels``), before any pixel is touched."""
    height, width = int(msg.height), int(msg.width)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            "empty", f"image has zero size ({width}x{height}); nothing to segment"
        )
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ImageDecodeError(
            "bad_size",
            f"image size {width}x{height} exceeds {MAX_SIDE} per side; "
            "the header is probably corrupt",
        )
    if max_pixels and height * width > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"image {width}x{height} has {height * width} pixels, more than "
            f"max_input_pixels={max_pixels}; downscale at the source or raise the parameter",
        )
    return height, width


def check_data_length(msg: Any, size: int) -> None:
    """``len(data) == step * height``, else ImageDecodeError("bad_length")."""
    step, height = int(msg.step), int(msg.height)
    if size != step * height:
        raise ImageDecodeError(
            "bad_length",
            f"data has {size} bytes but step*height = {step}*{height} = "
            f"{step * height}; the message is truncated or its header is wrong",
        )


def image_to_array(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Decode a ``sensor_msgs/Image``-like object to an array, zero-copy where possible.

    Returns:
        (H, W) for one-channel encodings, (H, W, C) otherwise, in the encoding's dtype and native
        byte order (big-endian multi-byte data is byte-swapped, which copies).

    Raises:
        ImageDecodeError: unknown encoding, zero or absurd sizes, ``step`` shorter than a row,
            ``len(data) != step * height``, or more than ``max_pixels`` pixels.
    """
    encoding = str(getattr(msg, "encoding", ""))
    if encoding not in ENCODINGS:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"unsupported image encoding {encoding!r}; send one of {', '.join(FRAME_ENCODINGS)} "
            "(or convert on the camera side, e.g. with image_proc's debayer)",
        )
    dtype, channels = ENCODINGS[encoding]
    height, width = check_image_size(msg, max_pixels)
    step = int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(
            "bad_step",
            f"step {step} is shorter than one row of {width} {encoding} pixels "
            f"({row_bytes} bytes); fix the publisher's step field",
        )
    buffer = _buffer(msg.data)
    check_data_length(msg, buffer.size)
    rows = buffer.reshape(height, step)[:, :row_bytes]  # view: drops the step padding
    if dtype.itemsize > 1:
        if step % dtype.itemsize:
            rows = np.ascontiguousarray(rows)  # rows not aligned to the element size
        big_endian = bool(getattr(msg, "is_bigendian", False))
        rows = rows.view(dtype.newbyteorder(">" if big_endian else "<"))
        if not rows.dtype.isnative:
            rows = rows.astype(dtype)
    pixels = rows.reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels


def image_to_frame(msg: Any, max_pixels: int | None = None) -> Frame:
    """Decode an Image-like object to a three-channel :class:`Frame` for the engine.

    rgb8/bgr8 stay zero-copy views; rgba8/bgra8 drop alpha and mono8 is replicated (both copy,
    into a contiguous array OpenCV can resize).
    """
    pixels = image_to_array(msg, max_pixels=max_pixels)
    encoding = msg.encoding
    if encoding not in FRAME_ENCODINGS:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"encoding {encoding!r} is not a colour or mono8 camera image; "
            f"send one of {', '.join(FRAME_ENCODINGS)}",
        )
    if encoding in ("rgb8", "bgr8"):
        order = encoding[:3]
    elif encoding in ("rgba8", "bgra8"):
        order = encoding[:3]
        pixels = np.ascontiguousarray(pixels[..., :3])
    else:  # mono8
        order = "rgb"
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Frame(pixels, order, encoding)


# ---- CompressedImage messages -------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"  # SOI and the first marker's 0xFF

#: JPEG markers without a length field (TEM, RSTn); SOI/EOI are handled on their own.
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}
#: SOFn markers (frame headers); 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def payload_kind(data: bytes) -> str:
    """'jpeg' or 'png' from the payload's own signature, '' for anything else (WebP, TIFF, PPM,
    BMP, GIF, random bytes): only these two are ever handed to the decoder, whatever the
    message's ``format`` says, so no other (and less hardened) OpenCV codec sees network input."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return ""


def _peek_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, which the PNG specification puts first; None when
    the header is missing or truncated."""
    if len(data) >= 24 and data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None


def _peek_jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from the first SOFn segment, found by walking the segments from the start
    (so a frame header placed after megabytes of APPn segments is still found); None when the
    stream ends, or its entropy-coded data starts (SOS), before any frame header."""
    if len(data) < 4 or bytes(data[:2]) != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # segments must follow each other without gaps
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        length = (int(data[position + 2]) << 8) | int(data[position + 3])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height = (int(data[position + 5]) << 8) | int(data[position + 6])
            width = (int(data[position + 7]) << 8) | int(data[position + 8])
            return width, height
        position += 2 + length
    return None


def compressed_format_kind(fmt: str) -> str:
    """'jpeg' or 'png' from a CompressedImage ``format`` ("jpeg", "rgb8; jpeg compressed bgr8")."""
    text = (fmt or "").lower()
    if "compresseddepth" in text:
        return "depth"
    if "png" in text:
        return "png"
    if "jpeg" in text or "jpg" in text:
        return "jpeg"
    return ""


def compressed_to_frame(msg: Any, max_pixels: int | None = None) -> Frame:
    """Decode a ``sensor_msgs/CompressedImage``-like object (JPEG or PNG) to a BGR :class:`Frame`.

    Only payloads with a real JPEG or PNG signature are decoded, and only after the size their
    header claims has passed the same checks as a raw image's (``MAX_SIDE`` per side,
    ``max_pixels``), so a decompression bomb (a small file claiming 60000x60000) is refused
    without spending memory on it.
    """
    fmt = str(getattr(msg, "format", ""))
    if compressed_format_kind(fmt) == "depth":
        raise ImageDecodeError(
            "unsupported_format",
            "compressedDepth images are depth maps, not "
            "camera frames; subscribe to the colour image",
        )
    buffer = _buffer(msg.data)
    if buffer.size == 0:
        raise ImageDecodeError("empty", "compressed image has no data")
    kind = payload_kind(bytes(buffer[:8]))
    if not kind:
        raise ImageDecodeError(
            "unsupported_format",
            f"compressed payload ({buffer.size} bytes, format "
            f"{fmt[:40]!r}) has no JPEG or PNG signature; send jpeg or png",
        )
    size = (
        _peek_png_size(bytes(buffer[:24]))
        if kind == "png"
        else _peek_jpeg_size(memoryview(buffer))
    )
    if size is None:
        raise ImageDecodeError(
            "corrupt",
            f"the {kind} payload ({buffer.size} bytes) has no readable "
            "image header: the data is corrupt or truncated",
        )
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("empty", f"compressed image header says {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageDecodeError(
            "bad_size",
            f"compressed image header claims {width}x{height}, more than "
            f"{MAX_SIDE} per side; the header is corrupt or hostile",
        )
    if max_pixels and width * height > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"compressed image {width}x{height} has {width * height} pixels, more "
            f"than max_input_pixels={max_pixels}; downscale at the source or raise "
            "the parameter",
        )
    pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if pixels is None or pixels.size == 0:
        raise ImageDecodeError(
            "corrupt",
            f"could not decode the {kind} payload "
            f"({buffer.size} bytes): the data is corrupt or truncated",
        )
    if max_pixels and pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"decoded image {pixels.shape[1]}x{pixels.shape[0]} is "
            f"more than max_input_pixels={max_pixels}",
        )
    return Frame(pixels, "bgr", kind)


def message_to_frame(msg: Any, max_pixels: int | None = None) -> Frame:
    """Image or CompressedImage (told apart by the ``format`` field) -> :class:`Frame`."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_frame(msg, max_pixels=max_pixels)
    return image_to_frame(msg, max_pixels=max_pixels)


# ---- arrays -> message fields -------------------------------------------------------------------
_OUTPUT_ENCODINGS = {
    "mono8": (np.uint8, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "32FC1": (np.float32, 1),
    "mono16": (np.uint16, 1),
}


def image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """Field values of a ``sensor_msgs/Image`` holding ``array`` (little-endian, no padding).

    Args:
        array: (H, W) for mono8 / mono16 / 32FC1, (H, W, 3|4) for colour encodings.
        encoding: one of mono8, mono16, rgb8, bgr8, rgba8, bgra8, 32FC1.
    """
    if encoding not in _OUTPUT_ENCODINGS:
        raise ValueError(
            f"cannot publish encoding {encoding!r}; use one of {sorted(_OUTPUT_ENCODINGS)}"
        )
    dtype, channels = _OUTPUT_ENCODINGS[encoding]
    array = np.asarray(array)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ValueError(
            f"{encoding} needs shape (H, W{'' if channels == 1 else f', {channels}'}), "
            f"got {array.shape}"
        )
    if array.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {np.dtype(dtype).name}, got {array.dtype}")
    height, width = array.shape[:2]
    little = array.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * channels * np.dtype(dtype).itemsize),
        "data": little.tobytes(),
    }


def fill_image(msg: Any, array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Set an Image message's fields from ``array`` (and ``header`` when given); returns msg."""
    for name, value in image_fields(array, encoding).items():
        setattr(msg, name, value)
    if header is not None:
        msg.header = header
    return msg


def compressed_fields(
    pixels: np.ndarray, channel_order: str = "rgb", kind: str = "jpeg", quality: int = 90
) -> dict[str, Any]:
    """Field values of a ``sensor_msgs/CompressedImage`` for an (H, W, 3) uint8 frame.

    ``format`` follows image_transport's convention ("rgb8; jpeg compressed bgr8").
    """
    if kind not in ("jpeg", "png"):
        raise ValueError("kind must be 'jpeg' or 'png'")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"need an (H, W, 3) uint8 frame, got {pixels.shape} {pixels.dtype}")
    bgr = pixels[..., ::-1] if channel_order == "rgb" else pixels
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == "jpeg" else []
    ok, encoded = cv2.imencode(
        "." + ("jpg" if kind == "jpeg" else "png"), np.ascontiguousarray(bgr), params
    )
    if not ok:
        raise ValueError(f"OpenCV could not encode the frame as {kind}")
    return {"format": f"{channel_order}8; {kind} compressed bgr8", "data": encoded.tobytes()}
