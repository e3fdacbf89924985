"""Temporal fusion and the adaptive keyframe clock: accuracy, flicker and cost per policy.

Usage (from the repository root)::

    python bench/temporal.py \\
        --images ../shared/data/cityscapes_sequences/aachen_000002/leftImg8bit \\
        --labels ../shared/data/cityscapes_sequences/aachen_000002/pseudo_labelIds \\
        --label-format cityscapes-labelids
    python bench/temporal.py --limit 4 --size 512x256 --synthetic-frames 4   # a quick smoke run

The model is a package checkpoint (``--checkpoint``) or the published ESPNet Cityscapes weights
imported in-process (``--espnet-weights``, default ../shared's p2q8). Every policy runs the same
engine (:class:`~video_seg_ros.engine.SegmentationEngine` with
:class:`~video_seg_ros.temporal.TemporalSettings`; its state is reset at every sequence break)
over the same frames, which are read once and kept in memory:

- ``off``: every frame on its own (the baseline);
- ``fuse w``: fusion with current-frame weight ``w`` (``+conf``: confidence weighting);
- ``adaptive k``: the network on keyframes only, at least every ``k`` frames (scene cuts, motion,
  confidence and the 1 s limit add keyframes);
- ``every k (blind)``: only the frame count makes keyframes (the user's fixed-interval experiment).

Columns: mIoU against the labels (pseudo labels on the shared snippet: a strong segmenter's, not
ground truth); TC (the evaluator's machinery, :class:`~video_seg_ros.metrics.TemporalConsistency`)
twice: with a flow like the method's (DIS ultrafast at 512 px) and with a different, better one
(DIS medium at full resolution), so that a policy cannot look consistent merely by agreeing with
its own flow; network share (frames the network ran on); mean ms per frame in the network
(preprocessing + network), the flow (flow, warp-error check, warp) and the fusion (blend, argmax,
resize); fps end to end (segmenting only, no scoring). The evaluation flows depend only on the
frames, so they are computed once and reused for every policy.

The synthetic street (video_seg_ros.synthetic) follows with exact labels and TC through the exact
flow and visibility (no flow-estimation error), so that parameters are not tuned to one snippet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from bench_utils import shared_dir
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.evaluation import percent
from video_seg_ros.streams import FolderStream
from video_seg_ros.flow import DisFlow
from video_seg_ros.labels import LABEL_FORMATS
from video_seg_ros.metrics import ConfusionMatrix, TemporalConsistency
from video_seg_ros.temporal import TemporalSettings
from video_seg_ros.tools.arguments import add_engine_arguments, add_limit_argument, parse_size

#: The two TC flows: (name, DIS preset, flow width or None = full resolution).
TC_FLOWS = (("tc_ultrafast_512", "ultrafast", 512), ("tc_medium_full", "medium", None))
#: Adaptive settings in which only the frame count makes keyframes.
BLIND = {
    "keyframe_error_share": 1.0,
    "keyframe_motion": 0.0,
    "keyframe_confidence": 0.0,
    "max_interval_s": 0.0,
}


@dataclass
class Clip:
    """Frames of one sequence in temporal order, with optional labels and exact flow."""

    name: str
    frames: list[np.ndarray]
    labels: list[np.ndarray | None]
    numbers: list[int]
    flows: list[np.ndarray | None] = field(default_factory=list)  # exact flow t -> t+1
    visible: list[np.ndarray | None] = field(default_factory=list)  # exact visibility of t in t+1


def policies(
    weights: list[float], intervals: list[int], lags: list[int] = ()
) -> list[tuple[str, dict]]:
    """Rows: the defaults of each mode first, then what each default setting buys (one changed at a
    time)."""
    rows = [("off", {"mode": "off"}), ("fuse (defaults)", {"mode": "fuse"})]
    rows += [(f"fuse, weight {w:g}", {"mode": "fuse", "fusion_weight": w}) for w in weights]
    rows.append(("fuse, no stickiness (plain blend)", {"mode": "fuse", "label_stickiness": 0.0}))
    rows.append(("fuse, flow at 512 px", {"mode": "fuse", "flow_width": 512}))
    rows.append(
        (
            "fuse, probabilities at the network output size",
            {"mode": "fuse", "probability_width": 0},
        )
    )
    rows.append(("fuse, +confidence weighting", {"mode": "fuse", "confidence_weighting": True}))
    for k in intervals:
        rows.append(
            (
                f"adaptive {k}" + (" (defaults)" if k == TemporalSettings().max_interval else ""),
                {"mode": "adaptive", "max_interval": k},
            )
        )
    for k in intervals:
        rows.append((f"every {k} (blind)", {"mode": "adaptive", "max_interval": k, **BLIND}))
    for lag in lags:
        rows.append((f"adaptive, keyframe lag {lag}", {"mode": "adaptive", "keyframe_lag": lag}))
    return rows


def pairs(clip: Clip) -> list[int]:
    """Indices t of the clip whose frame t+1 is the next frame (frame-number step 1, same size)."""
    return [
        t
        for t in range(len(clip.frames) - 1)
        if clip.numbers[t + 1] - clip.numbers[t] == 1
        and clip.frames[t].shape == clip.frames[t + 1].shape
    ]


def run_policy(engine: SegmentationEngine, clips: list[Clip], rate_hz: float) -> dict:
    """Segment every clip (state reset at each clip start); predictions and per-frame times."""
    predictions, times = [], {"network_ms": [], "flow_ms": [], "fusion_ms": []}
    keyframes = frames = 0
    for frame in clips[0].frames[:2]:  # warm-up of this policy's code path, not timed
        engine.segment(frame)
    engine.forget_streams()
    start = time.perf_counter()
    for clip in clips:
        engine.reset()
        out = []
        for frame, number in zip(clip.frames, clip.numbers):
            result = engine.segment(frame, stamp=number / rate_hz)
            out.append(result.labels)
            keyframes += result.keyframe
            frames += 1
            for key in times:
                times[key].append(getattr(result, key))
        predictions.append(out)
    wall_s = time.perf_counter() - start
    return {
        "predictions": predictions,
        "network_share": keyframes / frames,
        "fps": frames / wall_s,
        **{key: float(np.mean(values)) for key, values in times.items()},
        "keyframe_reasons": engine.temporal_stats()["reasons"],
    }


def score_real(clips: list[Clip], predictions, flows: dict, num_classes: int) -> dict:
    accuracy = ConfusionMatrix(num_classes)
    consistency = {
        name: TemporalConsistency(num_classes, preset, width) for name, preset, width in TC_FLOWS
    }
    for c, clip in enumerate(clips):
        for label, prediction in zip(clip.labels, predictions[c]):
            if label is not None:
                if label.shape != prediction.shape:
                    prediction = cv2.resize(
                        prediction, label.shape[::-1], interpolation=cv2.INTER_NEAREST
                    )
                accuracy.update(prediction, label)
        for t in pairs(clip):
            for name, metric in consistency.items():
                metric.update_with_flow(
                    predictions[c][t], predictions[c][t + 1], flows[name][(c, t)]
                )
    return {"miou": accuracy.miou, **{name: metric.tc for name, metric in consistency.items()}}


def score_synthetic(clips: list[Clip], predictions, num_classes: int) -> dict:
    accuracy = ConfusionMatrix(num_classes)
    consistency = TemporalConsistency(num_classes)
    for c, clip in enumerate(clips):
        for label, prediction in zip(clip.labels, predictions[c]):
            accuracy.update(prediction, label)
        for t in range(len(clip.frames) - 1):
            consistency.update_with_flow(
                predictions[c][t], predictions[c][t + 1], clip.flows[t], clip.visible[t]
            )
    return {"miou": accuracy.miou, "tc_true_flow": consistency.tc}


def evaluation_flows(clips: list[Clip]) -> dict:
    """The TC flows of every consecutive pair, once for all policies: {name: {(clip, t): flow}}."""
    flows = {}
    for name, preset, width in TC_FLOWS:
        dis = DisFlow(preset, max_width=width)
        flows[name] = {
            (c, t): dis(clip.frames[t], clip.frames[t + 1])
            for c, clip in enumerate(clips)
            for t in pairs(clip)
        }
    return flows


def load_real(args) -> list[Clip]:
    folder = FolderStream(args.images, args.labels, args.label_format, args.limit)
    clips: dict[str, Clip] = {}
    for item in tqdm(folder, desc="reading frames", unit="frame", disable=args.quiet):
        rgb, label = item.rgb, item.label
        if args.size is not None:
            rgb = cv2.resize(rgb, args.size, interpolation=cv2.INTER_AREA)
        clip = clips.setdefault(item.sequence, Clip(item.sequence, [], [], []))
        clip.frames.append(rgb)
        clip.labels.append(label)
        clip.numbers.append(item.number)
    return list(clips.values())


def load_synthetic(seeds: list[int], frames: int, size: tuple[int, int]) -> list[Clip]:
    from video_seg_ros.synthetic import generate_sequence

    clips = []
    for seed in seeds:
        clip = Clip(f"synthetic seed {seed}", [], [], [])
        for frame in generate_sequence(seed, frames, size[0], size[1]):
            clip.frames.append(frame.rgb)
            clip.labels.append(frame.labels)
            clip.numbers.append(frame.index)
            clip.flows.append(frame.flow_to_next)
            clip.visible.append(frame.flow_valid)
        clips.append(clip)
    return clips


def build_engine(args) -> SegmentationEngine:
    if args.checkpoint is not None:
        checkpoint = str(args.checkpoint)
    else:
        from video_seg_ros.weights_import import import_weights

        if args.espnet_weights is None or not Path(args.espnet_weights).is_file():
            raise SystemExit(
                "no model: pass --checkpoint (package format) or --espnet-weights (published "
                "ESPNet Cityscapes state_dict; default: ../shared's espnet_p_2_q_8.pth)"
            )
        checkpoint = import_weights("espnet", "cityscapes", args.espnet_weights)
    return SegmentationEngine(
        checkpoint,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        upsample=args.upsample,
    )


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration, subprocess.SubprocessError):
        import platform

        return platform.processor() or "unknown CPU"


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    print(f"\n### {title}\n")
    print("| policy | " + " | ".join(header for _, header in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key in ("miou", "network_share") or key.startswith("tc"):
                cells.append(percent(value, 1))
            else:
                cells.append("n/a" if value is None else f"{value:.1f}")
        print(f"| {row['policy']} | " + " | ".join(cells) + " |", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="package checkpoint to run")
    default_weights = shared_dir() / "weights/espnet/espnet_p_2_q_8.pth" if shared_dir() else None
    parser.add_argument(
        "--espnet-weights",
        type=Path,
        default=default_weights,
        help="published ESPNet Cityscapes state_dict, imported in-process when no "
        "--checkpoint is given (default: ../shared's p2q8)",
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="folder of real frames (sorted = temporal order)"
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="label images for --images, matched by name"
    )
    parser.add_argument("--label-format", choices=LABEL_FORMATS, default="trainids")
    add_limit_argument(parser, "at most N real frames")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        metavar="WxH",
        help="resize the real frames to this size first (labels stay as they are)",
    )
    parser.add_argument(
        "--rate", type=float, default=17.0, help="frame rate for the stamps (Cityscapes: 17 Hz)"
    )
    add_engine_arguments(parser)
    parser.set_defaults(
        precision="fp32"
    )  # the figures should not depend on what auto picks on this CPU
    parser.add_argument(
        "--weights", type=float, nargs="+", default=[0.6], help="fusion weights of the 'fuse' rows"
    )
    parser.add_argument(
        "--intervals",
        type=int,
        nargs="+",
        default=[2, 4],
        help="max intervals of the 'adaptive' and 'every k (blind)' rows",
    )
    parser.add_argument(
        "--lags",
        type=int,
        nargs="*",
        default=[1, 2, 3],
        help="keyframe lags of the 'adaptive, keyframe lag' rows (network in the background)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="REGEX",
        help="run only the rows whose name matches (re.search); 'off' always runs",
    )
    parser.add_argument(
        "--synthetic-seeds",
        type=int,
        nargs="*",
        default=[11, 12],
        help="synthetic street sequences (none: skip)",
    )
    parser.add_argument(
        "--synthetic-frames", type=int, default=30, help="frames per synthetic sequence"
    )
    parser.add_argument("--synthetic-size", type=parse_size, default=(1024, 512), metavar="WxH")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        "# "
        + shlex.join(["python", "bench/temporal.py", *(sys.argv[1:] if argv is None else argv)])
    )
    print(
        f"CPU {cpu_model()}, {os.cpu_count()} cores; load average "
        + " ".join(f"{value:.2f}" for value in os.getloadavg())
    )
    engine = build_engine(args)
    print(
        f"model {engine.model_name} on {engine.device} ({engine.backend}, {engine.precision}, "
        "upsample "
        f"{engine.upsample}), network input {engine.input_size[0]}x{engine.input_size[1]}"
    )
    print(f"temporal defaults {TemporalSettings().to_dict()}")
    engine.segment(np.zeros((engine.input_size[1], engine.input_size[0], 3), np.uint8))  # warm-up
    engine.forget_streams()
    num_classes = len(engine.class_names)
    rows = policies(args.weights, args.intervals, args.lags)
    if args.only:
        rows = [row for row in rows if row[0] == "off" or re.search(args.only, row[0])]
    report = {
        "command": shlex.join(sys.argv),
        "cpu": cpu_model(),
        "model": engine.model_name,
        "real": [],
        "synthetic": [],
    }
    timing = [
        ("network_share", "network share"),
        ("network_ms", "network ms"),
        ("flow_ms", "flow ms"),
        ("fusion_ms", "fusion ms"),
        ("fps", "fps"),
    ]

    if args.images is not None:
        clips = load_real(args)
        size = clips[0].frames[0].shape
        print(
            f"real frames: {sum(len(c.frames) for c in clips)} in {len(clips)} sequence(s), "
            f"{size[1]}x{size[0]}, from {args.images}"
            + (f"; labels {args.labels} ({args.label_format})" if args.labels else "")
        )
        flows = evaluation_flows(clips)
        for name, settings in tqdm(rows, desc="real frames", unit="policy", disable=args.quiet):
            engine.set_temporal(settings)
            run = run_policy(engine, clips, args.rate)
            scores = score_real(clips, run.pop("predictions"), flows, num_classes)
            report["real"].append({"policy": name, **scores, **run})
        print_table(
            "real frames (TC: DIS ultrafast 512 px like the method's flow / DIS medium full "
            "resolution)",
            report["real"],
            [
                ("miou", "mIoU"),
                ("tc_ultrafast_512", "TC ultrafast 512"),
                ("tc_medium_full", "TC medium full"),
                *timing,
            ],
        )

    if args.synthetic_seeds and args.synthetic_frames >= 2:
        clips = load_synthetic(args.synthetic_seeds, args.synthetic_frames, args.synthetic_size)
        for name, settings in tqdm(
            rows, desc="synthetic street", unit="policy", disable=args.quiet
        ):
            engine.set_temporal(settings)
            run = run_policy(engine, clips, args.rate)
            scores = score_synthetic(clips, run.pop("predictions"), num_classes)
            report["synthetic"].append({"policy": name, **scores, **run})
        width, height = args.synthetic_size
        print_table(
            f"synthetic street, seeds {args.synthetic_seeds}, {args.synthetic_frames} frames at "
            f"{width}x{height} (exact labels; TC through the exact flow, visible pixels only)",
            report["synthetic"],
            [("miou", "mIoU"), ("tc_true_flow", "TC true flow"), *timing],
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
