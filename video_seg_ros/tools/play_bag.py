"""video-seg-play: publish a rosbag2's messages into ROS topics with rclpy, paced by their
timestamps.

For machines without ``ros2 bag play`` (e.g. a pip-installed rclpy). Examples::

    video-seg-play bags/cityscapes                       # all topics, real time
    video-seg-play bags/cityscapes --speed 0.3 --loop    # 30 % speed (17 Hz -> 5 Hz), forever
    video-seg-play bags/cityscapes --rate 5              # the image topic at 5 Hz
    video-seg-play bags/cityscapes --start 2.0 --qos sensor_data --restamp

The stored CDR bytes are published unchanged (no decode/encode per message), so a 2048x1024 frame
costs about as much as ``ros2 bag play``. With ``--restamp`` the header stamp of every message that
has one is replaced by the publish time, written straight into the serialized bytes.

Use the same ``ROS_DOMAIN_ID``/``RMW_IMPLEMENTATION`` (and, for full-size images, the Fast DDS
profile config/fastdds_large_images.xml) as the subscribers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from video_seg_ros.bags import BagError, bag_info, image_topics, topic_rate_hz
from video_seg_ros.processes import install_stop_handlers
from video_seg_ros.tools.arguments import (
    add_quiet_argument,
    fail,
    parse_arguments,
    positive_float,
    positive_int,
    usage_error,
)

PROG = "video-seg-play"


def parse_remap(items: list[str] | None) -> dict[str, str]:
    remap = {}
    for item in items or []:
        if ":=" not in item:
            raise ValueError(f"--remap takes FROM:=TO, got {item!r}")
        source, target = item.split(":=", 1)
        remap[source] = target
    return remap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bag", type=Path, help="rosbag2 folder (metadata.yaml + .mcap or .db3)")
    parser.add_argument(
        "--topic",
        action="append",
        default=None,
        metavar="TOPIC",
        help="play only this topic; repeat for several (default: all topics)",
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=positive_float,
        default=None,
        help="speed factor: 1.0 = as recorded, 0.5 = half speed (default 1.0)",
    )
    pace.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        metavar="HZ",
        help="play the image topic (or the first played topic) at this many messages "
        "per second, i.e. speed = HZ / the bag's median rate; other topics keep "
        "their timing relative to it. Before this release --rate was the speed "
        "factor, now --speed",
    )
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument(
        "--start",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="skip this many seconds from the start of the bag (default 0)",
    )
    parser.add_argument(
        "--qos",
        choices=("reliable", "sensor_data"),
        default="reliable",
        help="publisher QoS: reliable (default, like ros2 bag play; no frame is lost "
        "by a reliable subscriber) or sensor_data (best effort, depth 5)",
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=10,
        help="history depth of reliable publishers (default 10)",
    )
    parser.add_argument(
        "--restamp",
        action="store_true",
        help="set header stamps to the publish time (for subscribers that drop "
        "old stamps); the default keeps the recorded stamps, like ros2 bag play",
    )
    parser.add_argument(
        "--remap",
        action="append",
        default=None,
        metavar="FROM:=TO",
        help="publish bag topic FROM as TO, e.g. /camera/image_raw:=/cam0/image_raw",
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before playing, wait up to this long until every topic has a subscriber "
        "(default 0: start at once)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long after creating the publishers, so subscribers can match (default 0)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        metavar="JSON",
        help="write a JSON report: counts, and per message its topic, bag time, "
        "header stamp and publish time (ns), e.g. to measure end-to-end latency",
    )
    parser.add_argument("--node-name", default="video_seg_player", help="rclpy node name")
    add_quiet_argument(parser, "print only errors and warnings")
    return parser


def playback_speed(
    bag: Path, topics: list[str] | None, rate_hz: float | None, speed: float | None
) -> float:
    """The speed factor for ``--speed`` or ``--rate HZ`` (image topic's median rate -> HZ)."""
    if rate_hz is None:
        return 1.0 if speed is None else speed
    available = list(bag_info(bag)["topics"])
    played = topics or available
    paced = next((t for t in image_topics(bag) if t in played), played[0])
    native = topic_rate_hz(bag, paced)
    if native is None:
        raise BagError(
            f"cannot tell the rate of {paced} in {bag} (fewer than two messages); use --speed"
        )
    return rate_hz / native


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from video_seg_ros.ros.dds import use_large_image_profile
    from video_seg_ros.ros.player import BagPlayer

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parse_arguments(parser, remove_ros_args([PROG, *argv])[1:])
    try:
        remap = parse_remap(args.remap)
    except ValueError as error:
        return usage_error(parser, str(error))
    if args.rate is not None:
        print(
            f"{PROG}: note: --rate is in Hz since this release (messages per second); the speed "
            "factor it used to be is --speed",
            file=sys.stderr,
            flush=True,
        )
    try:
        speed = playback_speed(args.bag, args.topic, args.rate, args.speed)
    except BagError as error:
        return fail(PROG, error)

    use_large_image_profile()  # full-size frames need the large shared-memory segment
    # Python's own handlers, not rclpy's: Ctrl-C and SIGTERM (launch, the demo) stop playback
    # between messages and the summary and --log are still written. Set explicitly: a process
    # started in the background by a shell inherits SIGINT as ignored.
    rclpy.init(args=[PROG, *argv], signal_handler_options=SignalHandlerOptions.NO)
    install_stop_handlers()
    node = rclpy.create_node(args.node_name)
    player, code = None, 0
    try:
        player = BagPlayer(
            node,
            args.bag,
            args.topic,
            speed,
            args.start,
            args.qos,
            args.depth,
            args.restamp,
            remap,
            keep_log=args.log is not None,
        )
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(
            args.wait_for_subscribers
        ):
            print(
                f"{PROG}: warning: no subscriber on {', '.join(player.publishers)} after "
                f"{args.wait_for_subscribers:g} s; playing anyway",
                file=sys.stderr,
                flush=True,
            )
        if args.delay > 0:
            time.sleep(args.delay)
        count = sum(player.info["topics"][t]["count"] for t in player.topics)
        if not args.quiet:
            print(
                f"playing {args.bag}: {count} messages, "
                f"{player.info['duration_s']:.2f} s at speed {speed:g}",
                flush=True,
            )
        player.play(args.loop)
    except BagError as error:
        code = fail(PROG, error)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if player is not None:
            summary = player.stats.summary()
            if not args.quiet:
                print(
                    "published "
                    + ", ".join(f"{t}: {n}" for t, n in summary["published"].items())
                    + f" in {summary['wall_s']:.2f} s (max {summary['max_late_ms']:.0f} ms late)",
                    flush=True,
                )
            if args.log is not None:
                args.log.parent.mkdir(parents=True, exist_ok=True)
                args.log.write_text(
                    json.dumps({**summary, "speed": speed, "messages": player.stats.log})
                )
            player.flush()  # reliable subscribers get the last samples before the node goes
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
