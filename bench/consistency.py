"""Cost and value of the temporal-consistency metric at several flow resolutions.

    python bench/consistency.py [--pairs 10] [--sequence DIR]

Uses two consecutive real frames and their pseudo labels from
../shared/data/cityscapes_sequences (2048x1024) when present, else a synthetic panning texture.
Prints, per setting, the median milliseconds per measured pair and the TC it reports, so the
cost of OnlineConsistency.max_width (node) and --flow-width (video-seg-eval) can be chosen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from bench_utils import median_ms
from video_seg_ros.frames import read_label, read_rgb
from video_seg_ros.metrics import OnlineConsistency, TemporalConsistency
from bench_utils import shared_dir


def load_pair(sequence: Path | None):
    if sequence is None and shared_dir() is not None:
        sequence = shared_dir() / "data/cityscapes_sequences/aachen_000000"
    if sequence is not None and sequence.is_dir():
        name = sequence.name
        frames = [
            read_rgb(sequence / "leftImg8bit" / f"{name}_0000{i:02d}_leftImg8bit.jpg")
            for i in (10, 11)
        ]
        labels = [
            read_label(
                sequence / "pseudo_labelIds" / f"{name}_0000{i:02d}_pseudo_labelIds.png",
                "cityscapes-labelids",
            )
            for i in (10, 11)
        ]
        return frames, labels, f"{sequence} frames 10-11"
    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur((rng.random((1024, 2060, 3)) * 255).astype(np.uint8), (0, 0), 2.0)
    regions = (
        cv2.GaussianBlur(rng.random((1024, 2060)).astype(np.float32), (0, 0), 40) * 19
    ).astype(np.uint8)
    frames = [canvas[:, 12:2060], canvas[:, 6:2054]]
    labels = [regions[:, 12:2060] % 19, regions[:, 6:2054] % 19]
    return frames, labels, "synthetic panning texture (no ../shared)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", type=int, default=10, help="repetitions per setting (median is printed)"
    )
    parser.add_argument(
        "--sequence",
        type=Path,
        default=None,
        help="a cityscapes_sequences snippet folder (default: ../shared's aachen_000000)",
    )
    args = parser.parse_args(argv)
    frames, labels, what = load_pair(args.sequence)
    height, width = labels[0].shape
    print(f"# {' '.join(['python bench/consistency.py', *sys.argv[1:]])}")
    print(f"data: {what}, {width}x{height}; cv2 threads {cv2.getNumThreads()}\n")

    print("| metric | setting | ms per pair (median) | TC of the pair |")
    print("|---|---|---|---|")
    for flow_width in (512, 1024, None):
        for occlusion in (False, True):
            metric = TemporalConsistency(19, "ultrafast", flow_width, occlusion)
            ms = median_ms(
                lambda: metric.update(frames[0], frames[1], labels[0], labels[1]), args.pairs
            )
            setting = f"flow width {flow_width or 'full'}" + (
                ", occlusion mask" if occlusion else ""
            )
            print(
                f"| TemporalConsistency (video-seg-eval) | {setting} | {ms:.1f} | "
                f"{metric.matrix.miou:.4f} |"
            )
    for max_width in (256, 320, 512):
        online = OnlineConsistency(19, max_width=max_width)

        def measure():
            online.reset()
            online.update(frames[0], labels[0])
            return online.update(frames[1], labels[1])

        ms = median_ms(measure, args.pairs)
        print(
            f"| OnlineConsistency (node), both frames | max_width {max_width} | {ms:.1f} | "
            f"{online.last.tc:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
