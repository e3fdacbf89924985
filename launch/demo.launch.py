"""The video-seg-demo pipeline with ros2 launch: replay a bag through video_seg_node and record its
outputs (a ROS 2 install; video-seg-demo starts the same processes itself, without launch).

    ros2 launch video_seg_ros demo.launch.py bag:=outputs/demo/input_bag
    ros2 launch video_seg_ros demo.launch.py bag:=bags/cityscapes replay_hz:=5 \
        checkpoint:=runs/espnet_city.pt output:=runs/demo_launch

``video_seg_node`` (``params_file``, default config/video_seg.yaml, plus the demo's replay
settings: reliable input, a queue that drops nothing, TC on every frame) and ``video-seg-record``
start together; ``video-seg-play`` starts once the recorder prints its ready line (every
subscription matched its publisher), at ``replay_hz`` frames per second; the launch ends when the
recorder stops (every frame recorded, idle or total timeout). ``output`` receives
``recorded_bag/`` and ``logs/`` (``player.json``, ``recorder.json``) as video-seg-demo writes them.
The commands and parameters come from video_seg_ros/tools/demo_pipeline.py, shared with
video-seg-demo, so both run the same pipeline.
"""

import re
from pathlib import Path

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video_seg_ros"
PARAMS_FILE = "video_seg.yaml"
FASTDDS_PROFILE = "fastdds_large_images.xml"


def _launch_setup(context):
    from video_seg_ros.bags import bag_info, default_image_topic, topic_rate_hz
    from video_seg_ros.tools import demo_pipeline as pipeline

    value = context.launch_configurations  # every argument declared below, as text
    bag, out = Path(value["bag"]), Path(value["output"])
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info, topic = bag_info(bag), default_image_topic(bag)
    frames = info["topics"][topic]["count"]
    replay_hz = float(value["replay_hz"])
    speed = replay_hz / (topic_rate_hz(bag, topic) or replay_hz)
    overrides = pipeline.replay_parameters(
        value["checkpoint"],
        value["device"],
        value["upsample"],
        frames,
        value["backend"],
        value["precision"],
    )
    node_spec = pipeline.node_spec(None, topic)
    overrides.update(node_spec.parameters)  # image_transport for a compressed topic
    recorder_spec = pipeline.recorder_spec(
        out / "recorded_bag",
        frames,
        replay_hz,
        info["duration_s"] / speed,
        float(value["startup_timeout"]),
        logs,
    )
    player_spec = pipeline.player_spec(bag, topic, speed, logs)
    node = Node(
        package=PACKAGE,
        executable="video_seg_node",
        name=pipeline.NODE_NAME,
        parameters=[value["params_file"], overrides],
        remappings=list(node_spec.remappings.items()),
        output="screen",
    )
    recorder = Node(
        package=PACKAGE,
        executable="video-seg-record",
        arguments=recorder_spec.arguments,
        output="screen",
    )
    player = Node(
        package=PACKAGE,
        executable="video-seg-play",
        arguments=player_spec.arguments,
        output="screen",
    )
    ready = re.compile(pipeline.RECORDER_READY_PATTERN, re.MULTILINE)
    started = []

    def start_player_when_ready(event):
        # The recorder prints its ready line once every subscription matched the node's outputs.
        if not started and ready.search(event.text.decode(errors="replace")):
            started.append(player)
            return [player]
        return None

    return [
        node,
        recorder,
        RegisterEventHandler(
            OnProcessIO(target_action=recorder, on_stdout=start_player_when_ready)
        ),
        RegisterEventHandler(
            OnProcessExit(
                target_action=recorder,
                on_exit=[EmitEvent(event=Shutdown(reason="the recorder stopped"))],
            )
        ),
    ]


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 folder to replay (required)"),
        DeclareLaunchArgument(
            "output",
            default_value="outputs/demo_launch",
            description="folder of recorded_bag/ and logs/",
        ),
        DeclareLaunchArgument(
            "replay_hz",
            default_value="5.0",
            description="frames per second the player sends to the node",
        ),
        DeclareLaunchArgument(
            "startup_timeout",
            default_value="120.0",
            description="seconds the node may take to load its model (the "
            "recorder waits 30 s longer for its outputs)",
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
        DeclareLaunchArgument(
            "backend", default_value="auto", description="auto | torch | openvino | tensorrt"
        ),
        DeclareLaunchArgument(
            "precision",
            default_value="fp32",
            description="auto | fp32 | bf16 | fp16 (default fp32, as the demo)",
        ),
        DeclareLaunchArgument(
            "upsample",
            default_value="auto",
            description="where labels are upsampled (the node's upsample)",
        ),
        DeclareLaunchArgument(
            "large_images",
            default_value="true",
            description="use the Fast DDS profile for full-size images",
        ),
    ]
    # Set before the processes start, so their Fast DDS participants are created with the profile.
    profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE",
        PathJoinSubstitution([share, "config", FASTDDS_PROFILE]),
        condition=IfCondition(LaunchConfiguration("large_images")),
    )
    return LaunchDescription(arguments + [profile, OpaqueFunction(function=_launch_setup)])
