"""The node's parameters: one table that is the source of the descriptors, the defaults in
config/video_seg.yaml and the README's parameter table.

``python -m video_seg_ros.ros.parameters`` prints the README table (test/test_node_parameters.py
fails when the README differs). No rclpy import at module level, so the table can be generated
without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

from video_seg_ros.backends import BACKENDS
from video_seg_ros.engine import UPSAMPLE_MODES
from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.precision import AGREEMENT_THRESHOLD
from video_seg_ros.runtime import PRECISIONS
from video_seg_ros.temporal import TEMPORAL_MODES, TemporalSettings, TemporalSettingsError

IMAGE_TRANSPORTS = ("raw", "compressed")
_TEMPORAL = TemporalSettings()  # the defaults of the temporal parameters come from the engine's

#: Node parameter -> :class:`~video_seg_ros.temporal.TemporalSettings` field.
TEMPORAL_PARAMETERS = {
    "temporal_mode": "mode",
    "fusion_weight": "fusion_weight",
    "fusion_confidence_weighting": "confidence_weighting",
    "fusion_label_stickiness": "label_stickiness",
    "fusion_warp_error": "warp_error_threshold",
    "fusion_occlusion_check": "occlusion_check",
    "fusion_probability_width": "probability_width",
    "fusion_flow_width": "flow_width",
    "fusion_flow_preset": "flow_preset",
    "keyframe_max_interval": "max_interval",
    "keyframe_max_interval_s": "max_interval_s",
    "keyframe_error_share": "keyframe_error_share",
    "keyframe_motion": "keyframe_motion",
    "keyframe_confidence": "keyframe_confidence",
    "keyframe_lag": "keyframe_lag",
}


@dataclass(frozen=True)
class NodeParameter:
    default: object
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()  # fixed string values, checked by validate_choice
    values: str = ""  # how the README's "values" column describes other value sets
    deprecated: str = ""  # what to use instead; kept out of config/video_seg.yaml
    # The choice YAML's false stands for: ROS reads an unquoted `off` (-p x:=off, ros2 param set)
    # as the bool false, so such a parameter also takes a bool and false means this value.
    false_means: str = ""
    # Set by the executable, not by config/video_seg.yaml: how the README's default column says it.
    executable_default: str = ""


#: Every parameter, its default (same as config/video_seg.yaml) and its description.
PARAMETERS: dict[str, NodeParameter] = {
    # The default depends on the executable (video_seg_node: true; video_seg_lifecycle_node:
    # false), so autostart is not in config/video_seg.yaml.
    "autostart": NodeParameter(
        True,
        "Configure and activate the node at start; `false` leaves it unconfigured for "
        "lifecycle transitions (`ros2 lifecycle set`, launch `lifecycle:=true`).",
        read_only=True,
        executable_default="`true` (`video_seg_node`), `false` (`video_seg_lifecycle_node`)",
    ),
    "cameras": NodeParameter(
        [],
        "Camera names served by this one process and model. Empty: one camera on `image`. "
        "For each name N: input `N/image`, outputs under `~/N/`, service `~/N/reset`.",
        read_only=True,
        values="string array",
    ),
    "checkpoint": NodeParameter(
        "default",
        "Checkpoint file (project format); `default` = the embedded model. Convert "
        "published weights with `video-seg-import`.",
        read_only=True,
        values="path",
    ),
    "device": NodeParameter(
        "auto",
        "Inference device: `auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`; `cuda` "
        "without CUDA stops the node at start-up.",
        read_only=True,
        values="`auto`, `cpu`, `cuda`, `cuda:N`",
    ),
    "backend": NodeParameter(
        "auto",
        "Inference backend; `auto` picks the fastest one installed for the device "
        "(diagnostics key `backend` says which, and why when it fell back).",
        read_only=True,
        choices=BACKENDS,
    ),
    "precision": NodeParameter(
        "auto",
        "Arithmetic precision; `auto` = fp16 on CUDA, bf16 on a CPU with native bf16, "
        "fp32 elsewhere, a reduced precision only where it passes the accuracy gate (diagnostics "
        "keys `precision`, `precision_reason`, `precision_fallback`). `int8` (OpenVINO, CPU) is "
        "quantised from `calibration` and refused below the gate.",
        read_only=True,
        choices=PRECISIONS,
    ),
    "precision_min_agreement": NodeParameter(
        AGREEMENT_THRESHOLD,
        "The accuracy gate: share of calibration pixels whose label a reduced "
        "precision must keep against fp32 (else `auto` runs fp32; an explicit bf16/fp16 warns, "
        "int8 is refused).",
        read_only=True,
        float_range=(0.0, 1.0),
    ),
    "calibration": NodeParameter(
        "",
        "Frames the accuracy gate and int8 calibrate on: a folder of images, a video or a "
        "rosbag2 folder from the camera the model will see; empty = the synthetic street.",
        read_only=True,
        values="path",
    ),
    "calibration_frames": NodeParameter(
        30,
        "How many frames of `calibration` to use (spread evenly over it).",
        read_only=True,
        int_range=(1, 1000),
    ),
    "fp16": NodeParameter(
        True,
        "Deprecated: `false` = `precision: fp32`; `true` leaves `precision` as it is.",
        read_only=True,
        deprecated="precision",
    ),
    "cpu_threads": NodeParameter(
        0,
        "PyTorch CPU threads for inference; 0 = PyTorch's default (one per core). Fewer threads "
        "help when other processes share the cores.",
        read_only=True,
        int_range=(0, 256),
    ),
    "upsample": NodeParameter(
        "auto",
        "`logits`: resize class scores to the frame before argmax (best edges); `labels`: "
        "argmax at model size, resize ids (cheaper on the CPU); `auto`: logits on CUDA, labels on "
        "the CPU.",
        read_only=True,
        choices=UPSAMPLE_MODES,
    ),
    "input_qos": NodeParameter(
        "sensor_data",
        "QoS of the input subscription: `sensor_data` (best effort, depth 5, like "
        "camera drivers) or `reliable` (depth 10); the standard `qos_overrides.<topic>."
        "subscription.*` parameters override single policies.",
        read_only=True,
        choices=("sensor_data", "reliable"),
    ),
    "image_transport": NodeParameter(
        "raw",
        "Input transport, as image_transport names it: `raw` (`image`) or `compressed` "
        "(`image/compressed`, JPEG/PNG).",
        read_only=True,
        choices=IMAGE_TRANSPORTS,
    ),
    "use_compressed": NodeParameter(
        False,
        "Deprecated: `true` = `image_transport: compressed` (kept for existing parameter files).",
        read_only=True,
        deprecated="image_transport",
    ),
    "frame_queue_size": NodeParameter(
        1,
        "Frames waiting per camera: 1 = keep only the newest (live cameras); N = keep up to N, "
        "dropping the oldest when full (bag replay without loss).",
        read_only=True,
        int_range=(1, 100),
    ),
    "max_input_pixels": NodeParameter(
        8_388_608,
        "Reject images with more pixels than this (protects memory from corrupt headers).",
        int_range=(4, 1 << 28),
    ),
    "publish_color": NodeParameter(
        True, "Publish `~/color` (rgb8 palette image) when someone subscribes."
    ),
    "publish_overlay": NodeParameter(
        False, "Publish `~/overlay` (rgb8 palette blended over the frame) when someone subscribes."
    ),
    "overlay_alpha": NodeParameter(
        0.5, "Weight of the palette colours in `~/overlay`.", float_range=(0.0, 1.0)
    ),
    "publish_confidence": NodeParameter(
        False, "Publish `~/confidence` (32FC1, max softmax probability) when someone subscribes."
    ),
    "temporal_state": NodeParameter(
        True,
        "Keep the model's memory across frames (checkpoints with local memory attention only; "
        "no effect on per-frame models).",
    ),
    "reset_on_gap_s": NodeParameter(
        1.0,
        "Clear a camera's temporal state when its consecutive input stamps are further apart "
        "than this (seconds); 0 disables.",
        float_range=(0.0, 3600.0),
    ),
    "temporal_mode": NodeParameter(
        _TEMPORAL.mode,
        "`off`: every frame on its own; `fuse`: blend each frame's class probabilities "
        "with the previous fused ones warped by optical flow (less flicker); `adaptive`: run the "
        "network "
        "on keyframes only and warp in between (scene cuts, large motion, low confidence and the "
        "`keyframe_max_*` limits make keyframes).",
        choices=TEMPORAL_MODES,
        false_means="off",
    ),
    "fusion_weight": NodeParameter(
        _TEMPORAL.fusion_weight,
        "Weight of the current frame where the warp is trusted (1 = per-frame "
        "result; untrusted pixels always take the current frame).",
        float_range=(0.0, 1.0),
    ),
    "fusion_confidence_weighting": NodeParameter(
        _TEMPORAL.confidence_weighting,
        "Lean each pixel's fusion weight towards the more confident of the "
        "current and the warped previous probabilities.",
    ),
    "fusion_label_stickiness": NodeParameter(
        _TEMPORAL.label_stickiness,
        "Hysteresis against flicker: extra probability (0..1) for each pixel's "
        "previous class where the warp is trusted, so labels change only when the new class wins "
        "by "
        "that margin; 0 = plain blend.",
        float_range=(0.0, 1.0),
    ),
    "fusion_warp_error": NodeParameter(
        _TEMPORAL.warp_error_threshold,
        "Grey-level difference (0..255) between a frame and the warped "
        "previous frame above which a pixel takes the current frame alone; 0 disables the check.",
        float_range=(0.0, 255.0),
    ),
    "fusion_occlusion_check": NodeParameter(
        _TEMPORAL.occlusion_check,
        "Also distrust pixels failing the forward-backward flow check "
        "(computes a second flow per frame).",
    ),
    "fusion_probability_width": NodeParameter(
        _TEMPORAL.probability_width,
        "Fused probabilities are kept at the network output size, at most "
        "this wide; 0 = the output size.",
        int_range=(0, 16384),
    ),
    "fusion_flow_width": NodeParameter(
        _TEMPORAL.flow_width,
        "Width at which the temporal fusion computes optical flow (0 = full "
        "frame); the online TC reuses this flow.",
        int_range=(0, 16384),
    ),
    "fusion_flow_preset": NodeParameter(
        _TEMPORAL.flow_preset,
        "DIS optical-flow preset of the temporal fusion.",
        choices=tuple(DIS_PRESETS),
    ),
    "keyframe_max_interval": NodeParameter(
        _TEMPORAL.max_interval,
        "`adaptive`: run the network at least every N frames (1 = every frame).",
        int_range=(1, 10000),
    ),
    "keyframe_max_interval_s": NodeParameter(
        _TEMPORAL.max_interval_s,
        "`adaptive`: run the network at least every this many seconds of "
        "input stamps; 0 = no time limit.",
        float_range=(0.0, 3600.0),
    ),
    "keyframe_error_share": NodeParameter(
        _TEMPORAL.keyframe_error_share,
        "`adaptive`: a keyframe when more than this share of pixels "
        "cannot be warped from the previous frame (a scene cut).",
        float_range=(0.0, 1.0),
    ),
    "keyframe_motion": NodeParameter(
        _TEMPORAL.keyframe_motion,
        "`adaptive`: a keyframe when the mean optical flow exceeds this "
        "fraction of the image width; 0 = never.",
        float_range=(0.0, 1.0),
    ),
    "keyframe_confidence": NodeParameter(
        _TEMPORAL.keyframe_confidence,
        "`adaptive`: a keyframe when the mean confidence of the warped "
        "probabilities falls below this; 0 = never.",
        float_range=(0.0, 1.0),
    ),
    "keyframe_lag": NodeParameter(
        _TEMPORAL.keyframe_lag,
        "`adaptive`: 0 = a keyframe waits for the network; N >= 1 = the network runs in the "
        "background while frames are propagated, and its result joins N frames later (every "
        "frame costs flow and fusion only; labels lag the scene a little).",
        int_range=(0, 100),
    ),
    "consistency_metric": NodeParameter(
        True, "Compute the online temporal-consistency metric and publish `~/consistency`."
    ),
    "consistency_stride": NodeParameter(
        5, "Measure TC on every N-th frame (against the frame before it).", int_range=(1, 1000)
    ),
    "consistency_window": NodeParameter(
        20,
        "Measured pairs in the diagnostics' recent TC (`recent_tc`, the flicker warning).",
        read_only=True,
        int_range=(1, 10000),
    ),
    "flicker_tc_threshold": NodeParameter(
        0.0,
        "Diagnostics WARN `flicker` while the recent online TC is below this (0..1); 0 disables.",
        float_range=(0.0, 1.0),
    ),
    "consistency_max_width": NodeParameter(
        320,
        "Width at which the TC metric computes optical flow.",
        read_only=True,
        int_range=(16, 4096),
    ),
    "flow_preset": NodeParameter(
        "ultrafast",
        "DIS optical-flow preset of the TC metric.",
        read_only=True,
        choices=tuple(DIS_PRESETS),
    ),
    "diagnostics_period_s": NodeParameter(
        1.0,
        "Period of the `/diagnostics` status (seconds).",
        read_only=True,
        float_range=(0.1, 60.0),
    ),
    "diagnostics_stale_s": NodeParameter(
        3.0,
        "Report a camera as STALE when no frame arrived for this long (seconds); 0 disables.",
        float_range=(0.0, 3600.0),
    ),
}


def normalise(name: str, value):
    """A parameter value as the node uses it: YAML's false for the choice it stands for
    (``NodeParameter.false_means``), everything else as it is."""
    spec = PARAMETERS.get(name)
    if spec is not None and spec.false_means and value is False:
        return spec.false_means
    return value


def validate_choice(name: str, value) -> str | None:
    """Reason a string parameter value is invalid, or None."""
    value = normalise(name, value)
    if name == "device":
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
            return None
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "cameras":
        names = list(value)
        for camera in names:
            if (
                not camera
                or not all(c.isalnum() or c == "_" for c in camera)
                or camera[0].isdigit()
            ):
                return (
                    f"camera name {camera!r} is not a valid topic name part; use letters, digits "
                    "and '_', not starting with a digit"
                )
        if len(set(names)) != len(names):
            return f"cameras has duplicate names: {names}"
        return None
    choices = PARAMETERS[name].choices if name in PARAMETERS else ()
    if choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return None


CHECKED_NAMES = ("device", "cameras") + tuple(
    name for name, spec in PARAMETERS.items() if spec.choices
)


def temporal_settings(values: dict) -> TemporalSettings:
    """The engine's temporal settings from node parameter values (missing ones: defaults).

    Raises:
        ValueError: naming the node parameter (not the settings field) and what is wrong.
    """
    fields = {
        field: normalise(name, values[name])
        for name, field in TEMPORAL_PARAMETERS.items()
        if name in values
    }
    try:
        return TemporalSettings.coerce(fields)
    except TemporalSettingsError as error:
        name = next((n for n, f in TEMPORAL_PARAMETERS.items() if f == error.field), error.field)
        raise ValueError(f"{name} {error.reason}") from None


def read_settings(value_of) -> dict:
    """Every parameter's value as the node uses it, checked together; ``value_of(name)``: the
    node's current value.

    Raises:
        ValueError: the first invalid value, with the reason.
    """
    settings = {name: normalise(name, value_of(name)) for name in PARAMETERS}
    for name in CHECKED_NAMES:
        reason = validate_choice(name, settings[name])
        if reason:
            raise ValueError(reason)
    try:
        temporal_settings(settings)
    except ValueError as error:
        raise ValueError(f"invalid temporal settings: {error}") from None
    settings["cameras"] = list(settings["cameras"])
    return settings


def change_error(changes: dict, current: dict) -> str | None:
    """Why a run-time change ``changes`` (name -> value) is refused, or None; ``current``: the
    values in force (the temporal ones are checked together with them)."""
    for name, value in changes.items():
        if name in CHECKED_NAMES:
            reason = validate_choice(name, value)
            if reason:
                return reason
    temporal = {
        name: normalise(name, value)
        for name, value in changes.items()
        if name in TEMPORAL_PARAMETERS
    }
    if temporal:
        try:  # the new values with the current others, as the engine would get them
            temporal_settings({**{n: current[n] for n in TEMPORAL_PARAMETERS}, **temporal})
        except ValueError as error:
            return str(error)
    return None


def descriptor(name: str):
    """The rcl_interfaces ParameterDescriptor of one parameter."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    spec = PARAMETERS[name]
    result = ParameterDescriptor(
        name=name,
        description=spec.description,
        read_only=spec.read_only,
        additional_constraints="|".join(spec.choices),
        dynamic_typing=bool(spec.false_means),
    )
    if isinstance(spec.default, list):
        result.type = ParameterType.PARAMETER_STRING_ARRAY
    if spec.int_range:
        result.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)
        ]
    if spec.float_range:
        result.floating_point_range = [
            FloatingPointRange(
                from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0
            )
        ]
    return result


def _format_default(value, spec: NodeParameter | None = None) -> str:
    if spec is not None and spec.executable_default:
        return spec.executable_default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[]`"
    return f"`{value}`"


def _values_column(spec: NodeParameter) -> str:
    if spec.values:
        return spec.values
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    if isinstance(spec.default, bool):
        return "bool"
    if spec.int_range:
        low, high = spec.int_range
        power_of_two = high > 100_000 and high & (high - 1) == 0
        return f"{low}..{'2^%d' % (high.bit_length() - 1) if power_of_two else high}"
    if spec.float_range:
        return f"{spec.float_range[0]:g}..{spec.float_range[1]:g}"
    return type(spec.default).__name__


def markdown_table() -> str:
    """The README's parameter table (one row per parameter, in declaration order)."""
    lines = ["| parameter | default | values | run-time | meaning |", "|---|---|---|---|---|"]
    for name, spec in PARAMETERS.items():
        runtime = "read-only" if spec.read_only else "yes"
        lines.append(
            f"| `{name}` | {_format_default(spec.default, spec)} | {_values_column(spec)} | "
            f"{runtime} | "
            f"{spec.description} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
