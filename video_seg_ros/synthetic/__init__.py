"""Procedural Cityscapes-like driving video with exact ground truth (labels and optical flow).

Quick use::

    from video_seg_ros.synthetic import generate_sequence, demo_sequence, write_sequence
    for frame in generate_sequence(seed=7, num_frames=30, width=1024, height=512, fps=17):
        frame.rgb, frame.labels, frame.flow_to_next

The command line front end is ``video-seg-generate`` (video_seg_ros/tools/generate.py).
"""

from video_seg_ros.synthetic.generator import (
    CITY,
    DEFAULT_FPS,
    DEFAULT_SIZE,
    DEMO_SEED,
    SyntheticFrame,
    demo_sequence,
    frame_stem,
    generate_sequence,
    read_flow,
    sequence_seed,
    write_sequence,
)
from video_seg_ros.synthetic.preview import contact_sheet

__all__ = [
    "CITY",
    "DEFAULT_FPS",
    "DEFAULT_SIZE",
    "DEMO_SEED",
    "SyntheticFrame",
    "contact_sheet",
    "demo_sequence",
    "frame_stem",
    "generate_sequence",
    "read_flow",
    "sequence_seed",
    "write_sequence",
]
