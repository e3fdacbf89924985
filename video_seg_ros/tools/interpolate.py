"""``video-seg-interpolate``: mix a fine-tuned checkpoint with the checkpoint it started from.

Example (the embedded default model's last step, see video_seg_ros/resources/MODEL_CARD.md)::

    video-seg-interpolate --finetuned runs/default_model/last.pt \\
        --start runs/weights/espnet_p2_q8_cityscapes.pt --alpha 0.5 -o default_model.pt

The weights are ``alpha * finetuned + (1 - alpha) * start``
(:mod:`video_seg_ros.training.interpolation`); the class table and preprocessing are the fine-tuned
checkpoint's, and the output records both inputs' SHA-256 and alpha.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from video_seg_ros.checkpoint import CheckpointError, file_sha256, load_checkpoint
from video_seg_ros.tools.arguments import add_output_argument, fail, parse_arguments, usage_error

PROG = "video-seg-interpolate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Interpolate a fine-tuned checkpoint's weights with those of the checkpoint "
        "it started from (WiSE-FT): alpha 1 is the fine-tuned model, 0 the start.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--finetuned", type=Path, required=True, help="the fine-tuned checkpoint")
    parser.add_argument(
        "--start", type=Path, required=True, help="the checkpoint the fine-tuning started from"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="share of the fine-tuned weights, 0..1"
    )
    add_output_argument(parser, "where to write the interpolated checkpoint", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not 0.0 <= args.alpha <= 1.0:
        return usage_error(parser, f"--alpha must be in 0..1, got {args.alpha}")
    from video_seg_ros.training.interpolation import interpolate_checkpoints

    try:
        finetuned, start = load_checkpoint(args.finetuned), load_checkpoint(args.start)
        provenance = {
            "finetuned": args.finetuned.name,
            "finetuned_sha256": file_sha256(args.finetuned),
            "start": args.start.name,
            "start_sha256": file_sha256(args.start),
        }
        result = interpolate_checkpoints(finetuned, start, args.alpha, provenance)
    except CheckpointError as error:
        return fail(PROG, error)
    path = result.save(args.output)
    print(f"wrote {path}: {args.alpha:g} x {args.finetuned} + {1 - args.alpha:g} x {args.start}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
