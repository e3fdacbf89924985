"""Image message <-> numpy conversion (no ROS needed; real rclpy / rosbags classes where
installed)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from video_seg_ros.image_encoding import (
    ImageDecodeError,
    compressed_fields,
    compressed_to_frame,
    image_fields,
    image_to_array,
    image_to_frame,
    message_to_frame,
)


def _image(array: np.ndarray, encoding: str, pad: int = 0, **overrides):
    """An Image-like namespace holding ``array`` with ``pad`` extra bytes per row."""
    height, width = array.shape[:2]
    row = np.ascontiguousarray(array).reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, row.shape[1] + pad), np.uint8)
    padded[:, : row.shape[1]] = row
    fields = dict(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=padded.shape[1],
        data=padded.tobytes(),
    )
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 5])
def test_rgb8_and_bgr8_decode_as_zero_copy_views_respecting_step_padding(rgb, pad):
    for encoding in ("rgb8", "bgr8"):
        msg = _image(rgb, encoding, pad=pad)
        frame = image_to_frame(msg)
        assert frame.channel_order == encoding[:3]
        assert np.array_equal(frame.pixels, rgb)
        assert np.shares_memory(frame.pixels, np.frombuffer(msg.data, np.uint8))


def test_bgr8_frame_rgb_view_reverses_channels(rgb):
    frame = image_to_frame(_image(rgb[..., ::-1], "bgr8"))
    assert np.array_equal(frame.rgb(), rgb)


def test_alpha_encodings_drop_alpha_and_mono8_is_replicated(rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    frame = image_to_frame(_image(rgba, "rgba8", pad=3))
    assert frame.channel_order == "rgb" and np.array_equal(frame.pixels, rgb)
    assert frame.pixels.flags.c_contiguous
    frame = image_to_frame(_image(rgba[..., [2, 1, 0, 3]], "bgra8"))
    assert frame.channel_order == "bgr" and np.array_equal(frame.rgb(), rgb)
    mono = rgb[..., 0].copy()
    frame = image_to_frame(_image(mono, "mono8", pad=2))
    assert frame.pixels.shape == rgb.shape and np.array_equal(frame.pixels[..., 2], mono)


def test_float_and_16bit_images_decode_in_both_byte_orders():
    depth = np.random.default_rng(1).random((4, 5)).astype(np.float32)
    assert np.array_equal(image_to_array(_image(depth, "32FC1", pad=4)), depth)
    big = _image(depth.astype(">f4"), "32FC1", is_bigendian=1)
    decoded = image_to_array(big)
    assert decoded.dtype == np.float32 and np.array_equal(decoded, depth)
    mono16 = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    assert np.array_equal(image_to_array(_image(mono16, "mono16", pad=2)), mono16)


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(encoding="yuv422"), "unsupported_encoding"),
        (dict(encoding="bayer_rggb8"), "unsupported_encoding"),
        (dict(height=0), "empty"),
        (dict(width=0, step=0), "empty"),
        (dict(width=100000), "bad_size"),
        (dict(step=10), "bad_step"),
        (dict(data=b"\x00" * 17), "bad_length"),
        (dict(height=7), "bad_length"),
    ],
)
def test_malformed_images_are_rejected_with_a_reason(rgb, change, reason):
    msg = _image(rgb, "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError) as info:
        image_to_frame(msg)
    assert info.value.reason == reason
    assert len(str(info.value)) > 20  # a sentence, not a code


def test_depth_encoding_is_not_accepted_as_a_camera_frame():
    with pytest.raises(ImageDecodeError, match="not a colour"):
        image_to_frame(_image(np.zeros((3, 3), np.float32), "32FC1"))


def test_max_pixels_rejects_large_images_before_touching_data(rgb):
    msg = _image(rgb, "rgb8", data=b"")  # data would be invalid too: size is checked first
    with pytest.raises(ImageDecodeError) as info:
        image_to_frame(msg, max_pixels=10)
    assert info.value.reason == "too_large" and "max_input_pixels" in str(info.value)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_compressed_round_trip_and_message_dispatch(rgb, kind):
    ramp = np.linspace(0, 255, 24, dtype=np.uint8)
    smooth = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=2).astype(
        np.uint8
    )
    msg = types.SimpleNamespace(**compressed_fields(smooth, "rgb", kind))
    assert kind in msg.format
    frame = message_to_frame(msg)
    assert frame.channel_order == "bgr" and frame.pixels.shape == smooth.shape
    error = np.abs(frame.rgb().astype(int) - smooth).mean()
    assert error == 0 if kind == "png" else error < 6
    with pytest.raises(ImageDecodeError) as info:
        compressed_to_frame(msg, max_pixels=smooth.shape[0] * smooth.shape[1] - 1)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    "payload, fmt, reason",
    [
        (b"", "jpeg", "empty"),
        (b"\xff\xd8\xff\xe0 this is not really a jpeg", "jpeg", "corrupt"),
        (b"garbage", "bmp", "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n", "16UC1; compressedDepth png", "unsupported_format"),
    ],
)
def test_corrupt_compressed_payloads_are_rejected(payload, fmt, reason):
    with pytest.raises(ImageDecodeError) as info:
        compressed_to_frame(types.SimpleNamespace(format=fmt, data=payload))
    assert info.value.reason == reason


def test_truncated_jpeg_is_rejected(rgb):
    fields = compressed_fields(np.repeat(np.repeat(rgb, 8, 0), 8, 1), "rgb", "jpeg")
    truncated = types.SimpleNamespace(format=fields["format"], data=fields["data"][:40])
    with pytest.raises(ImageDecodeError) as info:
        compressed_to_frame(truncated)
    assert info.value.reason == "corrupt"


def test_image_fields_round_trip_for_published_encodings(rgb):
    labels = rgb[..., 0]
    confidence = np.linspace(0, 1, 54, dtype=np.float32).reshape(6, 9)
    for array, encoding in ((labels, "mono8"), (rgb, "rgb8"), (confidence, "32FC1")):
        fields = image_fields(array, encoding)
        assert fields["step"] * fields["height"] == len(fields["data"])
        assert np.array_equal(image_to_array(types.SimpleNamespace(**fields)), array)


def test_image_fields_refuses_mismatched_arrays(rgb):
    with pytest.raises(ValueError, match="mono8 needs shape"):
        image_fields(rgb, "mono8")
    with pytest.raises(ValueError, match="dtype float32"):
        image_fields(rgb[..., 0], "32FC1")
    with pytest.raises(ValueError, match="cannot publish"):
        image_fields(rgb, "yuv422")


def test_rclpy_message_classes_work_directly(rgb):
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 messages not installed")
    from video_seg_ros.image_encoding import fill_image

    msg = fill_image(sensor_msgs.Image(), rgb, "rgb8")
    frame = image_to_frame(msg)  # data is array.array('B') here
    assert np.array_equal(frame.pixels, rgb)
    compressed = sensor_msgs.CompressedImage(**compressed_fields(rgb, "rgb", "png"))
    assert np.array_equal(message_to_frame(compressed).rgb(), rgb)


def test_rosbags_message_classes_work_directly(rgb):
    typesys = pytest.importorskip("rosbags.typesys")
    store = typesys.get_typestore(typesys.Stores.LATEST)
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    fields = image_fields(rgb, "bgr8")
    fields["data"] = np.frombuffer(fields["data"], np.uint8)  # rosbags stores uint8[] as arrays
    msg = Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), **fields)
    frame = image_to_frame(msg)
    assert frame.channel_order == "bgr" and np.array_equal(frame.pixels, rgb)
