"""``video-seg-import``: turn a published state_dict, an ONNX graph or a torchvision network into a
video_seg_ros checkpoint.

Examples::

    video-seg-import --arch espnet --preset cityscapes \\
        --weights ../shared/weights/espnet/espnet_p_2_q_8.pth -o outputs/espnet_city.pt
    video-seg-import --onnx my_net.onnx --label-set cityscapes --size 1024x512 \\
        --mean 123.675 116.28 103.53 --std 58.395 57.12 57.375 --scale 1 -o outputs/my_net.pt
    video-seg-import --arch torchvision:lraspp_mobilenet_v3_large --label-set cityscapes \\
        -o outputs/lraspp.pt

The last two are the "bring your own model" paths (:mod:`video_seg_ros.byo_model`,
docs/byo_model.md).

The checkpoint records the architecture and its arguments (read from the weights' shapes), the
label set, palette, the output channel -> class id mapping (extra background/void channels -> 255),
the preprocessing of the source repository's evaluation script, and where the weights came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from video_seg_ros.byo_model import OUTPUT_KINDS, ModelImportError, import_onnx, import_torchvision
from video_seg_ros.labels import LABEL_SETS
from video_seg_ros.tools.arguments import (
    add_output_argument,
    add_quiet_argument,
    command_line,
    fail,
    non_negative_int,
    parse_arguments,
    parse_size,
    positive_float,
    positive_int,
    usage_error,
)
from video_seg_ros.weights_import import PRESETS, WeightsImportError, import_weights


def build_parser() -> argparse.ArgumentParser:
    from video_seg_ros.models.torchvision_models import PREFIX, TORCHVISION_SEGMENTERS

    torchvision_names = [PREFIX + name for name in TORCHVISION_SEGMENTERS]
    parser = argparse.ArgumentParser(
        prog="video-seg-import",
        description="Convert a published state_dict, an ONNX graph (--onnx) or a torchvision "
        "network "
        "(--arch torchvision:NAME) into a video_seg_ros checkpoint (weights + architecture + "
        "labels + preprocessing). Bring-your-own-model paths: docs/byo_model.md.",
        epilog="presets: "
        + "; ".join(f"--arch {a} --preset {s}: {p.note}" for (a, s), p in PRESETS.items())
        + ". Example: video-seg-import --arch espnet --preset cityscapes --weights "
        "../shared/weights/espnet/espnet_p_2_q_8.pth -o outputs/espnet_city.pt. ONNX: "
        "video-seg-import --onnx net.onnx --label-set cityscapes --size 1024x512 -o net.pt "
        "(class table, preprocessing and output layout come from the graph's video_seg_ros.* "
        "metadata when present; flags win).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--arch",
        metavar="ARCH",
        help="architecture: one with published presets ("
        + ", ".join(sorted({a for a, _ in PRESETS}))
        + ") or a torchvision network ("
        + ", ".join(torchvision_names)
        + ")",
    )
    source.add_argument(
        "--onnx",
        type=Path,
        metavar="FILE",
        help="an ONNX graph with one float (N, 3, H, W) input: the checkpoint carries its "
        "bytes and runs on OpenVINO (CPU) or TensorRT (CUDA)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted({s for _, s in PRESETS}),
        help="dataset published weights were trained on (required with those "
        "architectures): sets the label set, palette, input size and normalisation of "
        "the source repository",
    )
    parser.add_argument(
        "--weights",
        help="published .pth file: a plain state_dict, or a dict holding it under 'model' or "
        "'state_dict' (as CGNet's); with torchvision:NAME optional (default: random "
        "init), read with weights_only=True",
    )
    add_output_argument(parser, "checkpoint file to write (.pt)", required=True, old=("--out",))
    add_quiet_argument(parser, "print only errors")
    parser.add_argument(
        "--p",
        type=int,
        default=None,
        help="ESPNet blocks at 1/4 resolution; read from the weights when omitted, "
        "checked against them when given",
    )
    parser.add_argument(
        "--q",
        type=int,
        default=None,
        help="ESPNet blocks at 1/8 resolution (3, 5 or 8 published); read from the "
        "weights when omitted, checked against them when given",
    )
    parser.add_argument(
        "--width-scale",
        type=float,
        default=None,
        help="DiCENet width scale s (e.g. 1.0 or 1.75, as in the weight file's name); "
        "read from the weights when omitted, checked against them when given",
    )
    byo = parser.add_argument_group(
        "ONNX graphs and torchvision networks (default: the graph's metadata)"
    )
    byo.add_argument(
        "--label-set",
        choices=sorted(LABEL_SETS),
        help="the classes the model predicts, as a label set this package knows",
    )
    byo.add_argument(
        "--classes",
        type=Path,
        metavar="TABLE.yaml",
        help="the classes as a YAML table: name, classes [{name, color: [r, g, b]}], ignore_id",
    )
    byo.add_argument(
        "--ignore-id",
        type=non_negative_int,
        default=None,
        metavar="ID",
        help="the model's output channel or class id that means 'no class' (published as 255), "
        "e.g. 19 for ESPNet's 20th Cityscapes channel",
    )
    byo.add_argument(
        "--size",
        type=lambda text: parse_size(text, (8, 8)),
        default=None,
        metavar="WxH",
        help="network input size; required when the graph's height/width are dynamic "
        "(torchvision default 1024x512)",
    )
    byo.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        default=None,
        help="channel order the network takes (default rgb)",
    )
    byo.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        metavar=("C0", "C1", "C2"),
        help="per-channel mean on the 0..255 scale, in --channel-order (default 0 0 0; "
        "torchvision: 123.675 116.28 103.53)",
    )
    byo.add_argument(
        "--std",
        type=positive_float,
        nargs=3,
        default=None,
        metavar=("C0", "C1", "C2"),
        help="per-channel std on the 0..255 scale (default 1 1 1; torchvision: 58.395 57.12 "
        "57.375)",
    )
    byo.add_argument(
        "--scale",
        type=positive_float,
        default=None,
        help="factor after (pixel - mean) / std (default 1/255; torchvision: 1)",
    )
    byo.add_argument(
        "--interpolation",
        choices=("linear", "area", "nearest"),
        default=None,
        help="how frames are resized to the input size (default linear)",
    )
    byo.add_argument(
        "--output-kind",
        choices=[k.replace("_", "-") for k in OUTPUT_KINDS],
        default=None,
        help="what the ONNX output holds: logits or probabilities (N, C, h, w) at any output "
        "stride, or class-ids (N, h, w); default: class-ids for an integer or 3-D output, "
        "else logits",
    )
    byo.add_argument(
        "--output-name",
        default=None,
        metavar="NAME",
        help="which ONNX output to use when the graph has several (default: the first)",
    )
    byo.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="torchvision: output channels (default: the class table's size)",
    )
    return parser


def _preprocessing_flags(args) -> dict:
    return {
        "size": args.size,
        "channel_order": args.channel_order,
        "mean": args.mean,
        "std": args.std,
        "scale": args.scale,
        "interpolation": args.interpolation,
    }


def _given_byo_flags(args) -> list[str]:
    names = (
        "label_set",
        "classes",
        "ignore_id",
        "size",
        "channel_order",
        "mean",
        "std",
        "scale",
        "interpolation",
        "output_kind",
        "output_name",
        "num_classes",
    )
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]


def _byo_checkpoint(parser, args, command: str):
    """The checkpoint of --onnx or --arch torchvision:NAME, or an exit status (usage error)."""
    tables = {"label_set": args.label_set, "classes": args.classes, "ignore_id": args.ignore_id}
    if args.label_set and args.classes:
        return usage_error(parser, "give either --label-set or --classes, not both")
    if args.onnx is not None:
        for flag, value in (
            ("--preset", args.preset),
            ("--weights", args.weights),
            ("--num-classes", args.num_classes),
            ("--p", args.p),
            ("--q", args.q),
            ("--width-scale", args.width_scale),
        ):
            if value is not None:
                return usage_error(
                    parser, f"{flag} is for --arch; an ONNX graph carries its own weights"
                )
        kind = args.output_kind.replace("-", "_") if args.output_kind else None
        return import_onnx(
            args.onnx,
            **tables,
            **_preprocessing_flags(args),
            output_kind=kind,
            output_name=args.output_name,
            command=command,
        )
    for flag, value in (
        ("--preset", args.preset),
        ("--output-kind", args.output_kind),
        ("--output-name", args.output_name),
        ("--p", args.p),
        ("--q", args.q),
        ("--width-scale", args.width_scale),
    ):
        if value is not None:
            return usage_error(parser, f"{flag} does not apply to {args.arch}")
    return import_torchvision(
        args.arch,
        **tables,
        num_classes=args.num_classes,
        weights=args.weights,
        **_preprocessing_flags(args),
        command=command,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    command = command_line("video-seg-import", argv)
    preset_archs = sorted({a for a, _ in PRESETS})
    try:
        if args.onnx is not None or args.arch.startswith("torchvision:"):
            checkpoint = _byo_checkpoint(parser, args, command)
            if isinstance(checkpoint, int):
                return checkpoint
        elif args.arch not in preset_archs:
            return usage_error(
                parser,
                f"unknown --arch {args.arch!r}; use one of {', '.join(preset_archs)}, "
                "torchvision:NAME, or --onnx FILE",
            )
        elif args.preset is None or args.weights is None:
            return usage_error(parser, f"--arch {args.arch} needs --preset and --weights")
        elif _given_byo_flags(args):
            return usage_error(
                parser,
                f"{', '.join(_given_byo_flags(args))}: for --onnx and "
                f"torchvision:NAME; --preset {args.preset} sets the classes and "
                f"preprocessing of {args.arch}",
            )
        else:
            checkpoint = import_weights(
                args.arch,
                args.preset,
                args.weights,
                p=args.p,
                q=args.q,
                width_scale=args.width_scale,
                command=command,
            )
    except (WeightsImportError, ModelImportError) as error:
        return fail("video-seg-import", error)
    try:
        out = checkpoint.save(args.output)
    except OSError as error:
        return fail(
            "video-seg-import",
            f"cannot write {args.output}: {error.strerror or error}. "
            "Choose a writable -o/--output path.",
        )
    pre = checkpoint.preprocessing
    if not args.quiet:
        print(
            f"wrote {out}: {checkpoint.model_name}, {checkpoint.label_set} "
            f"({len(checkpoint.class_names)} classes, outputs -> {checkpoint.output_to_class}), "
            f"input {pre.input_width}x{pre.input_height} {pre.channel_order.upper()}"
        )
        if checkpoint.arch == "onnx" or checkpoint.arch.startswith("torchvision:"):
            print(
                f"preprocessing: (pixel - {pre.mean}) / {pre.std} * {pre.scale:g}, "
                f"{pre.interpolation} "
                "resize; check it against how the network was trained"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
