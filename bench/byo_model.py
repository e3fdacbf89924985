"""Bring-your-own-model figures on the published ESPNet p2q8 and the real frame
frankfurt_000001_058914.

Usage (from the repository root; needs ../shared)::

    python bench/byo_model.py                      # OpenVINO fp32, 3 timed runs per setting
    python bench/byo_model.py --repeats 5 --json outputs/byo_model.json

(a) The published weights in the package's ESPNet module (whose logits equal the original code's)
exported the way a user would, plain ``torch.onnx.export(..., dynamo=False)`` (no metadata, the
exporter's own tensor names, batch fixed at 1), then imported with ``video-seg-import --onnx`` and
the preprocessing flags of the Cityscapes preset. Printed: the label agreement with the native
checkpoint on the same backend and with torch fp32, pixel accuracy against the ground truth, and
ms per 2048x1024 camera frame (resize + network + argmax + upsampling) next to the native path,
settings taking turns, medians of ``--repeats``.

(b) The native checkpoint through ``video-seg-export`` (which writes the class table and
preprocessing into the ONNX metadata) and back through ``video-seg-import --onnx`` with no flags:
the fields that must survive and the label agreement with the native checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np

from bench_utils import (
    CITYSCAPES_FRAME,
    alternating_medians,
    benchmark_checkpoint,
    machine_description,
    require_shared,
)

PROG = "bench/byo_model.py"
GROUND_TRUTH = "data/cityscapes_val/gtFine/frankfurt_000001_058914_gtFine_labelTrainIds.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend",
        default="openvino",
        choices=("openvino", "tensorrt"),
        help="backend both paths run on (tensorrt: with --device cuda)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each setting first")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs; the median is reported"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="conversion cache (default: a temporary folder)"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from video_seg_ros.checkpoint import load_checkpoint
    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.frames import read_label
    from video_seg_ros.models import build_from_checkpoint
    from video_seg_ros.tools.export import main as export_main
    from video_seg_ros.tools.import_weights import main as import_main

    shared = require_shared()
    camera = cv2.imread(str(shared / CITYSCAPES_FRAME))  # BGR, 2048x1024
    truth = read_label(shared / GROUND_TRUTH, "trainids")
    native = benchmark_checkpoint("espnet-p2q8")
    pre = native.preprocessing
    with tempfile.TemporaryDirectory(prefix="byo_bench_") as tmp:
        tmp = Path(tmp)
        cache = args.cache_dir or str(tmp / "cache")

        def engine(checkpoint, backend=args.backend):
            return SegmentationEngine(
                checkpoint, device=args.device, backend=backend, precision="fp32", cache_dir=cache
            )

        # (a) a user's plain export, imported with flags
        plain = tmp / "espnet_p2q8_plain.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                build_from_checkpoint(native).eval(),
                torch.randn(1, 3, pre.input_height, pre.input_width),
                str(plain),
                dynamo=False,
            )
        flags = [
            "--onnx",
            str(plain),
            "--label-set",
            "cityscapes",
            "--ignore-id",
            "19",
            "--channel-order",
            pre.channel_order,
            "--mean",
            *map(str, pre.mean),
            "--std",
            *map(str, pre.std),
            "--scale",
            repr(pre.scale),
            "-o",
            str(tmp / "espnet_p2q8_onnx.pt"),
        ]
        import_command = shlex.join(["video-seg-import", *flags])
        if import_main(flags) != 0:
            return 1
        imported = load_checkpoint(tmp / "espnet_p2q8_onnx.pt")
        engines = {"native": engine(native), "onnx import": engine(imported)}
        reference = engine(native, "torch")
        everything = {**engines, "torch": reference}
        labels = {name: e.segment(camera, "bgr").labels for name, e in everything.items()}
        times = alternating_medians(
            {name: (lambda e=e: e.segment(camera, "bgr").model_ms) for name, e in engines.items()},
            args.warmup,
            args.repeats,
        )
        valid = truth != 255
        figures = {
            "import_command": import_command,
            "agreement_with_native_same_backend": float(
                np.mean(labels["onnx import"] == labels["native"])
            ),
            "agreement_with_native_torch_fp32": float(
                np.mean(labels["onnx import"] == labels["torch"])
            ),
            "pixel_accuracy": {
                name: float(np.mean(labels[name][valid] == truth[valid])) for name in labels
            },
            "ms_per_camera_frame": times,
            "backend": args.backend,
            "device": args.device,
        }
        # (b) export -> import round trip
        exported = tmp / "espnet_p2q8_export.onnx"
        saved = native.save(tmp / "espnet_p2q8.pt")
        if export_main(["--checkpoint", str(saved), "-o", str(exported)]) != 0:
            return 1
        if (
            import_main(["--onnx", str(exported), "-o", str(tmp / "round_trip.pt"), "--quiet"])
            != 0
        ):
            return 1
        back = load_checkpoint(tmp / "round_trip.pt")
        fields = ("label_set", "class_names", "palette", "output_to_class", "preprocessing")
        figures["round_trip"] = {
            "fields_equal": {
                field: getattr(back, field) == getattr(native, field) for field in fields
            },
            "agreement_with_native_same_backend": float(
                np.mean(engine(back).segment(camera, "bgr").labels == labels["native"])
            ),
            "commands": [
                f"video-seg-export --checkpoint espnet_p2q8.pt -o {exported.name}",
                f"video-seg-import --onnx {exported.name} -o round_trip.pt",
            ],
        }
    command = shlex.join([PROG, *(sys.argv[1:] if argv is None else argv)])
    print(f"{command}\n{machine_description()}\n")
    print(f"(a) plain torch.onnx.export of ESPNet p2q8, imported with:\n    {import_command}\n")
    print(
        f"| path ({args.backend} fp32) | ms per 2048x1024 frame | labels = native "
        f"({args.backend}) | "
        "labels = native torch fp32 | pixel accuracy |"
    )
    print("|---|---|---|---|---|")
    for name in engines:
        same = 1.0 if name == "native" else figures["agreement_with_native_same_backend"]
        torch_same = float(np.mean(labels[name] == labels["torch"]))
        print(
            f"| {name} | {times[name]:.1f} | {same:.4%} | {torch_same:.4%} | "
            f"{figures['pixel_accuracy'][name]:.2%} |"
        )
    trip = figures["round_trip"]
    equal = [field for field, ok in trip["fields_equal"].items() if ok]
    print(
        f"\n(b) video-seg-export -> video-seg-import --onnx (no flags): fields equal "
        f"{all(trip['fields_equal'].values())} ({', '.join(equal)}), "
        f"labels = native on {trip['agreement_with_native_same_backend']:.4%} of the pixels"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        report = {"command": command, "machine": machine_description(), **figures}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
