"""Fuzz: thousands of malformed camera messages against real node processes.

The seeded generator (video_seg_ros/ros/malformed_messages.py) makes malformed ``Image`` and
``CompressedImage`` messages, each with the rejection reason the node must count it under. The
first test checks those expectations against the decoder alone (no ROS); the second sends them,
interleaved with good frames, to two ``video_seg_node`` processes started as the console script
(raw and compressed transport): every bad message must be counted in diagnostics under its reason,
every good frame answered, the node alive throughout and exiting with 0 on SIGINT.

Delivery is made exact without sleeping: the node's queue is FIFO (``frame_queue_size`` larger
than a round) and reliable, and each round of up to ``ROUND`` bad messages ends with a good frame
whose labels are awaited, so no message can be overwritten in a DDS history.
"""

from __future__ import annotations

import threading
import types
from collections import Counter

import numpy as np
import pytest

from video_seg_ros.image_encoding import ImageDecodeError, compressed_fields, message_to_frame
from video_seg_ros.ros.malformed_messages import (
    DEFAULT_MAX_PIXELS,
    expected_reasons,
    malformed_messages,
    odd_frame_id,
)

#: Malformed messages per transport sent to the node; the bench takes a larger count.
MESSAGES_PER_KIND = 1500
ROUND = 8  # bad messages between two good frames (below the node's queue and reader depth)
SEED = 20
STARTUP_TIMEOUT = 240.0
ANSWER_TIMEOUT = 30.0


def _node_reason(fields: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The reason the node gives a message: the decoder's, or too_small for frames under 2x2."""
    try:
        frame = message_to_frame(types.SimpleNamespace(**fields), max_pixels=max_pixels)
    except ImageDecodeError as error:
        return error.reason
    return "too_small" if frame.height < 2 or frame.width < 2 else None


@pytest.mark.parametrize("kind", ["raw", "compressed"])
def test_every_generated_message_gets_its_expected_reason_from_the_decoder(kind):
    messages = malformed_messages(SEED, 3000, kind)
    assert messages[0].fields == malformed_messages(SEED, 1, kind)[0].fields  # seeded
    wrong = [
        (m.description, m.reason, _node_reason(m.fields))
        for m in messages
        if _node_reason(m.fields) != m.reason
    ]
    assert not wrong, wrong[:10]
    reasons = expected_reasons(messages)
    expected = (
        {
            "unsupported_encoding",
            "empty",
            "bad_size",
            "too_large",
            "bad_step",
            "bad_length",
            "too_small",
        }
        if kind == "raw"
        else {"empty", "unsupported_format", "corrupt", "bad_size", "too_large"}
    )
    assert set(reasons) == expected and min(reasons.values()) > 50, reasons
    descriptions = " ".join(m.description for m in messages)
    for case in (
        "60000x60000",
        "behind large APP segments",
        "webp",
        "tiff",
        "ppm",
        "random bytes",
    ):
        assert kind == "raw" or case in descriptions, case
    assert any(len(m.frame_id) >= 10_000 for m in messages)
    assert any(not m.frame_id.isascii() for m in messages)


def test_claimed_sizes_are_refused_before_decoding():
    """The bombs claim sizes whose decoding would need gigabytes; they are refused by header."""
    from video_seg_ros.ros.malformed_messages import jpeg_claiming, png_claiming

    cases = [
        (png_claiming(60000, 60000), "bad_size"),
        (jpeg_claiming(60000, 60000, 200_000), "bad_size"),
        (jpeg_claiming(20000, 20000, 100_000), "too_large"),
        (jpeg_claiming(64, 0), "empty"),
    ]
    for data, reason in cases:
        assert _node_reason({"format": "jpeg", "data": data}) == reason


# ---- against real node processes ----------------------------------------------------------------
def _good_frame(rng, kind, stamp, frame_id="camera"):
    from ros_support import image_message
    from sensor_msgs.msg import CompressedImage

    height, width = int(rng.integers(24, 64)), int(rng.integers(32, 96))
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], axis=2).astype(np.uint8)
    msg = image_message(pixels, "rgb8", stamp, frame_id=frame_id)
    if kind == "raw":
        return msg
    compressed = CompressedImage(
        **compressed_fields(pixels, "rgb", "jpeg" if rng.random() < 0.7 else "png")
    )
    compressed.header = msg.header
    return compressed


