"""Published ESPNet / CGNet / DiCENet weights -> a video_seg_ros :class:`Checkpoint`: the presets
(label set, classes, the source repository's preprocessing) and the conversion with every key
checked. The command line is :mod:`video_seg_ros.tools.import_weights` (``video-seg-import``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from video_seg_ros.checkpoint import Checkpoint, Preprocessing, file_sha256
from video_seg_ros.models import build_model
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
