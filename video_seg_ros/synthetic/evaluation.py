"""Score a model on freshly generated sequences, with TC measured through the *true* optical flow.

``video-seg-eval`` measures TC with DIS flow (what is possible on real video); on synthetic video
the exact flow and its visibility mask are known, so TC here has no flow-estimation error in it.
"""

from __future__ import annotations

import numpy as np

from video_seg_ros.labels import CITYSCAPES
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency
from video_seg_ros.synthetic.generator import DEFAULT_FPS, generate_sequence


def evaluate_on_synthetic(
    engine,
    seeds,
    num_frames: int = 16,
    width: int = 512,
    height: int = 256,
    fps: float = DEFAULT_FPS,
    progress=None,
) -> dict:
    """mIoU, pixel accuracy and true-flow TC of ``engine`` on the sequences of ``seeds``.

    Args:
        engine: a :class:`video_seg_ros.engine.SegmentationEngine` (Cityscapes trainIds out).
        seeds: sequence seeds (see :func:`video_seg_ros.synthetic.sequence_seed`).
        progress: optional callable invoked once per frame.

    Returns:
        ``{"miou", "pixel_accuracy", "tc_true_flow", "frames", "per_class_iou"}``; TC counts only
        pixels visible in the next frame (the generator's ``flow_valid``).
    """
    names = list(CITYSCAPES.names)
    accuracy = ConfusionMatrix(len(names), names)
    consistency = TemporalConsistency(len(names), class_names=names)
    frames_seen = 0
    for seed in seeds:
        engine.reset()
        previous = None
        for frame in generate_sequence(seed, num_frames, width, height, fps):
            labels = engine.segment(frame.rgb).labels
            accuracy.update(labels, frame.labels)
            if previous is not None:
                previous_frame, previous_labels = previous
                consistency.update_with_flow(
                    previous_labels, labels, previous_frame.flow_to_next, previous_frame.flow_valid
                )
            previous = (frame, labels)
            frames_seen += 1
            if progress is not None:
                progress()
    return {
        "miou": accuracy.miou,
        "pixel_accuracy": accuracy.pixel_accuracy,
        "tc_true_flow": consistency.tc,
        "frames": frames_seen,
        "per_class_iou": {
            k: (None if v is None else round(v, 4)) for k, v in accuracy.per_class_iou().items()
        },
    }


def majority_class_scores(seeds, num_frames: int = 3, width: int = 512, height: int = 256) -> dict:
    """mIoU and pixel accuracy of predicting the most frequent class everywhere (a trivial
    baseline)."""
    frames = [
        f
        for seed in seeds
        for f in generate_sequence(seed, num_frames, width, height, with_flow=False)
    ]
    counts = np.bincount(np.concatenate([f.labels.ravel() for f in frames]), minlength=256)[
        : CITYSCAPES.num_classes
    ]
    matrix = ConfusionMatrix(CITYSCAPES.num_classes)
    for frame in frames:
        matrix.update(np.full_like(frame.labels, int(counts.argmax())), frame.labels)
    return {
        "class": CITYSCAPES.names[int(counts.argmax())],
        "miou": matrix.miou,
        "pixel_accuracy": matrix.pixel_accuracy,
    }