def _fuzz_node(probe, node, publisher, labels, diagnostics, kind, seed):
    """Send the malformed messages of ``kind`` in rounds closed by a good frame; returns
    (bad messages sent, good frames sent, good frames answered, frame ids of the answers)."""
    from ros_support import diagnostics_values
    from video_seg_ros.ros.malformed_messages import to_ros_message

    rng = np.random.default_rng(seed)
    messages = malformed_messages(seed, MESSAGES_PER_KIND, kind)
    stamp, good, answered, odd_ids = 100.0, 0, 0, []

    def key(msg):
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def send_good():
        nonlocal stamp, good, answered
        stamp += 0.05
        frame_id = odd_frame_id(rng) if rng.random() < 0.1 else "camera"
        msg = _good_frame(rng, kind, stamp, frame_id)
        wanted = key(msg)
        publisher.publish(msg)
        good += 1
        reply = probe.wait_for(
            lambda: next((m for m in reversed(labels) if key(m) == wanted), None), ANSWER_TIMEOUT
        )
        assert reply is not None, f"{node.name}: no labels for good frame {good}:\n{node.tail(30)}"
        assert reply.header.frame_id == frame_id
        answered += 1
        if frame_id != "camera":
            odd_ids.append(frame_id)

    for start in range(0, len(messages), ROUND):
        for message in messages[start : start + ROUND]:
            stamp += 0.05
            publisher.publish(to_ros_message(message, stamp))
        send_good()
        assert node.alive(), node.tail(30)
    total = len(messages) + good

    def final():
        for array in reversed(diagnostics):
            values = diagnostics_values(array, name=f"{node.name}: segmentation")
            if values is not None and int(values["received"]) >= total:
                return values
        return None

    values = probe.wait_for(final, ANSWER_TIMEOUT)
    assert values is not None, f"{node.name}: diagnostics never counted {total} messages"
    return messages, good, answered, values, odd_ids


@pytest.mark.ros
def test_node_rejects_and_counts_every_malformed_message_and_answers_every_good_frame(tmp_path):
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from ros_support import NodeProcess, RosProbe, make_tiny_checkpoint, write_params_file

    checkpoint = str(make_tiny_checkpoint(tmp_path / "tiny.pt", size=(64, 32)))
    common = {
        "checkpoint": checkpoint,
        "device": "cpu",
        "backend": "torch",
        "precision": "fp32",
        "cpu_threads": 1,
        "input_qos": "reliable",
        "frame_queue_size": 16,
        "diagnostics_period_s": 0.5,
        "consistency_metric": False,
        "max_input_pixels": DEFAULT_MAX_PIXELS,
    }
    nodes = {
        "raw": NodeProcess(
            write_params_file(tmp_path / "raw.yaml", common),
            tmp_path / "raw.log",
            remaps={"image": "/fuzz_raw/image"},
            name="fuzz_raw",
        ),
        "compressed": NodeProcess(
            write_params_file(
                tmp_path / "compressed.yaml", {**common, "image_transport": "compressed"}
            ),
            tmp_path / "compressed.log",
            remaps={"image": "/fuzz_jpeg/image"},
            name="fuzz_jpeg",
        ),
    }
    reliable = QoSProfile(depth=ROUND + 2, reliability=ReliabilityPolicy.RELIABLE)
    probe = RosProbe("fuzz_probe")
    try:
        publishers = {
            "raw": probe.publisher(Image, "/fuzz_raw/image", reliable),
            "compressed": probe.publisher(
                CompressedImage, "/fuzz_jpeg/image/compressed", reliable
            ),
        }
        labels = {kind: probe.collect(Image, node.topic("labels")) for kind, node in nodes.items()}
        diagnostics = probe.collect(DiagnosticArray, "/diagnostics")
        for kind, node in nodes.items():
            ready = probe.wait_for(
                lambda: publishers[kind].get_subscription_count() > 0 or not node.alive(),
                STARTUP_TIMEOUT,
            )
            assert ready and node.alive(), f"{node.name} did not start:\n{node.tail(40)}"
        # The node skips frames until it has discovered our labels subscription: await an answer.
        warmup = {kind: 0 for kind in nodes}
        rng = np.random.default_rng(0)
        for kind in nodes:
            for attempt in range(40):
                msg = _good_frame(rng, kind, 10.0 + attempt * 0.05)
                publishers[kind].publish(msg)
                warmup[kind] += 1
                if probe.wait_for(lambda: labels[kind], 1.0):
                    break
            assert labels[kind], f"{nodes[kind].name} never answered:\n{nodes[kind].tail(30)}"

        results, errors = {}, []

        def run(kind):
            try:
                results[kind] = _fuzz_node(
                    probe,
                    nodes[kind],
                    publishers[kind],
                    labels[kind],
                    diagnostics,
                    kind,
                    SEED + (kind == "compressed"),
                )
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [threading.Thread(target=run, args=(kind,)) for kind in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

        for kind, (messages, good, answered, values, odd_ids) in results.items():
            node = nodes[kind]
            expected = expected_reasons(messages)
            counted = Counter(
                {
                    key[len("rejected_") :]: int(value)
                    for key, value in values.items()
                    if key.startswith("rejected_") and value.isdigit()
                }
            )
            assert int(values["rejected"]) == len(messages), (
                kind,
                values["rejected"],
                len(messages),
            )
            assert counted == expected, (kind, counted, expected)
            assert answered == good
            assert int(values["received"]) == len(messages) + good + warmup[kind]
            # A warm-up frame sent while the node still works on the first one may be replaced
            # in its queue (dropped); every fuzz-phase frame is answered (above).
            dropped = int(values["dropped"])
            assert dropped < warmup[kind], (dropped, warmup[kind])
            assert (
                int(values["processed"]) + int(values["skipped_no_subscriber"]) + dropped
                == good + warmup[kind]
            )
            assert odd_ids, "no good frame carried an odd frame id"
            assert node.alive(), node.tail(30)
    finally:
        probe.close()
        codes = {kind: node.stop(timeout=60.0) for kind, node in nodes.items()}  # SIGINT
    assert codes == {"raw": 0, "compressed": 0}, (codes, {k: n.tail(20) for k, n in nodes.items()})
