"""The command-line vocabulary every console script shares (documented once, in the README).

- ``-o/--output`` names what a command writes; ``--limit N`` means "at most N frames (messages)";
  ``--rate`` is always in Hz (a playback speed factor is ``--speed``); ``--quiet`` turns off
  progress bars and chatter; ``--size WxH`` gives every image size.
- Exit status: 0 success, 2 usage error (argparse, or :func:`usage_error`), 1 run-time failure
  (:func:`fail`), 130 interrupted.
- Reports record the command line as :func:`command_line` writes it.
- A renamed option keeps its old spelling for one release through :func:`add_deprecated_alias`,
  which prints one deprecation line on stderr when it is used.
"""

from __future__ import annotations

import argparse
import shlex
import sys

#: Exit status of a run-time failure (bad input file, missing model, a process that failed).
EXIT_FAILURE = 1
#: Exit status of a usage error (argparse uses it too).
EXIT_USAGE = 2
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


def parse_size(text: str, minimum: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """'1024x512' -> (1024, 512); argparse type with a clear message on bad input."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 1024x512 (WIDTHxHEIGHT), got {text!r}"
        ) from None
    if width < minimum[0] or height < minimum[1]:
        raise argparse.ArgumentTypeError(
            f"size {text} is too small; use at least {minimum[0]}x{minimum[1]}"
        )
    return width, height


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def int_range(low: int, high: int):
    """argparse type: an integer in low..high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, *, flag: bool = False, **kwargs
) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same ``dest``) for one release.

    Using it prints ``<prog>: warning: <old> is deprecated; use <new>`` on stderr. ``flag`` for
    options without a value (store_true); other keyword arguments (type, metavar, nargs, const)
    as for the new option.
    """

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(
                f"{parser.prog}: warning: {option_string} is deprecated and will be removed in "
                "the "
                f"next release; use {new}",
                file=sys.stderr,
            )
            setattr(namespace, self.dest, True if flag else values)

    if flag:
        kwargs["nargs"] = 0
    parser.add_argument(
        old, dest=dest, action=Alias, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs
    )


def add_output_argument(
    parser: argparse.ArgumentParser,
    help: str,
    *,
    required: bool = False,
    default=None,
    type=None,
    metavar: str = "PATH",
    old: tuple[str, ...] = (),
) -> None:
    """``-o/--output`` (dest ``output``), plus deprecated old spellings such as ``--out``."""
    from pathlib import Path

    type = type or Path
    parser.add_argument(
        "-o", "--output", type=type, default=default, required=False, metavar=metavar, help=help
    )
    for spelling in old:
        add_deprecated_alias(parser, spelling, "-o/--output", "output", type=type, metavar=metavar)
    if required:
        parser.set_defaults(_required_output=True)


def check_required_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage error when a required ``-o/--output`` (given under any spelling) is missing.

    argparse's own ``required`` cannot count a deprecated alias, hence this check after parsing.
    """
    if getattr(args, "_required_output", False) and args.output is None:
        parser.error("the following arguments are required: -o/--output")


def add_quiet_argument(
    parser: argparse.ArgumentParser,
    help: str = "no progress bars or progress lines",
    old: tuple[str, ...] = (),
) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=help)
    for spelling in old:
        add_deprecated_alias(parser, spelling, "--quiet", "quiet", flag=True)


def add_limit_argument(
    parser: argparse.ArgumentParser, help: str, *, default=None, old: tuple[str, ...] = ()
) -> None:
    parser.add_argument("--limit", type=positive_int, default=default, metavar="N", help=help)
    for spelling in old:
        add_deprecated_alias(parser, spelling, "--limit", "limit", type=positive_int, metavar="N")


