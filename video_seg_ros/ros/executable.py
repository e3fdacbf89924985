"""The node executables: ``video_seg_node`` (starts active) and ``video_seg_lifecycle_node``
(starts unconfigured, driven by lifecycle transitions). Both run :class:`VideoSegNode`; they
differ only in the default of its read-only ``autostart`` parameter."""

from __future__ import annotations

import gc
import re
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from video_seg_ros.processes import install_stop_handlers
from video_seg_ros.ros.dds import use_large_image_profile
from video_seg_ros.ros.node import NODE_NAME, StartupError, VideoSegNode
from video_seg_ros.runtime import limit_malloc_arenas

LIFECYCLE_EXECUTABLE = "video_seg_lifecycle_node"
SHUTDOWN_GRACE_S = 1.0  # spinning after the shutdown transition, for its response to arrive


def spin_until_shutdown(node: VideoSegNode) -> None:
    """Spin until the shutdown transition (or Ctrl-C), then let its service response go out."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not node.exit_requested:
            executor.spin_once(timeout_sec=0.1)
        # The transition's response has been written, not yet delivered: destroying the
        # participant at once lost it on a loaded CI machine (the caller's ~/change_state call
        # timed out after "shutdown: done"). Keep serving for a moment so the DDS write completes.
        grace_end = time.monotonic() + SHUTDOWN_GRACE_S
        while rclpy.ok() and time.monotonic() < grace_end:
            executor.spin_once(timeout_sec=0.05)
    finally:
        # Releases the executor's guard condition and wait-set handles before destroy_node(), on
        # every way out. (The /dev/shm leak itself was the lifecycle state machine: node.py.)
        executor.shutdown()


def ros_arguments_error(error: Exception) -> str:
    """rcl's start-up failure on one line, without its source locations, and what to do."""
    text = re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split()))
    return (
        f"{text}. Check the command's --ros-args: a --params-file must be YAML of the form "
        "'<node name or /**>: {ros__parameters: {name: value}}'"
    )


def run_node(make_node, executable: str, args=None, spin=spin_until_shutdown) -> int:
    """The body of every node executable: init, build, spin, clean exit; 1 on a start-up error."""
    use_large_image_profile()  # before the first DDS participant; a user-set profile wins
    limit_malloc_arenas()  # before DDS, OpenVINO and the worker start their threads
    # Python's own handlers, not rclpy's: SIGTERM (launch, systemd) then leaves spin() as Ctrl-C
    # does; with rclpy's handler a SIGTERM left the process hanging at exit. Set explicitly: a
    # process started in the background by a shell inherits SIGINT as ignored.
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # RCLError: unparsable --ros-args, e.g. a malformed params file
        print(f"{executable}: error: {ros_arguments_error(error)}", file=sys.stderr, flush=True)
        return 1
    install_stop_handlers()
    node = None
    try:
        node = make_node()
        # The model and libraries are loaded for good: keep the collector from scanning them
        # again, during the run and in the interpreter's final collection (which took tens of
        # seconds after Ctrl-C on a loaded 2-core machine).
        gc.freeze()
        spin(node)
    except StartupError as error:
        print(f"{executable}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM (KeyboardInterrupt) / context shut down: a normal exit
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args=None) -> int:
    """``video_seg_node``: configured and activated at start (``autostart`` defaults to true)."""
    return run_node(lambda: VideoSegNode(autostart=True), NODE_NAME, args)


def lifecycle_main(args=None) -> int:
    """``video_seg_lifecycle_node``: starts unconfigured (``autostart`` defaults to false)."""
    return run_node(lambda: VideoSegNode(autostart=False), LIFECYCLE_EXECUTABLE, args)


if __name__ == "__main__":
    sys.exit(main())
