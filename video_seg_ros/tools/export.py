"""``video-seg-export``: a checkpoint's network as an ONNX file, checked against PyTorch before it
is written.

Example::

    video-seg-export --checkpoint outputs/espnet_city.pt -o outputs/espnet_city.onnx
    # on the vehicle:
    trtexec --onnx=outputs/espnet_city.onnx --fp16 --saveEngine=outputs/espnet_city.plan

The graph takes the normalised frame (the checkpoint's preprocessing, done by the caller) and
returns logits; memory checkpoints add their memory as explicit inputs and outputs
(:mod:`video_seg_ros.backends.onnx_export` describes both). Before writing, the graph runs in
OpenVINO (fp32) on check frames next to the PyTorch model; the maximum logit difference and the
label agreement are printed, and nothing is written when they miss the tolerances. The file carries
the checkpoint's class table, output mapping and preprocessing in ``video_seg_ros.*``
metadata_props, so ``video-seg-import --onnx`` rebuilds the same checkpoint with no flags
(:func:`video_seg_ros.byo_model.graph_metadata`). A checkpoint imported from ONNX is written as its
graph adapted to the image -> logits contract, with the same metadata.
Argument parsing and printing only; the work is in :mod:`video_seg_ros.backends.onnx_export` and
:mod:`video_seg_ros.backends.graph_check`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from video_seg_ros.backends import BackendError
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
from video_seg_ros.tools.arguments import (
    add_output_argument,
    command_line,
    fail,
    parse_arguments,
    parse_size,
    positive_float,
    positive_int,
    usage_error,
)

PROG = "video-seg-export"
CHECK_FRAMES = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a checkpoint's network to ONNX (opset 17, fp32) for OpenVINO, "
        "TensorRT or "
        "any ONNX runtime, after checking the graph against the PyTorch model.",
        epilog="TensorRT on the vehicle: trtexec --onnx=MODEL.onnx --fp16 --saveEngine=MODEL.plan "
        "(with --dynamic-batch add --minShapes=image:1x3xHxW --optShapes=... --maxShapes=...).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        default="default",
        help="checkpoint in the project format (video-seg-import, video-seg-train); "
        "'default' = the embedded model",
    )
    add_output_argument(parser, "ONNX file to write", required=True)
    parser.add_argument(
        "--size",
        type=lambda text: parse_size(text, (8, 8)),
        default=None,
        metavar="WxH",
        help="network input size (default: the checkpoint's input size); frames must "
        "be resized to it before the checkpoint's normalisation",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch size of a fixed-shape graph"
    )
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="leave the batch size free (per-frame models only)",
    )
    parser.add_argument(
        "--dynamic-size",
        action="store_true",
        help="leave height and width free (per-frame models only; checked at a second size)",
    )
    parser.add_argument(
        "--check-images",
        nargs="+",
        type=Path,
        default=None,
        metavar="IMAGE",
        help=f"frames to check on, in temporal order (default: {CHECK_FRAMES} frames of "
        "the synthetic street sequence)",
    )
    parser.add_argument(
        "--atol",
        type=positive_float,
        default=5e-3,
        help="largest allowed |logit difference| between the graph and PyTorch",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.999,
        help="smallest allowed fraction of pixels with the same label",
    )
    return parser


def check_frames(paths: list[Path] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """RGB uint8 frames to compare on: the given images, or a few synthetic street frames."""
    if paths:
        from video_seg_ros.frames import read_rgb

        return [read_rgb(path) for path in paths]
    from video_seg_ros.synthetic import generate_sequence

    width, height = size
    return [
        frame.rgb
        for frame in generate_sequence(seed=7, num_frames=CHECK_FRAMES, width=width, height=height)
    ]


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """Another input size to check a dynamic-size graph at: 3/4 of ``size``, multiples of 8."""
    return tuple(max(8, int(side * 0.75) // 8 * 8) for side in size)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not 0.0 <= args.min_agreement <= 1.0:
        return usage_error(parser, f"--min-agreement must be in 0..1, got {args.min_agreement}")
    from video_seg_ros.backends.graph_check import check_onnx_against_torch
    from video_seg_ros.backends.onnx_export import ExportError, export_onnx, is_temporal
    from video_seg_ros.engine import SegmentationEngine

    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        return fail(PROG, error)
    if checkpoint.arch == "onnx":
        return _export_imported_graph(parser, checkpoint, args, argv)
    pre = checkpoint.preprocessing
    size = args.size or (pre.input_width, pre.input_height)
    checkpoint.preprocessing = dataclasses.replace(pre, input_width=size[0], input_height=size[1])
    engine = SegmentationEngine(checkpoint, device="cpu", backend="torch", precision="fp32")
    model = engine.model
    if is_temporal(model) and (args.dynamic_batch or args.dynamic_size or args.batch != 1):
        return usage_error(
            parser,
            "a memory checkpoint exports for one frame at a fixed size (the memory's "
            "tiling needs static shapes): drop --batch/--dynamic-batch/--dynamic-size",
        )
    try:
        frames = check_frames(args.check_images, size)
    except (OSError, ValueError) as error:
        return fail(PROG, f"cannot read the check images: {error}")
    images = [engine.preprocess([frame], "rgb") for frame in frames]
    if args.batch > 1 or args.dynamic_batch:
        batch = max(args.batch, 2)
        images = [
            engine.preprocess((frames * batch)[i : i + batch], "rgb") for i in range(len(frames))
        ]
    if args.dynamic_size:
        small = dataclasses.replace(
            checkpoint.preprocessing,
            input_width=second_size(size)[0],
            input_height=second_size(size)[1],
        )
        small_engine = SegmentationEngine(
            dataclasses.replace(checkpoint, preprocessing=small),
            model=model,
            device="cpu",
            backend="torch",
            precision="fp32",
        )
        images.append(small_engine.preprocess(frames[:1], "rgb"))
    output = Path(args.output)
    partial = output.with_name(output.name + ".partial")
    try:
        export_onnx(
            model,
            size,
            partial,
            batch=args.batch,
            dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size,
        )
        check = check_onnx_against_torch(
            model, partial, images, reset_before=2 if is_temporal(model) else None
        )
    except (ExportError, BackendError) as error:
        partial.unlink(missing_ok=True)
        return fail(PROG, error)
    print(
        f"{command_line(PROG, argv)}\n{checkpoint.model_name}, input {size[0]}x{size[1]}, "
        f"{'memory as explicit state, ' if is_temporal(model) else ''}checked with OpenVINO fp32 "
        f"against PyTorch fp32 on {len(frames)} frame(s):"
    )
    for line in check.lines:
        print(f"  {line}")
    print(
        f"max |logit difference| {check.max_abs_diff:.2e} (tolerance {args.atol:g}), labels agree "
        "on "
        f"{check.label_agreement:.4%} (at least {args.min_agreement:.2%})"
    )
    if check.max_abs_diff > args.atol or check.label_agreement < args.min_agreement:
        partial.unlink(missing_ok=True)
        return fail(
            PROG,
            f"the exported graph differs from the PyTorch model beyond the tolerance; "
            f"nothing written to {output}",
        )
    _write_metadata(partial, checkpoint)
    os.replace(partial, output)
    print(f"wrote {output}")
    return 0


def _write_metadata(path: Path, checkpoint) -> None:
    from video_seg_ros.backends.onnx_graph import write_metadata
    from video_seg_ros.byo_model import graph_metadata

    write_metadata(path, graph_metadata(checkpoint))


def _export_imported_graph(parser, checkpoint, args, argv) -> int:
    """An ``arch: onnx`` checkpoint: its graph adapted to image -> logits, with the metadata."""
    from video_seg_ros.backends.onnx_graph import GraphError, write_graph
    from video_seg_ros.models import build_from_checkpoint

    pre = checkpoint.preprocessing
    size = (pre.input_width, pre.input_height)
    if (
        (args.size and tuple(args.size) != size)
        or args.dynamic_batch
        or args.dynamic_size
        or args.batch != 1
    ):
        return usage_error(
            parser,
            f"an imported ONNX graph is written as it was imported "
            f"({size[0]}x{size[1]}, its own batch size): drop "
            "--size/--batch/--dynamic-batch/--dynamic-size",
        )
    output = Path(args.output)
    partial = output.with_name(output.name + ".partial")
    try:
        write_graph(build_from_checkpoint(checkpoint), size, partial)
        _write_metadata(partial, checkpoint)
    except (GraphError, OSError) as error:
        partial.unlink(missing_ok=True)
        return fail(PROG, error)
    os.replace(partial, output)
    print(
        f"{command_line(PROG, argv)}\n{checkpoint.model_name}: an imported ONNX graph, written "
        "adapted to "
        f"image (N, 3, {size[1]}, {size[0]}) -> logits (not re-checked: there is no PyTorch model "
        "to "
        f"compare with)\nwrote {output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
