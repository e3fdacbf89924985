"""video-seg-make-bag: frames (image folder or video file) -> a rosbag2 that ``ros2 bag play``
accepts.

Examples::

    video-seg-make-bag ../shared/data/cityscapes_sequences -o bags/cityscapes   # 17 Hz, mcap
    video-seg-make-bag ../shared/data/camvid/val -o bags/camvid --rate 15 --storage sqlite3
    video-seg-make-bag drive.mp4 -o bags/drive --size 1024x512 --compressed --camera-info

No ROS install is needed (the bag is written with the ``rosbags`` package). Each message's header
stamp equals its receive time in the bag, starting at ``--start-time`` and spaced ``1/rate``
apart; a new sequence starts ``--sequence-gap`` seconds after the previous one ended, so a
subscriber sees the cut as a jump in time. The file each frame came from is recorded in
metadata.yaml (custom_data ``video_seg_ros.frames``) so replays can be scored against labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from video_seg_ros.bags import CITYSCAPES_RATE_HZ, STORAGES, BagError, verify_bag, write_bag
from video_seg_ros.streams import open_stream
from video_seg_ros.tools.arguments import (
    add_deprecated_alias,
    add_limit_argument,
    add_output_argument,
    add_quiet_argument,
    fail,
    int_range,
    parse_arguments,
    parse_size,
    positive_float,
)

PROG = "video-seg-make-bag"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        epilog="Writes into a hidden temporary folder and renames it on success: an error or "
        "Ctrl-C leaves no half-written bag.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input",
        type=Path,
        help="a folder of frames (Cityscapes leftImg8bit_sequence layout with several "
        "sequences, or any folder of sorted images such as CamVid) or a video file",
    )
    add_output_argument(
        parser, "bag folder to create (must not exist unless --overwrite)", required=True
    )
    parser.add_argument(
        "--topic",
        default="/camera/image_raw",
        help="image topic (default /camera/image_raw; '/compressed' is appended "
        "with --compressed, as image_transport names it)",
    )
    parser.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="frames per second of the stamps (default: the video's own rate, else "
        "17 Hz, the Cityscapes camera rate)",
    )
    parser.add_argument(
        "--encoding",
        choices=("rgb8", "bgr8"),
        default="rgb8",
        help="pixel layout of raw Image messages (default rgb8)",
    )
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="store sensor_msgs/CompressedImage (JPEG) instead of raw Image messages",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int_range(1, 100),
        default=95,
        help="JPEG quality 1-100 for --compressed (default 95)",
    )
    parser.add_argument(
        "--camera-info",
        nargs="?",
        const="uncalibrated",
        default=None,
        metavar="YAML",
        help="also write sensor_msgs/CameraInfo on <namespace>/camera_info with the "
        "same stamps: from a camera_calibration YAML (scaled to the output size), "
        "or all-zero intrinsics (uncalibrated) when no file is given",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        metavar="WxH",
        help="resize every frame to W x H pixels (area interpolation), e.g. 1024x512",
    )
    add_deprecated_alias(parser, "--resize", "--size", "size", type=parse_size, metavar="WxH")
    parser.add_argument(
        "--storage",
        choices=sorted(STORAGES),
        default="mcap",
        help="rosbag2 storage plugin (default mcap; sqlite3 for older tooling)",
    )
    parser.add_argument(
        "--sequence",
        action="append",
        default=None,
        metavar="NAME",
        help="only this sequence (e.g. aachen_000001); repeat for several",
    )
    add_limit_argument(parser, "at most N frames (the first ones)", old=("--max-frames",))
    parser.add_argument(
        "--start-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stamp of the first frame in seconds since the epoch (default: now)",
    )
    parser.add_argument(
        "--sequence-gap",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="extra time between the last frame of a sequence and the first of the "
        "next (default 1.0)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="read the bag back and compare every image with its source frame "
        "(pixel for pixel for raw images; the largest difference for JPEG); "
        "exit status 1 when a raw frame differs",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    add_quiet_argument(parser, "no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    if args.output.exists() and not args.overwrite:
        return fail(
            PROG, f"{args.output} exists already; choose another -o/--output or pass --overwrite"
        )
    try:
        source = open_stream(args.input, sequences=args.sequence, limit=args.limit)
        rate = args.rate or source.native_rate or CITYSCAPES_RATE_HZ
        summary = write_bag(
            source,
            args.output,
            topic=args.topic,
            frame_id=args.frame_id,
            rate=rate,
            encoding=args.encoding,
            compressed=args.compressed,
            jpeg_quality=args.jpeg_quality,
            resize=args.size,
            camera_info=args.camera_info,
            storage=args.storage,
            start_time_ns=None if args.start_time is None else round(args.start_time * 1e9),
            sequence_gap=args.sequence_gap,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (BagError, ValueError, FileNotFoundError) as error:
        return fail(PROG, error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no bag written", file=sys.stderr)
        return 130
    topics = ", ".join(f"{t} ({n})" for t, n in summary["topics"].items())
    print(
        f"wrote {summary['bag']} [{summary['storage']}]: {summary['frames']} frames "
        f"{summary['width']}x{summary['height']} at {summary['rate_hz']:g} Hz from "
        f"{len(summary['sequences'])} sequence(s); topics: {topics}"
    )
    if args.verify:
        check = verify_bag(
            args.output,
            open_stream(args.input, sequences=args.sequence, limit=args.limit),
            next(iter(summary["topics"])),
            args.size,
            progress=not args.quiet,
        )
        print(
            f"verify: {check['frames_identical']}/{check['frames_compared']} frames identical "
            f"pixel for pixel, max |diff| {check['max_abs_diff']}, extra messages "
            f"{check['extra_messages']}, stamps monotonic and equal to receive times: "
            f"{check['stamps_monotonic_and_equal_receive_time']}"
        )
        exact = check["frames_identical"] == check["frames_compared"] == summary["frames"]
        if not check["stamps_monotonic_and_equal_receive_time"] or (
            not args.compressed and not exact
        ):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