def add_engine_arguments(
    parser: argparse.ArgumentParser, what: str = "inference", precision: str = "auto"
) -> None:
    """``--device``, ``--backend``, ``--precision`` and ``--upsample`` as the engine takes them.

    Tools that report figures pass ``precision=runtime.EVALUATION_PRECISION`` (fp32: the same
    figures on every CPU); ``--precision auto`` then scores what a node would run.
    """
    # Imported here: the backend and precision names live with the code that runs them (torch),
    # and tools without engine options stay free of it.
    from video_seg_ros.backends import BACKENDS
    from video_seg_ros.engine import UPSAMPLE_MODES
    from video_seg_ros.runtime import PRECISIONS

    parser.add_argument(
        "--device",
        default="auto",
        help=f"{what} device: auto (CUDA if present, else CPU), cpu or cuda[:N]",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="inference backend: torch, openvino (Intel CPUs), tensorrt (CUDA, needs "
        "the tensorrt wheel), or auto (the fastest available; the report says "
        "which ran and why)",
    )
    scored = (
        " Default fp32, so that figures do not depend on the CPU; auto scores what the node runs."
        if precision == "fp32"
        else ""
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=precision,
        help="arithmetic: fp32, bf16 (CPUs with native bf16, CUDA), fp16 (CUDA), int8 "
        "(OpenVINO on the CPU, refused below the accuracy gate), or "
        "auto (a reduced precision only where it keeps the fp32 labels on "
        "calibration frames; the report says which ran and why)." + scored,
    )
    parser.add_argument(
        "--upsample",
        choices=UPSAMPLE_MODES,
        default="auto",
        help="how predictions reach the frame size: 'logits' resizes class scores "
        "bilinearly before the argmax (finer boundaries), 'labels' resizes the "
        "class map nearest-neighbour (much cheaper on large frames); 'auto': "
        "logits on CUDA, labels on the CPU",
    )


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """``--calibration`` and ``--calibration-frames``: the frames the accuracy gate and int8
    calibrate on (the node's ``calibration`` and ``calibration_frames``); read them with
    :func:`calibration_from_arguments`."""
    parser.add_argument(
        "--calibration",
        default=None,
        metavar="PATH",
        help="frames for the precision gate and int8 calibration: a folder of images, a video "
        "or a bag from the camera (default: the synthetic street)",
    )
    parser.add_argument(
        "--calibration-frames",
        type=positive_int,
        default=30,
        metavar="N",
        help="how many frames of --calibration, spread evenly (default 30)",
    )


def calibration_from_arguments(args: argparse.Namespace):
    """The calibration frames ``--calibration`` names, or None (the engine's default)."""
    if not args.calibration:
        return None
    from video_seg_ros.precision import load_calibration

    return load_calibration(args.calibration, args.calibration_frames)


def add_temporal_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temporal``, ``--fusion-weight`` and ``--keyframe-max-interval`` (the engine's temporal
    settings, :class:`video_seg_ros.temporal.TemporalSettings`; the node's ``temporal_mode``,
    ``fusion_weight`` and ``keyframe_max_interval``)."""
    from video_seg_ros.temporal import TEMPORAL_MODES, TemporalSettings

    defaults = TemporalSettings()
    parser.add_argument(
        "--temporal",
        choices=TEMPORAL_MODES,
        default=defaults.mode,
        help="off: every frame on its own; fuse: blend each frame's class probabilities "
        "with the previous fused ones warped by optical flow; adaptive: run the "
        "network on keyframes only and warp the fused probabilities in between",
    )
    parser.add_argument(
        "--fusion-weight",
        type=float,
        default=defaults.fusion_weight,
        metavar="W",
        help="weight 0..1 of the current frame where the warp is trusted (1 = the "
        "per-frame result)",
    )
    parser.add_argument(
        "--keyframe-max-interval",
        type=positive_int,
        default=defaults.max_interval,
        metavar="N",
        help="adaptive: run the network at least every N frames",
    )


_TEMPORAL_OPTIONS = {
    "mode": "--temporal",
    "fusion_weight": "--fusion-weight",
    "max_interval": "--keyframe-max-interval",
}


def temporal_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The :func:`add_temporal_arguments` values as validated TemporalSettings; an invalid value is
    a usage error (exit status 2) naming the option."""
    from video_seg_ros.temporal import TemporalSettings, TemporalSettingsError

    try:
        return TemporalSettings.coerce(
            {
                "mode": args.temporal,
                "fusion_weight": args.fusion_weight,
                "max_interval": args.keyframe_max_interval,
            }
        )
    except TemporalSettingsError as error:
        parser.error(f"{_TEMPORAL_OPTIONS.get(error.field, error.field)} {error.reason}")


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command line as reports record it: the program name and its arguments, shell-quoted."""
    return shlex.join([prog, *(sys.argv[1:] if argv is None else argv)])


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Print the usage and ``<prog>: error: <message>`` on stderr as argparse does; returns
    :data:`EXIT_USAGE` for ``main`` (for checks argparse cannot express)."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def fail(prog: str, error: BaseException | str) -> int:
    """Print ``<prog>: error: <message>`` on stderr; returns :data:`EXIT_FAILURE` for ``main``."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_FAILURE


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` plus the checks the vocabulary adds (a required ``-o``)."""
    args = parser.parse_args(argv)
    check_required_output(parser, args)
    return args
