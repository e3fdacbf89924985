"""Backend x precision on published weights and real video: ms per frame, mIoU, TC, label agreement
with torch fp32, and what ``auto`` picks (with the accuracy gate's measurement).

Usage (from the repository root; needs ../shared)::

    python bench/precision.py                                   # ESPNet p2q8, aachen_000002
    python bench/precision.py --snippets aachen_000000 aachen_000002 --limit 10
    python bench/precision.py --settings torch:fp32 openvino:fp32 openvino:int8 \
        --int8-recipes nncf-defaults mixed accuracy-control     # int8 recipes side by side

For each snippet of ``../shared/data/cityscapes_sequences`` the frames (2048x1024) go through
``video_seg_ros.evaluation.evaluate`` -- the code ``video-seg-eval`` runs -- once per setting, one
setting after the other (a whole pass each, so caches stay warm for that setting only); mIoU is
against the snippet's pseudo-labels, TC with the evaluator's defaults, agreement is the share of
pixels whose label equals torch fp32's on the same frame. ms per frame is the engine's median
``model_ms`` (resize + network + upsampling). Settings the CPU refuses are listed with the reason.

int8 (OpenVINO + NNCF) is calibrated on ``--calibration-frames`` frames spread over the
``--calibration-snippets`` (default the two training snippets, never the scored ones); one row per
``--int8-recipes`` entry, with the time the quantisation took (conversion cache cold: pass a fresh
``--cache-dir`` to measure it).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np

from bench_utils import (
    PUBLISHED,
    add_int8_arguments,
    benchmark_checkpoint,
    machine_description,
    require_shared,
    snippet_calibration,
)

PROG = "bench/precision.py"
SETTINGS = (
    "torch:fp32",
    "torch:bf16",
    "openvino:fp32",
    "openvino:bf16",
    "openvino:int8",
    "auto:auto",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="espnet-p2q8", choices=sorted(PUBLISHED))
    parser.add_argument(
        "--snippets",
        nargs="+",
        default=["aachen_000002"],
        help="folders of ../shared/data/cityscapes_sequences",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="frames per snippet (default: all)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="conversion cache (default: the engine's)"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=SETTINGS,
        help="backend:precision pairs, in this order (torch:fp32 first: the agreement reference)",
    )
    add_int8_arguments(parser, several=True)
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="the accuracy gate (default: the engine's); 0 scores int8 even where the gate "
        "would refuse it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", PROG, *(sys.argv[1:] if argv is None else argv)])
    from video_seg_ros.backends import BackendError
    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.evaluation import evaluate
    from video_seg_ros.streams import FolderStream
    from video_seg_ros.runtime import PrecisionError

    root = require_shared() / "data" / "cityscapes_sequences"
    checkpoint = benchmark_checkpoint(args.model, (1024, 512))
    frames = snippet_calibration(args.calibration_snippets, args.calibration_frames)
    runs = [
        (*setting.split(":"), recipe)
        for setting in args.settings
        for recipe in (args.int8_recipes if setting.endswith(":int8") else [None])
    ]
    rows, refused, reference = [], [], {}
    for backend, precision, recipe in runs:
        name = f"{backend} {precision}" + (f" ({recipe})" if recipe else "")
        started = time.perf_counter()
        try:
            engine = SegmentationEngine(
                checkpoint,
                device="cpu",
                backend=backend,
                precision=precision,
                cache_dir=args.cache_dir,
                calibration=frames,
                int8_recipe=recipe,
                **({} if args.min_agreement is None else {"min_agreement": args.min_agreement}),
            )
        except (BackendError, PrecisionError) as error:
            refused.append((name, str(error).splitlines()[0]))
            continue
        startup_s = time.perf_counter() - started
        labels, milliseconds = {}, []

        def keep(frame, result, row):
            labels[frame.key] = result.labels
            milliseconds.append(result.model_ms)

        scores = []
        for snippet in args.snippets:
            folder = FolderStream(
                root / snippet / "leftImg8bit",
                root / snippet / "pseudo_labelIds",
                "cityscapes-labelids",
                args.limit,
            )
            evaluator = evaluate(engine, folder, on_frame=keep)
            scores.append((evaluator.miou, evaluator.tc))
        if (backend, precision) == ("torch", "fp32"):
            reference = labels
        agreement = (
            float(np.mean([np.mean(labels[key] == reference[key]) for key in labels]))
            if reference
            else None
        )
        rows.append(
            {
                "setting": name,
                "runs": f"{engine.backend} {engine.precision}",
                "startup_s": startup_s,
                "ms": statistics.median(milliseconds),
                "miou": np.mean([s[0] for s in scores]),
                "tc": np.mean([s[1] for s in scores]),
                "agreement": agreement,
                "reason": engine.precision_decision.reason,
            }
        )
        engine.release()
    print(
        f"{command}\n{machine_description()}\nmodel {args.model} at 1024x512, snippets "
        f"{', '.join(args.snippets)}"
        " (2048x1024 frames, "
        f"pseudo-labels){'' if args.limit is None else f', {args.limit} frames each'}; "
        f"calibration: {len(frames)} frames of {', '.join(args.calibration_snippets)}\n"
    )
    print(
        "| asked | runs | start-up s | ms per frame | mIoU | TC | labels = torch fp32 | "
        "precision decided because |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.4%}"
        print(
            f"| {row['setting']} | {row['runs']} | {row['startup_s']:.1f} | {row['ms']:.1f} | "
            f"{100 * row['miou']:.2f} | {100 * row['tc']:.2f} | {agreement} | {row['reason']} |"
        )
    for name, reason in refused:
        print(f"- refused {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
