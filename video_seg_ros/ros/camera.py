"""One camera of the node: its topics, publishers, pipeline, counters and latest camera model.

The node holds one :class:`Camera` per entry of the ``cameras`` parameter (or a single unnamed
one); all of them share the node's engine. Topic names, for camera ``N`` (``""`` = unnamed):
input ``N/image`` (relative, so remappable), outputs ``~/N/labels`` ..., service ``~/N/reset``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from video_seg_ros.ros.pipeline import StreamPipeline
from video_seg_ros.ros.stream_stats import StreamStats

#: Outputs that count as "someone needs this camera segmented".
OUTPUTS = ("labels", "color", "overlay", "confidence", "consistency")


def scale_camera_info(info, width: int, height: int):
    """A copy of a ``sensor_msgs/CameraInfo`` describing the same camera at ``width`` x ``height``.

    Intrinsics and the projection matrix are scaled as image_proc's resize does (fx, cx by the
    width ratio; fy, cy by the height ratio), so pixel coordinates of the labels project with the
    right camera model. Binning stays as it is: the ratio is taken against the binned size.
    """
    binning_x, binning_y = max(int(info.binning_x), 1), max(int(info.binning_y), 1)
    source_width, source_height = int(info.width) // binning_x, int(info.height) // binning_y
    result = copy.deepcopy(info)
    if (source_width, source_height) == (width, height) or source_width <= 0 or source_height <= 0:
        return result
    sx, sy = width / source_width, height / source_height
    k, p = list(result.k), list(result.p)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    result.k, result.p = k, p
    result.width, result.height = int(round(info.width * sx)), int(round(info.height * sy))
    roi = result.roi
    roi.x_offset, roi.width = int(round(roi.x_offset * sx)), int(round(roi.width * sx))
    roi.y_offset, roi.height = int(round(roi.y_offset * sy)), int(round(roi.height * sy))
    return result


@dataclass
class Camera:
    """Per-camera state; touched by the executor thread (callbacks) and the worker thread."""

    name: str  # "" for the single-camera node
    pipeline: StreamPipeline
    stats: StreamStats = field(default_factory=StreamStats)
    input_topic: str = ""
    camera_info_topic: str = ""
    publishers: dict = field(default_factory=dict)  # output name -> publisher
    subscriptions: list = field(default_factory=list)
    last_input_stamp: float | None = None  # executor thread only
    frame_id: str = ""  # of the newest frame
    camera_info: object = None  # newest sensor_msgs/CameraInfo
    idle: bool = False  # the last frame was skipped (no subscriber)

    def topic(self, suffix: str) -> str:
        """Relative input topic (``image``, ``front/image``)."""
        return f"{self.name}/{suffix}" if self.name else suffix

    def private(self, suffix: str) -> str:
        """Private output / service name (``~/labels``, ``~/front/labels``)."""
        return f"~/{self.name}/{suffix}" if self.name else f"~/{suffix}"

    def status_name(self, node_name: str) -> str:
        """Diagnostic status name, as diagnostic_updater writes it (no leading slash)."""
        base = node_name.lstrip("/")
        return f"{base}: {self.name} segmentation" if self.name else f"{base}: segmentation"

    def has_subscribers(self) -> bool:
        return any(self.publishers[name].get_subscription_count() > 0 for name in OUTPUTS)
