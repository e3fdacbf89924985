"""video-seg-generate: write synthetic Cityscapes-like driving sequences with dense ground truth.

Example::

    video-seg-generate -o data/synth --sequences 8 --frames 30 --seed 0 --size 1024x512 --rate 17

writes ``data/synth/leftImg8bit_sequence/train/synth/*_leftImg8bit.png`` and matching
``gtFine/train/synth/*_gtFine_labelTrainIds.png`` (Cityscapes trainIds, 255 void), a
``generation_report.json`` (seeds, speed, class frequencies) and, with ``--contact-sheet``, a PNG
of frames beside their label overlays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from video_seg_ros.labels import CITYSCAPES
from video_seg_ros.tools.arguments import (
    add_deprecated_alias,
    add_output_argument,
    add_quiet_argument,
    command_line,
    fail,
    parse_arguments,
    parse_size,
    usage_error,
)

PROG = "video-seg-generate"


def parse_generated_size(text: str) -> tuple[int, int]:
    return parse_size(text, minimum=(32, 16))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate seeded synthetic driving sequences (frames + Cityscapes trainId "
        "labels, optionally true optical flow) in the Cityscapes folder layout.",
    )
    add_output_argument(
        parser,
        "output folder; gets leftImg8bit_sequence/<split>/synth/ and gtFine/<split>/synth/",
        required=True,
        old=("--out",),
    )
    parser.add_argument(
        "--sequences",
        type=int,
        default=4,
        help="number of sequences to write, 1..1000 (default 4)",
    )
    parser.add_argument("--frames", type=int, default=30, help="frames per sequence (default 30)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed; sequence i uses seed*1000+i, which is also its sequence number in "
        "the file names, so different base seeds never share a street (default 0)",
    )
    parser.add_argument(
        "--size",
        type=parse_generated_size,
        default=(1024, 512),
        help="frame size WIDTHxHEIGHT (default 1024x512)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=17.0,
        metavar="HZ",
        help="frame rate in Hz; sets how far things move between frames "
        "(default 17, as Cityscapes)",
    )
    add_deprecated_alias(parser, "--fps", "--rate", "rate", type=float, metavar="HZ")
    parser.add_argument(
        "--split",
        default="train",
        help="split folder name inside the layout, e.g. train or val (default train)",
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help="also write the true flow to the next frame as flow/<split>/synth/*_flowToNext.npz "
        "(float16 'flow' HxWx2 and bool 'valid'; ~1 MB per frame at 1024x512)",
    )
    parser.add_argument(
        "--no-effects",
        action="store_true",
        help="clean images: no exposure drift, flicker, motion blur or sensor noise",
    )
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="write a PNG with the first and last frame of (up to 6) sequences beside their "
        "label overlays",
    )
    add_quiet_argument(parser, "no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.sequences < 1 or args.frames < 1:
        return usage_error(parser, "--sequences and --frames must be at least 1")
    if args.sequences > 1000 or args.seed < 0:
        # Sequence seeds are seed*1000+i: more than 1000 would reach the next base seed's streets.
        return usage_error(
            parser, "at most 1000 sequences per base seed (use several --seed values), seed >= 0"
        )
    if args.rate <= 0:
        return usage_error(parser, "--rate must be positive")
    from tqdm import tqdm

    from video_seg_ros.frames import read_label
    from video_seg_ros.synthetic import (
        contact_sheet,
        generate_sequence,
        sequence_seed,
        write_sequence,
    )
    from video_seg_ros.synthetic.generator import sequence_name

    width, height = args.size
    seeds = [sequence_seed(args.seed, index) for index in range(args.sequences)]
    started = time.perf_counter()
    try:
        with tqdm(
            total=len(seeds) * args.frames, unit="frame", desc="generating", disable=args.quiet
        ) as bar:
            paths = [
                write_sequence(
                    args.output,
                    seed,
                    args.frames,
                    width,
                    height,
                    args.rate,
                    split=args.split,
                    write_flow=args.flow,
                    effects=not args.no_effects,
                    progress=bar.update,
                )
                for seed in seeds
            ]
    except OSError as error:
        return fail(PROG, error)
    elapsed = time.perf_counter() - started

    # Class frequencies from the written label files (what a trainer will actually read).
    counts = np.zeros(256, np.int64)
    label_dir = Path(args.output) / "gtFine" / args.split
    for label_path in sorted(label_dir.rglob("*_gtFine_labelTrainIds.png")):
        if any(label_path.name.startswith(f"{sequence_name(seed)}_") for seed in seeds):
            counts += np.bincount(read_label(label_path, "trainids").ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    report = {
        "command": command_line(PROG, argv),
        "size": [width, height],
        "fps": args.rate,
        "frames_per_sequence": args.frames,
        "sequence_seeds": seeds,
        "split": args.split,
        "flow": args.flow,
        "effects": not args.no_effects,
        "frames_written": sum(len(p) for p in paths),
        "seconds": round(elapsed, 2),
        "frames_per_second_including_png_writing": round(sum(len(p) for p in paths) / elapsed, 2),
        "class_pixel_fraction": {
            name: round(counts[i] / total, 5) for i, name in enumerate(CITYSCAPES.names)
        }
        | {"void": round(counts[255] / total, 5)},
    }
    report_path = Path(args.output) / "generation_report.json"
    if report_path.exists():
        # Several runs may fill one folder (train and val splits): keep every run's report.
        previous = json.loads(report_path.read_text())
        runs = previous if isinstance(previous, list) else [previous]
    else:
        runs = []
    report_path.write_text(json.dumps(runs + [report], indent=2))
    if args.contact_sheet:
        frames = []
        for seed in seeds[:6]:
            sequence = list(
                generate_sequence(
                    seed,
                    args.frames,
                    width,
                    height,
                    args.rate,
                    effects=not args.no_effects,
                    with_flow=False,
                )
            )
            frames += [sequence[0], sequence[-1]] if len(sequence) > 1 else sequence
        contact_sheet(frames, args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")
    print(
        f"wrote {report['frames_written']} frames of {len(seeds)} sequences to {args.output} "
        f"in {elapsed:.1f} s ({report['frames_per_second_including_png_writing']} frames/s); "
        f"report: {report_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
