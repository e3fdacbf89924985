"""video-seg-make-bag: frames (image folder or video file) -> a rosbag2 that ``ros2 bag play`` accepts.

Examples::

    video-seg-make-bag ../shared/data/cityscapes_sequences -o bags/cityscapes   # 17 Hz, mcap
    video-seg-make-bag ../shared/data/camvid/val -o bags/camvid --rate 15 --storage sqlite3
    video-seg-make-bag drive.mp4 -o bags/drive --resize 1024x512 --compressed --camera-info

No ROS install is needed (the bag is written with the ``rosbags`` package). Each message's header
stamp equals its receive time in the bag, starting at ``--start-time`` and spaced ``1/rate``
apart; a new sequence starts ``--sequence-gap`` seconds after the previous one ended, so a
subscriber sees the cut as a jump in time. The file each frame came from is recorded in
metadata.yaml (custom_data ``video_seg_ros.frames``) so replays can be scored against labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from video_seg_ros.bags import (FRAMES_KEY, STORAGES, BagError, BagWriter, CameraCalibration,
                                compressed_message, image_message, read_images)
from video_seg_ros.frames import IMAGE_EXTENSIONS, list_frames, read_rgb
from video_seg_ros.tools.arguments import parse_size

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
CITYSCAPES_RATE_HZ = 17.0


@dataclass
class SourceFrame:
    """One input frame: RGB pixels and where they came from."""

    rgb: np.ndarray
    sequence: str
    key: str


@dataclass
class FrameSource:
    """Frames to write, their count (for the progress bar) and a natural rate if the input has one."""

    frames: Iterator[SourceFrame]
    count: int
    native_rate: float | None
    description: str


def folder_source(root: Path, sequences: list[str] | None, max_frames: int | None) -> FrameSource:
    records = list_frames(root)
    if sequences:
        unknown = set(sequences) - {r.sequence for r in records}
        if unknown:
            raise BagError(f"no sequence named {', '.join(sorted(unknown))} under {root}; it has "
                           f"{', '.join(sorted({r.sequence for r in records}))}")
        records = [r for r in records if r.sequence in sequences]
    if max_frames:
        records = records[:max_frames]
    if not records:
        raise BagError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; pass a folder "
                       "of frames (Cityscapes leftImg8bit_sequence layout or any sorted image folder) "
                       "or a video file")
    names = sorted({r.sequence for r in records})
    return FrameSource((SourceFrame(read_rgb(r.path), r.sequence, r.key) for r in records),
                       len(records), None, f"{len(records)} frames in {len(names)} sequence(s) from {root}")


def video_source(path: Path, max_frames: int | None) -> FrameSource:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BagError(f"OpenCV cannot open video {path}; check the file or convert it to mp4 (H.264)")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise BagError(f"video {path} has no readable frames")
    if max_frames:
        count = min(count, max_frames) if count > 0 else max_frames

    def frames() -> Iterator[SourceFrame]:
        index, bgr = 0, first
        try:
            while bgr is not None and (not max_frames or index < max_frames):
                yield SourceFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path.stem, f"{path.stem}_{index:06d}")
                index += 1
                ok, bgr = capture.read()
                if not ok:
                    bgr = None
        finally:
            capture.release()

    return FrameSource(frames(), max(count, 1), fps if fps > 0 else None, f"video {path}")


def open_source(path: Path, sequences: list[str] | None = None, max_frames: int | None = None) -> FrameSource:
    """Folder -> its frames (via the project's frame reader); video file -> its decoded frames."""
    if path.is_dir():
        return folder_source(path, sequences, max_frames)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return video_source(path, max_frames)
    if path.is_file():
        raise BagError(f"{path} is neither a folder of images nor a video ({', '.join(VIDEO_EXTENSIONS)})")
    raise BagError(f"input {path} does not exist")


def camera_info_topic(image_topic: str) -> str:
    """/camera/image_raw -> /camera/camera_info (the image_transport convention)."""
    namespace = image_topic.rsplit("/", 1)[0]
    return f"{namespace}/camera_info"


def _resized(pixels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``pixels`` resized to ``size`` (W, H) with area interpolation; unchanged if None or already that size."""
    if size is not None and (pixels.shape[1], pixels.shape[0]) != size:
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return pixels


def write_bag(source: FrameSource, output: Path, *, topic: str = "/camera/image_raw",
              frame_id: str = "camera", rate: float = CITYSCAPES_RATE_HZ, encoding: str = "rgb8",
              compressed: bool = False, jpeg_quality: int = 95, resize: tuple[int, int] | None = None,
              camera_info: str | None = None, storage: str = "mcap", start_time_ns: int | None = None,
              sequence_gap: float = 1.0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``source`` into a new bag at ``output``; returns a summary dict (topics, counts, stamps)."""
    if rate <= 0:
        raise BagError(f"--rate must be positive, got {rate}")
    if encoding not in ("rgb8", "bgr8"):
        raise BagError(f"--encoding must be rgb8 or bgr8, got {encoding!r}")
    period_ns = round(1e9 / rate)
    stamp = time.time_ns() if start_time_ns is None else int(start_time_ns)
    image_topic = f"{topic}/compressed" if compressed else topic
    info_topic = camera_info_topic(topic) if camera_info else None
    calibration: CameraCalibration | None = None
    frames_meta, previous_sequence = [], None
    size = None
    with BagWriter(output, storage=storage, overwrite=overwrite) as bag:
        for frame in tqdm(source.frames, total=source.count, unit="frame", desc="make-bag",
                          disable=not progress):
            pixels = _resized(frame.rgb, resize)
            if size is None:
                size = (pixels.shape[1], pixels.shape[0])
            if previous_sequence is not None:
                stamp += period_ns + (round(sequence_gap * 1e9) if frame.sequence != previous_sequence else 0)
            previous_sequence = frame.sequence
            if compressed:
                message = compressed_message(pixels, "rgb", stamp, frame_id, jpeg_quality)
            else:
                ordered = pixels if encoding == "rgb8" else np.ascontiguousarray(pixels[..., ::-1])
                message = image_message(ordered, encoding, stamp, frame_id)
            bag.write(image_topic, message, stamp)
            if info_topic:
                if calibration is None:
                    calibration = _calibration(camera_info, *size)
                bag.write(info_topic, calibration.message(stamp, frame_id), stamp)
            frames_meta.append({"stamp_ns": stamp, "sequence": frame.sequence, "key": frame.key})
        if not frames_meta:
            raise BagError(f"{source.description}: no frames could be read")
        bag.set_custom_data(FRAMES_KEY, frames_meta)
        counts = dict(bag.counts)
    return {"bag": str(output), "storage": storage, "topics": counts, "frames": len(frames_meta),
            "width": size[0], "height": size[1], "rate_hz": rate,
            "start_ns": frames_meta[0]["stamp_ns"], "end_ns": frames_meta[-1]["stamp_ns"],
            "sequences": sorted({f["sequence"] for f in frames_meta})}


def verify_bag(bag: Path, source: FrameSource, topic: str, resize: tuple[int, int] | None = None,
               progress: bool = True) -> dict:
    """Read ``bag`` back and compare every image with its source frame.

    Returns frames compared, frames identical pixel for pixel, the largest absolute difference and
    whether stamps equal receive times and increase strictly (JPEG frames are never identical;
    their largest difference shows the compression loss).
    """
    compared = identical = 0
    max_diff, stamps_ok, previous = 0, True, None
    images = read_images(bag, topic)
    for frame in tqdm(source.frames, total=source.count, unit="frame", desc="verify", disable=not progress):
        expected = _resized(frame.rgb, resize)
        image = next(images, None)
        if image is None:
            break
        got = image.rgb()
        compared += 1
        if got.shape != expected.shape:
            max_diff = 255
            continue
        diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
        identical += diff == 0
        max_diff = max(max_diff, diff)
        stamps_ok &= image.stamp_ns == image.timestamp_ns and (previous is None or image.stamp_ns > previous)
        previous = image.stamp_ns
    extra = sum(1 for _ in images)
    return {"frames_compared": compared, "frames_identical": identical, "max_abs_diff": max_diff,
            "extra_messages": extra, "stamps_monotonic_and_equal_receive_time": bool(stamps_ok)}


def _calibration(camera_info: str, width: int, height: int) -> CameraCalibration:
    if camera_info == "uncalibrated":
        return CameraCalibration.uncalibrated(width, height)
    calibration = CameraCalibration.from_yaml(camera_info)
    if (calibration.width, calibration.height) != (width, height):
        calibration = calibration.scaled(width, height)
    return calibration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-seg-make-bag", description=__doc__,
        epilog="Writes into a hidden temporary folder and renames it on success: an error or Ctrl-C "
               "leaves no half-written bag.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path,
                        help="a folder of frames (Cityscapes leftImg8bit_sequence layout with several "
                             "sequences, or any folder of sorted images such as CamVid) or a video file")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="bag folder to create (must not exist unless --overwrite)")
    parser.add_argument("--topic", default="/camera/image_raw",
                        help="image topic (default /camera/image_raw; '/compressed' is appended "
                             "with --compressed, as image_transport names it)")
    parser.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames per second of the stamps (default: the video's own rate, else "
                             "17 Hz, the Cityscapes camera rate)")
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8",
                        help="pixel layout of raw Image messages (default rgb8)")
    parser.add_argument("--compressed", action="store_true",
                        help="store sensor_msgs/CompressedImage (JPEG) instead of raw Image messages")
    parser.add_argument("--jpeg-quality", type=int, default=95,
                        help="JPEG quality 1-100 for --compressed (default 95)")
    parser.add_argument("--camera-info", nargs="?", const="uncalibrated", default=None, metavar="YAML",
                        help="also write sensor_msgs/CameraInfo on <namespace>/camera_info with the "
                             "same stamps: from a camera_calibration YAML (scaled to the output size), "
                             "or all-zero intrinsics (uncalibrated) when no file is given")
    parser.add_argument("--resize", type=parse_size, default=None, metavar="WxH",
                        help="resize every frame to W x H pixels (area interpolation), e.g. 1024x512")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap",
                        help="rosbag2 storage plugin (default mcap; sqlite3 for older tooling)")
    parser.add_argument("--sequence", action="append", default=None, metavar="NAME",
                        help="only this sequence (e.g. aachen_000001); repeat for several")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--start-time", type=float, default=None, metavar="SECONDS",
                        help="stamp of the first frame in seconds since the epoch (default: now)")
    parser.add_argument("--sequence-gap", type=float, default=1.0, metavar="SECONDS",
                        help="extra time between the last frame of a sequence and the first of the "
                             "next (default 1.0)")
    parser.add_argument("--verify", action="store_true",
                        help="read the bag back and compare every image with its source frame "
                             "(pixel for pixel for raw images; the largest difference for JPEG); "
                             "exit status 1 when a raw frame differs")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 1 <= args.jpeg_quality <= 100:
            raise BagError(f"--jpeg-quality must be 1..100, got {args.jpeg_quality}")
        source = open_source(args.input, args.sequence, args.max_frames)
        rate = args.rate or source.native_rate or CITYSCAPES_RATE_HZ
        summary = write_bag(
            source, args.output, topic=args.topic, frame_id=args.frame_id, rate=rate,
            encoding=args.encoding, compressed=args.compressed, jpeg_quality=args.jpeg_quality,
            resize=args.resize, camera_info=args.camera_info, storage=args.storage,
            start_time_ns=None if args.start_time is None else round(args.start_time * 1e9),
            sequence_gap=args.sequence_gap, overwrite=args.overwrite, progress=not args.quiet)
    except (BagError, ValueError, FileNotFoundError) as error:
        print(f"video-seg-make-bag: error: {error}", file=sys.stderr)
        return 2
    topics = ", ".join(f"{t} ({n})" for t, n in summary["topics"].items())
    print(f"wrote {summary['bag']} [{summary['storage']}]: {summary['frames']} frames "
          f"{summary['width']}x{summary['height']} at {summary['rate_hz']:g} Hz from "
          f"{len(summary['sequences'])} sequence(s); topics: {topics}")
    if args.verify:
        check = verify_bag(args.output, open_source(args.input, args.sequence, args.max_frames),
                           next(iter(summary["topics"])), args.resize, progress=not args.quiet)
        print(f"verify: {check['frames_identical']}/{check['frames_compared']} frames identical pixel "
              f"for pixel, max |diff| {check['max_abs_diff']}, extra messages {check['extra_messages']}, "
              f"stamps monotonic and equal to receive times: {check['stamps_monotonic_and_equal_receive_time']}")
        exact = check["frames_identical"] == check["frames_compared"] == summary["frames"]
        if not check["stamps_monotonic_and_equal_receive_time"] or (not args.compressed and not exact):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
