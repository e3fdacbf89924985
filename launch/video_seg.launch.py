"""Start video_seg_node (or video_seg_lifecycle_node) for one camera or several, optionally with
RViz2.

    ros2 launch video_seg_ros video_seg.launch.py image:=/camera/image_raw
    ros2 launch video_seg_ros video_seg.launch.py namespace:=cam0 image:=/cam0/image_raw \
        device:=cuda
    ros2 launch video_seg_ros video_seg.launch.py cameras:=[front,left] \
        image_topics:=[/front/image_raw,/left/image_raw] rviz:=true
    ros2 launch video_seg_ros video_seg.launch.py lifecycle:=true autostart:=false

One camera (``cameras`` empty): the node subscribes to ``image`` and publishes under
``/<namespace>/<node_name>/``. Several cameras share one process and one model: camera N reads
``image_topics[i]`` (default ``<namespace>/N/image``) and publishes under ``.../<node_name>/N/``.
``lifecycle:=true`` starts the managed node (video_seg_lifecycle_node); ``autostart:=true``
(default) sets its read-only ``autostart`` parameter, so it configures and activates itself;
``autostart:=false`` leaves it unconfigured for ``ros2 lifecycle set``. ``rviz:=true`` opens
RViz2 with config/video_seg.rviz rewritten for this namespace, node name and cameras.
``checkpoint``, ``device``, ``backend``, ``precision`` and ``publish_overlay`` override the
parameters file, and so do ``temporal_mode``, ``fusion_weight`` and ``keyframe_max_interval``
when given (empty: the file's value); everything else comes from ``params_file``
(config/video_seg.yaml). With ``large_images:=true`` (default) the processes use the Fast DDS
profile for full-size frames (config/fastdds_large_images.xml); use it in the camera driver too.
"""

import tempfile

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "video_seg_ros"
PARAMS_FILE = "video_seg.yaml"
FASTDDS_PROFILE = "fastdds_large_images.xml"
RVIZ_CONFIG = "video_seg.rviz"


def _list(text: str) -> list[str]:
    """``[front,left]`` / ``['front', 'left']`` / ``front,left`` / ``""`` -> a list of names."""
    text = text.strip()
    if not text:
        return []
    value = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"expected a list of names like [front,left], got {text!r}")
    return value


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _launch_setup(context):
    from video_seg_ros.ros.views import camera_topics, node_path, rviz_config

    value = context.launch_configurations  # every argument declared below, as text
    cameras, image_topics = _list(value["cameras"]), _list(value["image_topics"])
    node = node_path(value["namespace"], value["node_name"])
    topics = camera_topics(node, cameras, image_topics, value["image"])
    overrides = {
        "checkpoint": value["checkpoint"],
        "device": value["device"],
        "backend": value["backend"],
        "precision": value["precision"],
        "publish_overlay": _truthy(value["publish_overlay"]),
    }
    # Temporal settings only when given: an empty argument keeps the parameters file's value.
    if value["temporal_mode"]:
        overrides["temporal_mode"] = value["temporal_mode"]
    if value["fusion_weight"]:
        overrides["fusion_weight"] = float(value["fusion_weight"])
    if value["keyframe_max_interval"]:
        overrides["keyframe_max_interval"] = int(value["keyframe_max_interval"])
    if cameras:
        overrides["cameras"] = cameras
        remappings = [(f"{name}/image", topics[name][0]) for name in cameras if image_topics]
    else:
        remappings = [("image", value["image"])]
    common = dict(
        name=value["node_name"],
        namespace=value["namespace"],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
    )
    actions = []
    if _truthy(value["lifecycle"]):
        # The node configures and activates itself when its read-only autostart parameter is
        # true (video_seg_lifecycle_node's default is false: it waits for transitions).
        overrides["autostart"] = _truthy(value["autostart"])
        actions.append(
            LifecycleNode(
                package=PACKAGE,
                executable="video_seg_lifecycle_node",
                parameters=[value["params_file"], overrides],
                **common,
            )
        )
    else:  # video_seg_node: autostart defaults to true
        actions.append(
            Node(
                package=PACKAGE,
                executable="video_seg_node",
                parameters=[value["params_file"], overrides],
                **common,
            )
        )
    if _truthy(value["rviz"]):
        template = PathJoinSubstitution(
            [FindPackageShare(PACKAGE), "config", RVIZ_CONFIG]
        ).perform(context)
        with open(template) as source:
            text = rviz_config(source.read(), topics)
        generated = tempfile.NamedTemporaryFile(
            "w", prefix="generated_", suffix=f"_{RVIZ_CONFIG}", delete=False
        )
        with generated:
            generated.write(text)
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", generated.name],
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            "image",
            default_value="/camera/image_raw",
            description="camera topic of the single-camera node (sensor_msgs/Image; "
            "<image>/compressed with image_transport: compressed)",
        ),
        DeclareLaunchArgument(
            "cameras",
            default_value="",
            description="several cameras in one process, e.g. [front,left] (empty: one camera)",
        ),
        DeclareLaunchArgument(
            "image_topics",
            default_value="",
            description="input topic per camera, in the order of cameras "
            "(default <namespace>/<camera>/image)",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of the node, e.g. cam0"
        ),
        DeclareLaunchArgument(
            "node_name", default_value="video_seg_node", description="node name"
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
            "precision", default_value="auto", description="auto | fp32 | bf16 | fp16"
        ),
        DeclareLaunchArgument(
            "publish_overlay",
            default_value="false",
            description="publish ~/overlay (the frame with the labels blended in)",
        ),
        DeclareLaunchArgument(
            "temporal_mode",
            default_value="",
            description="off | fuse | adaptive (empty: the parameters file's value)",
        ),
        DeclareLaunchArgument(
            "fusion_weight",
            default_value="",
            description="current frame weight in the fusion, 0..1 (empty: from the file)",
        ),
        DeclareLaunchArgument(
            "keyframe_max_interval",
            default_value="",
            description="adaptive: network at least every N frames (empty: from the file)",
        ),
        DeclareLaunchArgument(
            "lifecycle",
            default_value="false",
            description="start video_seg_lifecycle_node (managed) instead of video_seg_node",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="with lifecycle:=true, the node's autostart parameter: configure and "
            "activate at start (false: wait for lifecycle transitions)",
        ),
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            description="open RViz2 with config/video_seg.rviz for these topics",
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
