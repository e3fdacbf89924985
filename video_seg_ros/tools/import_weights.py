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
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from video_seg_ros.byo_model import OUTPUT_KINDS, ModelImportError, import_onnx, import_torchvision
from video_seg_ros.checkpoint import Checkpoint, Preprocessing, file_sha256
from video_seg_ros.labels import LABEL_SETS
from video_seg_ros.models import build_model
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
from video_seg_ros.models.dicenet import dicenet_arguments


class WeightsImportError(RuntimeError):
    """Published weights cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class Preset:
    """What a published checkpoint was trained on and how its source feeds images to it."""

    label_set: str
    num_classes: int
    preprocessing: Preprocessing
    note: str


# ESPNet, sacmehta/ESPNet test/VisualizeResults.py: cv2.imread (BGR), subtract these per-channel
# means, divide by these stds (0..255 statistics of the Cityscapes training set), resize to
# 1024x512, then divide by 255.
_ESPNET_CITYSCAPES_MEAN = [72.3923111, 82.90893555, 73.15840149]
_ESPNET_CITYSCAPES_STD = [45.3192215, 46.15289307, 44.91483307]
# The repository states no CamVid statistics. These are what its train/loadData.py computes
# (mean over images of per-image BGR channel means and stds) on the CamVid SegNet train split
# (367 images of ../shared/data/camvid/train); the network runs at CamVid's own 480x360.
_ESPNET_CAMVID_MEAN = [110.33102643, 108.40886315, 105.03319369]
_ESPNET_CAMVID_STD = [72.12571015, 72.69074534, 69.90434816]

# CGNet, wutianyiRosun/CGNet: OpenCV read, channels reversed to RGB, float 0..255 minus the
# dataset mean (dataset/wtfile/camvid_inform.pkl;
# ../shared/weights/cgnet/cgnet_camvid_inform.json),
# no std division; evaluated at CamVid's 480x360.
_CGNET_CAMVID_MEAN_RGB = [105.65775299072266, 103.329833984375, 99.62540435791016]

# DiCENet, sacmehta/EdgeNets test_segmentation.py: PIL RGB, bilinear resize to 1024x512,
# to_tensor (/255), then ImageNet mean/std; written here on the 0..255 scale. PIL's bilinear
# downscaling is antialiased; the engine's cv2 'linear' is the closest it offers (docs/models.md).
_EDGENETS_MEAN_RGB = [123.675, 116.28, 103.53]
_EDGENETS_STD_RGB = [58.395, 57.12, 57.375]

PRESETS: dict[tuple[str, str], Preset] = {
    ("espnet", "cityscapes"): Preset(
        label_set="cityscapes",
        num_classes=20,
        preprocessing=Preprocessing(
            input_height=512,
            input_width=1024,
            channel_order="bgr",
            mean=_ESPNET_CITYSCAPES_MEAN,
            std=_ESPNET_CITYSCAPES_STD,
            scale=1.0 / 255.0,
            interpolation="linear",
        ),
        note="sacmehta/ESPNet test/VisualizeResults.py preprocessing; channel 19 = background",
    ),
    ("espnet", "camvid"): Preset(
        label_set="camvid",
        num_classes=12,
        preprocessing=Preprocessing(
            input_height=360,
            input_width=480,
            channel_order="bgr",
            mean=_ESPNET_CAMVID_MEAN,
            std=_ESPNET_CAMVID_STD,
            scale=1.0 / 255.0,
            interpolation="linear",
        ),
        note="ESPNet preprocessing with CamVid train statistics (train/loadData.py procedure); "
        "channel 11 = void",
    ),
    ("cgnet", "camvid"): Preset(
        label_set="camvid",
        num_classes=11,
        preprocessing=Preprocessing(
            input_height=360,
            input_width=480,
            channel_order="rgb",
            mean=_CGNET_CAMVID_MEAN_RGB,
            std=[1.0, 1.0, 1.0],
            scale=1.0,
            interpolation="linear",
        ),
        note="wutianyiRosun/CGNet CamVid evaluation preprocessing (RGB, 0..255 minus mean, "
        "no std)",
    ),
    ("dicenet", "cityscapes"): Preset(
        label_set="cityscapes",
        num_classes=20,
        preprocessing=Preprocessing(
            input_height=512,
            input_width=1024,
            channel_order="rgb",
            mean=_EDGENETS_MEAN_RGB,
            std=_EDGENETS_STD_RGB,
            scale=1.0,
            interpolation="linear",
        ),
        note="sacmehta/EdgeNets test_segmentation.py preprocessing (RGB, ImageNet mean/std, "
        "1024x512); channel 19 = background",
    ),
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a published weights file (plain state_dict, or a dict holding one under 'model' /
    'state_dict'); strips DataParallel's ``module.`` prefix. Raises :class:`WeightsImportError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsImportError(
            f"weights file not found: {path}. Pass the published .pth file with --weights."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign format ...
        raise WeightsImportError(
            f"could not read {path} as PyTorch weights ({type(error).__name__}: "
            f"{str(error)[:160]}). "
            "The file is damaged or not a PyTorch state_dict; download it again from its source."
        ) from error
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise WeightsImportError(
            f"{path} holds no state_dict (a dict of tensors); got {type(data).__name__}. "
            "Pass the published weights file itself."
        )
    return {re.sub(r"^module\.", "", key): value for key, value in data.items()}


def check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`WeightsImportError` listing missing, unexpected and mis-shaped keys, if
    any."""
    expected = model.state_dict()
    # Weights saved by PyTorch < 0.4 have no BatchNorm 'num_batches_tracked' counters; loading
    # fills
    # them in (they only matter for training with momentum=None), so they are not "missing".
    missing = sorted(
        k for k in set(expected) - set(state_dict) if not k.endswith(".num_batches_tracked")
    )
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: weights {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"the weights do not fit {what}:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:20]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 20 else ""
                )
                lines.append(f"  {title}: {shown}")
        lines.append("Check --arch/--preset (and --p/--q) against the weights file.")
        raise WeightsImportError("\n".join(lines))


