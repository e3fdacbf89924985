"""QoS profiles of the node's topics."""

from __future__ import annotations

import copy

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

#: Outputs: reliable, shallow history (images are large; late frames are useless).
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE
)
#: The class map: sent once, kept for late subscribers.
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
CAMERA_INFO_QOS = qos_profile_sensor_data


def input_qos(name: str) -> QoSProfile:
    """The image subscription's profile for the ``input_qos`` parameter value."""
    if name == "sensor_data":
        return copy.copy(qos_profile_sensor_data)  # QoS overrides edit the profile in place
    # Reliable input keeps 10 samples in the reader: a burst of that size survives a busy executor.
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
