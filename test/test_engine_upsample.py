"""SegmentationEngine(upsample="logits"): class scores are resized bilinearly *before* the argmax."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from checkpoints import tiny_espnet
from video_seg_ros.checkpoint import output_class_lookup
from video_seg_ros.engine import SegmentationEngine


def test_logits_upsampling_equals_interpolating_the_models_logits_by_hand():
    checkpoint = tiny_espnet(size=(64, 32))
    engine = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32", upsample="logits")
    frame = np.random.default_rng(3).integers(0, 256, (75, 141, 3), dtype=np.uint8)  # not a multiple of 64x32
    with torch.inference_mode():
        logits = engine.model(engine.preprocess([frame])).float()
        by_hand = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=False)
        expected = output_class_lookup(checkpoint.output_to_class, torch.device("cpu"))[by_hand.argmax(1)][0]
    result = engine.segment(frame)
    assert result.labels.shape == frame.shape[:2]
    np.testing.assert_array_equal(result.labels, expected.numpy())
    # The cheaper "labels" mode takes the argmax at model resolution: it disagrees at boundaries.
    labels_mode = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32",
                                     upsample="labels").segment(frame).labels
    assert (labels_mode != result.labels).any()
