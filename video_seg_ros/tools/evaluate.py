"""``video-seg-eval``: accuracy (mIoU) and temporal consistency (TC) of a checkpoint on a folder.

Argument parsing and printing only; the frames come from :mod:`video_seg_ros.streams`, the figures
from :mod:`video_seg_ros.evaluation` and the report from :mod:`video_seg_ros.evaluation_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from video_seg_ros.checkpoint import CheckpointError
from video_seg_ros.engine import DeviceError, SegmentationEngine
from video_seg_ros.evaluation import EvaluationOptions
from video_seg_ros.evaluation_report import evaluate_folder as _evaluate_folder
from video_seg_ros.evaluation_report import format_markdown
from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.labels import LABEL_FORMATS
from video_seg_ros.runtime import EVALUATION_PRECISION
from video_seg_ros.streams import FolderStream, open_stream
from video_seg_ros.tools.arguments import (
    add_calibration_arguments,
    add_engine_arguments,
    add_limit_argument,
    add_output_argument,
    add_quiet_argument,
    calibration_from_arguments,
    command_line,
    fail,
    non_negative_int,
    parse_arguments,
    positive_int,
    usage_error,
)
from video_seg_ros.tools.arguments import add_temporal_arguments, temporal_from_arguments

PROG = "video-seg-eval"


def evaluate_folder(
    checkpoint,
    images,
    labels=None,
    label_format="trainids",
    device="auto",
    upsample="auto",
    limit=None,
    flow_preset="ultrafast",
    flow_width=1024,
    occlusion=False,
    max_frame_gap=1,
    tc=True,
    save_overlays=None,
    save_labels=None,
    progress=True,
    command=None,
) -> dict:
    """Deprecated (one release): use :func:`video_seg_ros.evaluation_report.evaluate_folder`."""
    import warnings

    warnings.warn(
        "video_seg_ros.tools.evaluate.evaluate_folder is deprecated; use "
        "video_seg_ros.evaluation_report.evaluate_folder with streams.FolderStream and "
        "EvaluationOptions",
        DeprecationWarning,
        stacklevel=2,
    )
    options = EvaluationOptions(
        tc=tc,
        max_frame_gap=max_frame_gap,
        flow_preset=flow_preset,
        flow_width=flow_width,
        occlusion=occlusion,
    )
    folder = FolderStream(images, labels, label_format, limit)
    engine = (
        checkpoint
        if isinstance(checkpoint, SegmentationEngine)
        else SegmentationEngine(checkpoint, device=device, upsample=upsample)
    )
    return _evaluate_folder(
        engine,
        folder,
        options,
        save_overlays=save_overlays,
        save_labels=save_labels,
        progress=progress,
        command=command,
        checkpoint=None
        if checkpoint is None or isinstance(checkpoint, SegmentationEngine)
        else str(checkpoint),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a segmentation checkpoint on a folder of frames: accuracy (mIoU, "
        "per-class IoU, pixel accuracy) against optional label images and ETC temporal "
        "consistency (TC: mIoU between each prediction and the next one warped back with "
        "DIS optical flow, nearest-neighbour label warp) over consecutive frames. Prints "
        "a Markdown summary (percentages) and writes a JSON report (fractions 0..1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        default="default",
        help="checkpoint file in the project format (see video-seg-import); "
        "'default' = the model embedded in the package",
    )
    parser.add_argument(
        "--images",
        required=True,
        type=Path,
        help="folder of frames, searched recursively; sorted file names give the "
        "temporal order, file-name prefixes the sequences (Cityscapes "
        "<city>_<seq>_<frame>_leftImg8bit, CamVid <seq>_<frame>, name_<number>). "
        "A rosbag2 folder (its one image topic, or --topic) or a video file "
        "works too",
    )
    parser.add_argument(
        "--topic", default=None, help="image topic when --images is a rosbag2 folder with several"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="folder of label images matched to frames by name (e.g. Cityscapes "
        "gtFine/); frames without a label are still used for TC. Single-channel "
        "8/16-bit PNGs of ids and palette PNGs (read as their indices) are accepted",
    )
    parser.add_argument(
        "--label-format",
        choices=LABEL_FORMATS,
        default="trainids",
        help="class encoding of the label images: trainids (0..N-1, 255 ignore), "
        "cityscapes-labelids (official labelIds, mapped to trainIds), camvid "
        "(0..10, 11 = unlabelled), cityscapes-color (*_gtFine_color.png through "
        "the official colour table)",
    )
    add_output_argument(
        parser, "where to write the JSON report", default=Path("eval_report.json"), old=("--out",)
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the printed Markdown summary to this file",
    )
    add_engine_arguments(parser, precision=EVALUATION_PRECISION)
    add_calibration_arguments(parser)
    add_temporal_arguments(parser)
    add_limit_argument(parser, "evaluate at most N frames (the first ones in sorted order)")
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="report and skip frames (or labels) that cannot be decoded instead of "
        "stopping at the first one",
    )
    parser.add_argument(
        "--flow-preset",
        choices=sorted(DIS_PRESETS),
        default="ultrafast",
        help="OpenCV DIS optical-flow preset used for TC",
    )
    parser.add_argument(
        "--flow-width",
        type=non_negative_int,
        default=1024,
        help="compute the flow on frames downscaled to this width (labels are "
        "still warped at full resolution); 0 = full resolution",
    )
    parser.add_argument(
        "--occlusion",
        action="store_true",
        help="leave pixels that fail the forward-backward flow check out of TC",
    )
    parser.add_argument(
        "--max-frame-gap",
        type=positive_int,
        default=1,
        help="largest frame-number step between two frames of a sequence that "
        "still counts as consecutive for TC (CamVid's labelled frames are 30 "
        "apart: pass 30 to measure TC at 1 Hz there)",
    )
    parser.add_argument("--no-tc", action="store_true", help="skip temporal consistency")
    parser.add_argument(
        "--save-overlays",
        type=Path,
        default=None,
        help="write colourised overlays <key>_overlay.png here (labelled frames: "
        "prediction on top, ground truth below)",
    )
    parser.add_argument(
        "--save-labels",
        type=Path,
        default=None,
        help="write the predicted class maps <key>_pred_labelTrainIds.png here "
        "(uint8 ids, 255 = unlabelled)",
    )
    add_quiet_argument(parser, "no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if args.flow_width and args.flow_width < 16:
        return usage_error(parser, "--flow-width must be 0 (full resolution) or at least 16")
    temporal = temporal_from_arguments(parser, args)
    try:
        options = EvaluationOptions(
            tc=not args.no_tc,
            max_frame_gap=args.max_frame_gap,
            flow_preset=args.flow_preset,
            flow_width=args.flow_width or None,
            occlusion=args.occlusion,
        )
        # Folders first: a typo should not cost a model load.
        frames = open_stream(
            args.images,
            args.topic,
            args.labels,
            args.label_format,
            args.limit,
            skip_unreadable=args.skip_unreadable,
        )
        engine = SegmentationEngine(
            args.checkpoint,
            device=args.device,
            upsample=args.upsample,
            backend=args.backend,
            precision=args.precision,
            calibration=calibration_from_arguments(args),
        )
        engine.set_temporal(temporal)
        report = _evaluate_folder(
            engine,
            frames,
            options,
            save_overlays=args.save_overlays,
            save_labels=args.save_labels,
            progress=not args.quiet,
            command=command_line(PROG, argv),
            checkpoint=str(args.checkpoint),
        )
    except ValueError as error:
        message = str(error)
        if "label format" in message:
            message += " (choose it with --label-format)"
        return fail(PROG, message)
    except (CheckpointError, DeviceError, FileNotFoundError, RuntimeError) as error:
        return fail(PROG, error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    summary = format_markdown(report)
    print(summary, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {args.output}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
