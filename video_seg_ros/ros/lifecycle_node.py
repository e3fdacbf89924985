"""``video_seg_lifecycle_node``: the same node as a managed (lifecycle) node.

Same parameters, topics and services as ``video_seg_node``; the lifecycle transitions
(``ros2 lifecycle set /video_seg_node configure``, or the ``~/change_state`` service) map to:

- configure: load the checkpoint, build the engine, create publishers, services and diagnostics;
  a bad configuration returns FAILURE (the node stays unconfigured) and logs the reason;
- activate: subscribe to the camera(s) and start segmenting and publishing;
- deactivate: unsubscribe and finish the frame in progress; waiting frames are dropped, nothing
  is queued while inactive;
- cleanup: release the model (and CUDA memory) and everything configure made;
- shutdown: clean up and exit the process with status 0.

The node starts unconfigured (as lifecycle nodes do); launch/video_seg.launch.py ``lifecycle:=true``
configures and activates it automatically unless ``autostart:=false``.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from video_seg_ros.ros.node import NODE_NAME, SegmenterMixin, StartupError, run_node

EXECUTABLE = "video_seg_lifecycle_node"


class VideoSegLifecycleNode(SegmenterMixin, LifecycleNode):
    """See the module docstring."""

    executable_name = EXECUTABLE

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.exit_requested = False
        try:
            self._declare_parameters()
        except StartupError as error:
            self.get_logger().error(str(error))
            raise

    def _make_publisher(self, msg_type, topic: str, qos):
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, publisher) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def _step(self, name: str, step) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition callback into ERROR without a word: say why.
        try:
            step()
        except StartupError as error:
            self.get_logger().error(f"{name} failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:
            self.get_logger().error(f"{name} failed: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.ERROR
        self.get_logger().info(f"{name}: done")
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("configure", self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._cleanup()  # whatever configure made before it failed
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        return result if result != TransitionCallbackReturn.SUCCESS else self._step("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("deactivate", self._deactivate)  # before the publishers go quiet
        return result if result != TransitionCallbackReturn.SUCCESS else super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._step("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("shutdown", self._cleanup)
        self.exit_requested = True  # main() leaves its spin loop once this transition has answered
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self._step("error recovery", self._cleanup)
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def destroy_node(self):
        self._stop_worker()  # Node.destroy_node() destroys the rest
        return super().destroy_node()


def _spin_until_shutdown(node: VideoSegLifecycleNode) -> None:
    """Spin until the shutdown transition, then let its service response go out."""
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    while rclpy.ok() and not node.exit_requested:
        executor.spin_once(timeout_sec=0.1)
    for _ in range(5):
        executor.spin_once(timeout_sec=0.05)


def main(args=None) -> int:
    return run_node(VideoSegLifecycleNode, _spin_until_shutdown, EXECUTABLE, args)


if __name__ == "__main__":
    sys.exit(main())
