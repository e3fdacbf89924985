"""Replay a bag through video_seg_node, optionally watching it in RViz2.

    ros2 launch video_seg_ros replay.launch.py bag:=bags/cityscapes rviz:=true
    ros2 launch video_seg_ros replay.launch.py bag:=bags/cityscapes rate:=0.3 loop:=true \\
        device:=cuda
    ros2 launch video_seg_ros replay.launch.py bag:=bags/cityscapes player:=video_seg_play

The bag (made with video-seg-make-bag or recorded with ros2 bag record) is played with
``ros2 bag play`` (``player:=video_seg_play`` uses the package's rclpy player instead, for installs
without rosbag2) after ``delay`` seconds, so the node has loaded its model. The node is started by
video_seg.launch.py, which also opens RViz2 (``rviz:=true``) with config/video_seg.rviz rewritten
for the node's namespace and name (camera, colour and overlay images).
"""

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    TimerAction,
)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video_seg_ros"
NODE_LAUNCH = "video_seg.launch.py"
PARAMS_FILE = "video_seg.yaml"
FASTDDS_PROFILE = "fastdds_large_images.xml"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    bag, rate, image = (
        LaunchConfiguration("bag"),
        LaunchConfiguration("rate"),
        LaunchConfiguration("image"),
    )
    loop, player = LaunchConfiguration("loop"), LaunchConfiguration("player")
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 folder to replay (required)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", description="replay forever"),
        DeclareLaunchArgument(
            "delay",
            default_value="5.0",
            description="seconds between starting the node and starting playback",
        ),
        DeclareLaunchArgument(
            "player",
            default_value="ros2",
            description="ros2 (ros2 bag play) or video_seg_play (the rclpy player)",
        ),
        DeclareLaunchArgument(
            "image",
            default_value="/camera/image_raw",
            description="the bag's image topic, fed to the node",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", PARAMS_FILE]),
            description="ROS 2 parameters YAML of the node",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="default",
            description="checkpoint file ('default' = the embedded model)",
        ),
        DeclareLaunchArgument(
            "device", default_value="auto", description="auto | cpu | cuda | cuda:N"
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument(
            "node_name", default_value="video_seg_node", description="node name"
        ),
        DeclareLaunchArgument(
            "rviz", default_value="false", description="open RViz2 with config/video_seg.rviz"
        ),
    ]
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", NODE_LAUNCH])),
        launch_arguments={
            "image": image,
            "params_file": LaunchConfiguration("params_file"),
            "checkpoint": LaunchConfiguration("checkpoint"),
            "device": LaunchConfiguration("device"),
            "namespace": LaunchConfiguration("namespace"),
            "node_name": LaunchConfiguration("node_name"),
            "rviz": LaunchConfiguration("rviz"),
            # RViz shows ~/overlay, which the node renders only when asked to.
            "publish_overlay": LaunchConfiguration("rviz"),
        }.items(),
    )
    profile_env = {
        "FASTDDS_DEFAULT_PROFILES_FILE": PathJoinSubstitution([share, "config", FASTDDS_PROFILE])
    }
    players = []
    for looping in (True, False):
        # One action per (player, loop) pair: a launch command line cannot hold an empty argument.
        loop_args = ["--loop"] if looping else []
        loop_test = ["'", loop, "'.lower() " + ("==" if looping else "!=") + " 'true'"]
        players.append(
            ExecuteProcess(
                cmd=["ros2", "bag", "play", bag, "--rate", rate, *loop_args],
                additional_env=profile_env,
                output="screen",
                condition=IfCondition(
                    PythonExpression(["'", player, "' == 'ros2' and ", *loop_test])
                ),
            )
        )
        players.append(
            Node(
                package=PACKAGE,
                executable="video-seg-play",
                name="video_seg_player",
                arguments=[bag, "--speed", rate, "--topic", image, *loop_args],
                additional_env=profile_env,
                output="screen",
                condition=IfCondition(
                    PythonExpression(["'", player, "' == 'video_seg_play' and ", *loop_test])
                ),
            )
        )
    playback = TimerAction(period=LaunchConfiguration("delay"), actions=players)
    return LaunchDescription(arguments + [node, playback])
