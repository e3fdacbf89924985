"""Confusion-matrix accuracy, ETC temporal consistency and the node's online TC."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from shared_data import require_shared_file
from video_seg_ros.frames import read_label, read_rgb
from video_seg_ros.labels import IGNORE_ID
from textures import textured
from video_seg_ros.metrics import (
    ConfusionMatrix,
    OnlineConsistency,
    TemporalConsistency,
    pair_consistency,
)


def blob_labels(height: int, width: int, seed: int = 1, classes: int = 5) -> np.ndarray:
    """Large smooth label regions (like a segmentation), uint8 ids 0..classes-1."""
    noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 12.0)
    edges = np.quantile(smooth, np.linspace(0, 1, classes + 1)[1:-1])
    return np.digitize(smooth, edges).astype(np.uint8)


# ---- ConfusionMatrix ----------------------------------------------------------------------------
def test_miou_matches_hand_computed_example():
    target = np.array([[0, 0, 1, 1], [0, 2, 2, 2]])
    prediction = np.array([[0, 1, 1, 1], [0, 2, 2, 0]])
    matrix = ConfusionMatrix(3).update(prediction, target)
    # class 0: I = 2 ({0,0},{1,0}), U = 3 target + 3 predicted - 2 = 4  -> 0.5
    # class 1: I = 2, U = 2 + 3 - 2 = 3                                -> 2/3
    # class 2: I = 2, U = 3 + 2 - 2 = 3                                -> 2/3
    assert matrix.iou() == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert matrix.miou == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert matrix.pixel_accuracy == pytest.approx(6 / 8)
    assert matrix.total == 8


def test_ignore_id_in_target_is_not_counted():
    target = np.array([[0, IGNORE_ID, 1]])
    prediction = np.array([[0, 1, 1]])  # the wrong "1" sits on an ignored pixel
    matrix = ConfusionMatrix(2).update(prediction, target)
    assert matrix.total == 2
    assert matrix.miou == 1.0
    assert matrix.pixel_accuracy == 1.0


def test_unlabelled_prediction_counts_as_miss_for_the_target_class():
    target = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, IGNORE_ID, 1, 1]])  # e.g. ESPNet's background channel
    matrix = ConfusionMatrix(2).update(prediction, target)
    assert matrix.iou() == pytest.approx([0.5, 1.0])
    assert matrix.pixel_accuracy == pytest.approx(3 / 4)


def test_classes_absent_from_target_and_prediction_are_left_out_of_the_mean():
    matrix = ConfusionMatrix(4, ["a", "b", "c", "d"]).update(
        np.array([[0, 1]]), np.array([[0, 0]])
    )
    # a: I=1, U=2 -> 0.5; b: predicted only -> 0.0 (counted); c, d: never seen -> excluded.
    assert matrix.miou == pytest.approx(0.25)
    assert matrix.per_class_iou() == {"a": 0.5, "b": 0.0, "c": None, "d": None}


def test_accuracy_is_accumulated_over_the_dataset_not_averaged_per_frame():
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0]]))  # class 0: 3/4, class 1: 0/1
    matrix.update(np.array([[1, 1]]), np.array([[1, 1]]))  # class 1 perfect
    # dataset level: class 0 I=3 U=4; class 1 I=2 U=3
    assert matrix.miou == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_target_id_outside_the_classes_names_the_label_format():
    with pytest.raises(ValueError, match="label format"):
        ConfusionMatrix(19).update(np.zeros((2, 2), np.uint8), np.full((2, 2), 26, np.uint8))


def test_empty_matrix_reports_none():
    matrix = ConfusionMatrix(3)
    assert matrix.miou is None and matrix.pixel_accuracy is None


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 3)), np.zeros((3, 2)))


# ---- temporal consistency -----------------------------------------------------------------------
def test_tc_is_one_for_a_static_scene():
    frame = textured(96, 160)
    labels = blob_labels(96, 160)
    consistency = TemporalConsistency(5)
    for _ in range(3):
        assert consistency.update(frame, frame, labels, labels) == 1.0
    assert consistency.tc == 1.0 and consistency.pairs == 3


def test_tc_for_a_known_shift_with_a_given_flow_is_hand_computable():
    # Content moves 2 px to the right: next[:, x] = t[:, x - 2]; the flow t -> t+1 is +2 in x.
    labels_t = np.zeros((4, 10), np.uint8)
    labels_t[:, 5:] = 1
    labels_next = np.zeros_like(labels_t)
    labels_next[:, 2:] = labels_t[:, :-2]
    labels_next[:, 6] = 1  # the next prediction flips column 6 (= column 4 of frame t)
    flow = np.zeros((4, 10, 2), np.float32)
    flow[..., 0] = 2.0
    matrix = pair_consistency(labels_t, labels_next, flow, num_classes=2)
    # Columns 8, 9 warp from outside the image and are not counted (8 columns x 4 rows remain).
    assert matrix.total == 32
    # class 0: t has columns 0-4, warped 0-3 -> 4/5; class 1: t 5-7, warped 4-7 -> 3/4.
    assert matrix.iou() == pytest.approx([0.8, 0.75])
    assert matrix.miou == pytest.approx(0.775)


def test_tc_with_dis_flow_recovers_a_real_shift():
    canvas = textured(120, 240, seed=3)
    canvas_labels = blob_labels(120, 240, seed=4)
    # Camera pans: frame t+1 shows the canvas 4 px further left, so content moves right by 4.
    frame_t, frame_next = canvas[:, 8:208], canvas[:, 4:204]
    labels_t, labels_next = canvas_labels[:, 8:208], canvas_labels[:, 4:204]
    flow_tc = TemporalConsistency(5, preset="medium", flow_width=None)
    tc = flow_tc.update(frame_t, frame_next, labels_t, labels_next)
    without_motion = pair_consistency(
        labels_t, labels_next, np.zeros((120, 200, 2), np.float32), 5
    ).miou
    assert tc > 0.97
    assert tc > without_motion + 0.03


def test_tc_accumulates_intersections_and_unions_over_all_pairs():
    still = np.zeros((2, 4, 2), np.float32)
    consistency = TemporalConsistency(2)
    first = consistency.update_with_flow(
        np.array([[0, 0, 0, 0], [0, 0, 0, 1]], np.uint8), np.zeros((2, 4), np.uint8), still
    )
    second = consistency.update_with_flow(
        np.ones((2, 4), np.uint8), np.ones((2, 4), np.uint8), still
    )
    assert first == pytest.approx((7 / 8 + 0.0) / 2)
    assert second == 1.0
    # Dataset level: class 0 I=7 U=8; class 1 I=8 U=9 (not the mean of the two pair values).
    assert consistency.tc == pytest.approx((7 / 8 + 8 / 9) / 2)
    assert consistency.pairs == 2


def test_occluded_pixels_can_be_left_out_of_tc():
    labels_t = np.zeros((3, 6), np.uint8)
    labels_next = np.ones((3, 6), np.uint8)
    visible = np.zeros((3, 6), bool)
    visible[:, :2] = True
    labels_next[:, :2] = 0
    matrix = pair_consistency(labels_t, labels_next, np.zeros((3, 6, 2), np.float32), 2, visible)
    assert matrix.total == 6 and matrix.miou == 1.0


def test_tc_on_real_cityscapes_pseudo_labels_beats_no_motion_compensation(shared):
    root = "data/cityscapes_sequences/aachen_000000"
    frames, labels = [], []
    for index in (10, 11):
        name = f"aachen_000000_0000{index:02d}"
        frames.append(
            read_rgb(require_shared_file(shared, f"{root}/leftImg8bit/{name}_leftImg8bit.jpg"))
        )
        labels.append(
            read_label(
                require_shared_file(shared, f"{root}/pseudo_labelIds/{name}_pseudo_labelIds.png"),
                "cityscapes-labelids",
            )
        )
    frames = [cv2.resize(f, (512, 256), interpolation=cv2.INTER_AREA) for f in frames]
    labels = [cv2.resize(lab, (512, 256), interpolation=cv2.INTER_NEAREST) for lab in labels]
    consistency = TemporalConsistency(19, flow_width=None, occlusion=True)
    tc = consistency.update(frames[0], frames[1], labels[0], labels[1])
    no_flow = pair_consistency(labels[0], labels[1], np.zeros((256, 512, 2), np.float32), 19).miou
    # Tiny spurious classes (a few pixels of "bus") flicker and pull the one-pair mIoU down, but
    # nearly all counted pixels agree once the motion is compensated.
    assert consistency.matrix.pixel_accuracy > 0.93
    assert 0.4 < tc <= 1.0
    assert tc > no_flow + 0.1


# ---- OnlineConsistency --------------------------------------------------------------------------
def panning_stream(count: int, step: int = 3, height: int = 90, width: int = 160):
    canvas = textured(height, width + step * count + 8, seed=5)
    canvas_labels = blob_labels(height, width + step * count + 8, seed=6)
    for i in range(count):
        x = step * (count - i)
        grey = canvas[:, x : x + width]
        yield np.repeat(grey[..., None], 3, axis=2), canvas_labels[:, x : x + width].copy()


def test_online_consistency_measures_every_stride_frames():
    online = OnlineConsistency(5, stride=2, max_width=128)
    measured = [online.update(frame, labels) is not None for frame, labels in panning_stream(7)]
    assert measured == [False, False, True, False, True, False, True]
    assert online.pairs == 3


def test_online_consistency_is_high_on_a_panning_stream_and_running_value_accumulates():
    online = OnlineConsistency(5, max_width=128)
    samples, wall_ms = [], []
    for frame, labels in panning_stream(5):
        started = time.perf_counter()
        samples.append(online.update(frame, labels))
        wall_ms.append((time.perf_counter() - started) * 1000.0)
    assert samples[0] is None
    values = [s.tc for s in samples[1:]]
    assert min(values) > 0.9
    assert samples[-1].pairs == 4
    assert min(values) <= samples[-1].running_tc <= max(values)
    # the flow and the metric of that call, in milliseconds: within the call's own time
    assert 0 < samples[-1].compute_ms <= wall_ms[-1]


def test_online_consistency_detects_flickering_labels():
    online = OnlineConsistency(5, max_width=128)
    frame, labels = next(panning_stream(1))
    online.update(frame, labels)
    sample = online.update(frame, (labels + 1) % 5)  # same image, every label changed
    assert sample.tc == 0.0


def test_online_consistency_starts_fresh_on_size_change_and_reset():
    online = OnlineConsistency(5, max_width=64)
    frame, labels = next(panning_stream(1))
    online.update(frame, labels)
    small, small_labels = frame[:60, :100], labels[:60, :100]
    assert online.update(small, small_labels) is None  # different size: no pair
    assert online.update(small, small_labels) is not None
    online.reset()
    assert online.pairs == 0 and online.running_tc is None
    assert online.update(small, small_labels) is None


def test_online_consistency_window_keeps_only_recent_pairs():
    online = OnlineConsistency(5, max_width=64, window=1)
    frame, labels = next(panning_stream(1))
    online.update(frame, labels)
    online.update(frame, (labels + 1) % 5)  # TC 0
    sample = online.update(frame, (labels + 1) % 5)  # TC 1
    assert sample.tc == 1.0 and sample.running_tc == 1.0 and sample.pairs == 1


def test_online_consistency_rejects_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="stride"):
        OnlineConsistency(5, stride=0)
    with pytest.raises(ValueError, match="differ in size"):
        OnlineConsistency(5).update(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), np.uint8))
