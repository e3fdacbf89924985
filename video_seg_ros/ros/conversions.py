"""Image messages to frames: cv_bridge when it can be imported, the numpy decoders otherwise."""

from __future__ import annotations

from video_seg_ros.image_encoding import (
    FRAME_ENCODINGS,
    Frame,
    ImageDecodeError,
    check_data_length,
    check_image_size,
    compressed_to_frame,
    image_to_frame,
)


def load_cv_bridge():
    """A ``CvBridge``, or None where cv_bridge is missing or broken (the numpy path is used)."""
    try:
        from cv_bridge import CvBridge

        return CvBridge()
    except Exception:  # not installed (pip-only ROS) or broken binary
        return None


def message_to_frame(msg, kind: str, max_pixels: int, cv_bridge=None) -> Frame:
    """Decode a ``sensor_msgs/Image`` (``kind`` "raw") or ``CompressedImage`` ("compressed").

    Raises:
        ImageDecodeError: with a reason (diagnostics key ``rejected_<reason>``), also for frames
            smaller than 2x2 pixels (``too_small``).
    """
    frame = _decode(msg, kind, max_pixels, cv_bridge)
    if frame.height < 2 or frame.width < 2:
        raise ImageDecodeError(
            "too_small",
            f"image {frame.width}x{frame.height} is too small to segment (at least 2x2 pixels)",
        )
    return frame


def _decode(msg, kind: str, max_pixels: int, cv_bridge) -> Frame:
    if kind == "compressed":
        return compressed_to_frame(msg, max_pixels=max_pixels)
    if msg.encoding not in FRAME_ENCODINGS and cv_bridge is not None:
        # cv_bridge widens the accepted encodings (Bayer, YUV, 16-bit colour).
        try:
            check_image_size(msg, max_pixels)
            check_data_length(msg, len(msg.data))
            pixels = cv_bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            return Frame(pixels, "rgb", msg.encoding)
        except ImageDecodeError:
            raise
        except Exception as error:
            raise ImageDecodeError(
                "unsupported_encoding", f"cv_bridge could not convert {msg.encoding!r}: {error}"
            ) from error
    return image_to_frame(msg, max_pixels=max_pixels)