def espnet_arguments(
    state_dict: dict[str, torch.Tensor], p: int | None = None, q: int | None = None, **_unused
) -> dict[str, int]:
    """ESPNet builder arguments read from a published state_dict's key names and shapes."""

    def blocks(level):
        indices = {
            int(m.group(1))
            for k in state_dict
            if (m := re.match(rf"encoder\.level{level}\.(\d+)\.", k))
        }
        return len(indices)

    if "classifier.weight" not in state_dict or "conv.conv.weight" not in state_dict:
        raise WeightsImportError(
            "these weights are not an ESPNet with the RUM decoder (no 'classifier.weight' "
            "/ 'conv.conv.weight'); ESPNet-C encoder-only weights are not supported."
        )
    num_classes = int(state_dict["classifier.weight"].shape[0])
    found_p, found_q = blocks(2), blocks(3)
    for name, given, found in (("p", p, found_p), ("q", q, found_q)):
        if given is not None and given != found:
            raise WeightsImportError(
                f"--{name} {given} given, but the weights have {name}={found} "
                f"(encoder.level{2 if name == 'p' else 3}.* blocks); drop --{name} or fix it."
            )
    arguments = {"num_classes": num_classes, "p": found_p, "q": found_q}
    skip_channels = int(state_dict["conv.conv.weight"].shape[1]) - num_classes
    if skip_channels != 16:  # only the CamVid variant differs; keeps model names short otherwise
        arguments["decoder_skip_channels"] = skip_channels
    return arguments


def cgnet_arguments(state_dict: dict[str, torch.Tensor], **_unused) -> dict[str, int]:
    """CGNet builder arguments (classes, M, N) read from a published state_dict."""
    if "classifier.0.conv.weight" not in state_dict:
        raise WeightsImportError(
            "these weights are not a CGNet (no 'classifier.0.conv.weight'); "
            "weights trained with the dropout classifier are not supported."
        )

    def blocks(level):
        return len(
            {int(m.group(1)) for k in state_dict if (m := re.match(rf"level{level}\.(\d+)\.", k))}
        )

    return {
        "num_classes": int(state_dict["classifier.0.conv.weight"].shape[0]),
        "m": blocks(2) + 1,
        "n": blocks(3) + 1,
    }


def _dicenet_arguments(
    state_dict: dict[str, torch.Tensor], width_scale: float | None = None, **_unused
) -> dict:
    try:
        return dicenet_arguments(state_dict, width_scale)
    except ValueError as error:
        raise WeightsImportError(str(error)) from None


ARCH_ARGUMENTS = {
    "espnet": espnet_arguments,
    "cgnet": cgnet_arguments,
    "dicenet": _dicenet_arguments,
}


def import_weights(
    arch: str,
    preset_name: str,
    weights: str | Path,
    p: int | None = None,
    q: int | None = None,
    command: str | None = None,
    width_scale: float | None = None,
) -> Checkpoint:
    """Convert published weights to a :class:`Checkpoint` (validated: every key used, none
    missing)."""
    if (arch, preset_name) not in PRESETS:
        known = ", ".join(f"{a}/{s}" for a, s in PRESETS)
        raise WeightsImportError(
            f"no preset for --arch {arch} --preset {preset_name}; known: {known}"
        )
    preset = PRESETS[(arch, preset_name)]
    state_dict = read_state_dict(weights)
    arch_kwargs = ARCH_ARGUMENTS[arch](state_dict, p=p, q=q, width_scale=width_scale)
    if arch_kwargs["num_classes"] != preset.num_classes:
        raise WeightsImportError(
            f"the weights have {arch_kwargs['num_classes']} output classes, but preset "
            f"{preset_name} expects {preset.num_classes}; use the matching --preset."
        )
    model = build_model(arch, **arch_kwargs)
    check_keys(model, state_dict, f"{arch}({arch_kwargs})")
    model.load_state_dict(state_dict, strict=True)
    weights = Path(weights)
    return Checkpoint.for_label_set(
        arch,
        arch_kwargs,
        model.state_dict(),
        preset.label_set,
        preset.preprocessing,
        source={
            "weights_file": weights.name,
            "sha256": file_sha256(weights),
            "preset": preset_name,
            "command": command or "",
            "note": preset.note,
        },
    )


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
