"""video_seg_ros: temporally consistent compact semantic segmentation, with a thin ROS 2 adapter.

The core (models, engine, metrics, data, training) needs only torch, numpy and OpenCV;
``video_seg_ros.ros`` is the only sub-package that imports rclpy.
"""

__version__ = "0.1.0"
