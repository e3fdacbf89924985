"""video-seg-record: record video_seg_node's outputs to a rosbag2 or to PNG files, for offline
scoring.

Examples::

    video-seg-record -o runs/replay_out --limit 90               # /video_seg_node/labels, 90 msgs
    video-seg-record --png runs/pngs --color --consistency --timeout 60
    video-seg-record --node /cam0/video_seg_node -o runs/cam0 --overlay

Each topic's type and QoS reliability are taken from its publisher once it appears, and messages
are received as serialized bytes: into a bag they go unchanged (receive time = bag time, as
``ros2 bag record`` does), as PNGs they are decoded once and written as ``<topic>/<stamp_ns>.png``
(labels as mono8 class ids, colour views as RGB). Non-image topics (``~/consistency``) go to
``<topic>.jsonl`` in PNG mode. ``index.json`` (PNG mode) or ``--report`` lists every message's
header stamp and receive time, so latency and losses can be computed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from video_seg_ros.bags import STORAGES, BagError
from video_seg_ros.processes import install_stop_handlers
from video_seg_ros.tools.arguments import (
    add_limit_argument,
    add_output_argument,
    add_quiet_argument,
    fail,
    parse_arguments,
    positive_int,
    usage_error,
)

PROG = "video-seg-record"
#: output name -> topic suffix under the node's name
NODE_OUTPUTS = ("labels", "color", "overlay", "confidence", "consistency")


def output_topics(node: str, names: list[str]) -> list[str]:
    """'/video_seg_node', ['labels', 'color'] -> ['/video_seg_node/labels',
    '/video_seg_node/color']."""
    base = "/" + node.strip("/")
    return [f"{base}/{name}" for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--node",
        default="video_seg_node",
        help="the segmentation node's name with its namespace, e.g. /cam0/video_seg_node "
        "(default video_seg_node); its outputs are <node>/labels etc.",
    )
    parser.add_argument("--no-labels", action="store_true", help="do not record <node>/labels")
    for name in NODE_OUTPUTS[1:]:
        parser.add_argument(f"--{name}", action="store_true", help=f"also record <node>/{name}")
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="TOPIC",
        help="also record this topic (any type); repeat for several",
    )
    add_output_argument(
        parser,
        "write a rosbag2 folder (created on success; nothing is left if no message arrived)",
        metavar="DIR",
        old=("--bag",),
    )
    parser.add_argument(
        "--storage",
        choices=sorted(STORAGES),
        default="mcap",
        help="bag storage plugin (default mcap)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="DIR",
        help="write images as <DIR>/<topic>/<stamp_ns>.png, other messages as "
        "<DIR>/<topic>.jsonl, and <DIR>/index.json",
    )
    add_limit_argument(
        parser,
        "stop after N messages on the first recorded topic (default: no limit)",
        old=("--count",),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long in total (0 = no limit; Ctrl-C stops too)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop when no message arrived for this long after the first one (0 = never)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the topics to be advertised (default 30)",
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=100,
        help="subscription history depth (default 100: a slow disk loses nothing)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="write counts and every message's stamp and receive time (ns) as JSON",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="create this file once every topic is subscribed and matched with its "
        "publisher, so a script can start the input only then",
    )
    parser.add_argument(
        "--progress-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the number of messages recorded on the first topic in this file "
        "(rewritten on every message), for a script's progress bar",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing -o / --png output"
    )
    add_quiet_argument(parser, "print only the final counts, errors and warnings")
    return parser


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args

    from video_seg_ros.ros.dds import use_large_image_profile
    from video_seg_ros.ros.recorder import Recorder, RecorderNode, StopConditions

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parse_arguments(parser, remove_ros_args([PROG, *argv])[1:])
    names = [] if args.no_labels else ["labels"]
    names += [n for n in NODE_OUTPUTS[1:] if getattr(args, n)]
    topics = output_topics(args.node, names) + list(args.topic)
    if not topics:
        return usage_error(
            parser, "no topic to record (--no-labels without --color/... or --topic)"
        )
    if args.output is None and args.png is None:
        return usage_error(
            parser, "nothing to write: pass -o/--output DIR (a bag) and/or --png DIR"
        )
    try:
        recorder = Recorder(args.output, args.png, args.storage, args.overwrite)
    except BagError as error:
        return fail(PROG, error)

    use_large_image_profile()  # full-size frames need the large shared-memory segment
    # Python's own handlers (set explicitly: a shell's background job inherits SIGINT as ignored),
    # so Ctrl-C / SIGTERM end the recording and the bag is still closed properly.
    rclpy.init(args=[PROG, *argv], signal_handler_options=SignalHandlerOptions.NO)
    install_stop_handlers()
    started = time.monotonic()

    def log(line: str) -> None:
        if line.startswith("warning:"):
            print(f"{PROG}: {line}", file=sys.stderr, flush=True)
        elif not args.quiet:
            print(line, flush=True)

    node = RecorderNode(
        recorder,
        topics,
        StopConditions(args.limit or 0, args.timeout, args.idle_timeout),
        wait_s=args.wait,
        depth=args.depth,
        ready_file=args.ready_file,
        progress_file=args.progress_file,
        log=log,
    )
    code, ok = 0, True
    try:
        rclpy.spin_until_future_complete(node, node.done)
        node.done.result()  # raises what stopped the recording, if it was an error
    except BagError as error:
        code, ok = fail(PROG, error), False
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        recorder.close(ok)
    report = recorder.report()
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report))
    counts = ", ".join(f"{t}: {r['count']}" for t, r in report["topics"].items()) or "nothing"
    print(f"recorded {counts} in {time.monotonic() - started:.1f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
