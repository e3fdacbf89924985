"""The class map the node latches on ``~/label_info``: vision_msgs/LabelInfo, else JSON."""

from __future__ import annotations

import json

from std_msgs.msg import String

from video_seg_ros.labels import IGNORE_ID

try:  # vision_msgs is optional: without it the class map goes out as JSON on ~/label_info
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

LABEL_INFO_FORMAT = "video_seg_ros/label_info/1"


def label_info_json(checkpoint, model_name: str) -> str:
    """The class map as published on ~/label_info when vision_msgs is not installed."""
    return json.dumps(
        {
            "format": LABEL_INFO_FORMAT,
            "model": model_name,
            "label_set": checkpoint.label_set,
            "ignore_id": IGNORE_ID,
            "classes": [
                {
                    "id": i,
                    "name": name,
                    "color": list(map(int, checkpoint.palette[i]))
                    if i < len(checkpoint.palette)
                    else [0, 0, 0],
                }
                for i, name in enumerate(checkpoint.class_names)
            ],
        }
    )


def label_info_message(checkpoint, model_name: str, stamp):
    """``(message type, message)`` of the class map; ``stamp``: a builtin_interfaces/Time."""
    if LabelInfo is None:
        return String, String(data=label_info_json(checkpoint, model_name))
    message = LabelInfo()
    message.header.stamp = stamp
    message.class_map = [
        VisionClass(class_id=i, class_name=n) for i, n in enumerate(checkpoint.class_names)
    ]
    message.class_map.append(VisionClass(class_id=IGNORE_ID, class_name="unlabelled"))
    message.threshold = 0.0
    return LabelInfo, message
