"""``video_seg_lifecycle_node``: :class:`~video_seg_ros.ros.node.VideoSegNode` started
unconfigured (``autostart`` false), for ``python -m`` and older imports; see docs/node.md."""

from __future__ import annotations

import sys

from video_seg_ros.ros.executable import LIFECYCLE_EXECUTABLE as EXECUTABLE
from video_seg_ros.ros.executable import lifecycle_main as main
from video_seg_ros.ros.node import VideoSegNode

__all__ = ["EXECUTABLE", "VideoSegLifecycleNode", "main"]


class VideoSegLifecycleNode(VideoSegNode):
    """The node with ``autostart`` false by default: it waits for lifecycle transitions."""

    def __init__(self, **node_kwargs):
        super().__init__(autostart=False, **node_kwargs)


if __name__ == "__main__":
    sys.exit(main())
