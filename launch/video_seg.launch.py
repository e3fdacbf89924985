"""Start video_seg_node with the package's parameters file and its input remapped to a camera topic.

    ros2 launch video_seg_ros video_seg.launch.py image:=/camera/image_raw
    ros2 launch video_seg_ros video_seg.launch.py namespace:=cam0 image:=/cam0/image_raw device:=cuda

With ``namespace:=cam0`` the outputs are /cam0/video_seg_node/labels, .../color, ...; include this
file once per camera for several cameras. ``checkpoint``, ``device`` and ``publish_overlay``
override the parameters file; everything else comes from ``params_file`` (config/video_seg.yaml).
With ``large_images:=true`` (default) the node uses the Fast DDS profile for full-size frames
(config/fastdds_large_images.xml); use the same profile in the camera / bag player process.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video_seg_ros"
PARAMS_FILE = "video_seg.yaml"
FASTDDS_PROFILE = "fastdds_large_images.xml"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera topic the node subscribes to (sensor_msgs/Image; "
                                          "<image>/compressed with use_compressed:=true in params_file)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node, e.g. cam0 (one per camera)"),
        DeclareLaunchArgument("node_name", default_value="video_seg_node", description="node name"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", PARAMS_FILE]),
                              description="ROS 2 parameters YAML of the node"),
        DeclareLaunchArgument("checkpoint", default_value="default",
                              description="checkpoint file ('default' = the embedded model)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda | cuda:N"),
        DeclareLaunchArgument("publish_overlay", default_value="false",
                              description="publish ~/overlay (the frame with the labels blended in)"),
        DeclareLaunchArgument("large_images", default_value="true",
                              description="use the Fast DDS profile for full-size images"),
    ]
    # Set before the node starts, so its Fast DDS participant is created with the profile.
    profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", FASTDDS_PROFILE]),
        condition=IfCondition(LaunchConfiguration("large_images")))
    node = Node(
        package=PACKAGE,
        executable="video_seg_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {
            "checkpoint": LaunchConfiguration("checkpoint"),
            "device": LaunchConfiguration("device"),
            "publish_overlay": LaunchConfiguration("publish_overlay"),
        }],
        remappings=[("image", LaunchConfiguration("image"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [profile, node])
