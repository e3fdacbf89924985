"""The node's parameters: one table that is the source of the descriptors, the defaults in
config/video_seg.yaml and the README's parameter table.

``python -m video_seg_ros.ros.parameters`` prints the README table (test/test_node_parameters.py
fails when the README differs). No rclpy import at module level, so the table can be generated
without ROS.
"""

from __future__ import annotations

from dataclasses import dataclass

from video_seg_ros.engine import UPSAMPLE_MODES
from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.precision import AGREEMENT_THRESHOLD
from video_seg_ros.runtime import PRECISIONS

BACKENDS = ("auto", "torch", "openvino", "tensorrt")
IMAGE_TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class NodeParameter:
    default: object
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()   # fixed string values, checked by validate_choice
    values: str = ""                # how the README's "values" column describes other value sets
    deprecated: str = ""            # what to use instead; kept out of config/video_seg.yaml


#: Every parameter, its default (same as config/video_seg.yaml) and its description.
PARAMETERS: dict[str, NodeParameter] = {
    "cameras": NodeParameter(
        [], "Camera names served by this one process and model. Empty: one camera on `image`. "
        "For each name N: input `N/image`, outputs under `~/N/`, service `~/N/reset`.",
        read_only=True, values="string array"),
    "checkpoint": NodeParameter(
        "default", "Checkpoint file (project format); `default` = the embedded model. Convert "
        "published weights with `video-seg-import`.", read_only=True, values="path"),
    "device": NodeParameter(
        "auto", "Inference device: `auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`; `cuda` "
        "without CUDA stops the node at start-up.", read_only=True, values="`auto`, `cpu`, `cuda`, `cuda:N`"),
    "backend": NodeParameter(
        "auto", "Inference backend; `auto` picks the fastest one installed for the device "
        "(diagnostics key `backend` says which, and why when it fell back).",
        read_only=True, choices=BACKENDS),
    "precision": NodeParameter(
        "auto", "Arithmetic precision; `auto` = fp16 on CUDA, bf16 on a CPU with native bf16, "
        "fp32 elsewhere, a reduced precision only where it passes the accuracy gate (diagnostics "
        "keys `precision`, `precision_reason`, `precision_fallback`).", read_only=True, choices=PRECISIONS),
    "precision_min_agreement": NodeParameter(
        AGREEMENT_THRESHOLD, "The accuracy gate: share of calibration pixels whose label a reduced "
        "precision must keep against fp32 (else `auto` runs fp32; an explicit bf16/fp16 warns).",
        read_only=True, float_range=(0.0, 1.0)),
    "fp16": NodeParameter(
        True, "Deprecated: `false` = `precision: fp32`; `true` leaves `precision` as it is.",
        read_only=True, deprecated="precision"),
    "cpu_threads": NodeParameter(
        0, "PyTorch CPU threads for inference; 0 = PyTorch's default (one per core). Fewer threads "
        "help when other processes share the cores.", read_only=True, int_range=(0, 256)),
    "upsample": NodeParameter(
        "auto", "`logits`: resize class scores to the frame before argmax (best edges); `labels`: "
        "argmax at model size, resize ids (cheaper on the CPU); `auto`: logits on CUDA, labels on "
        "the CPU.", read_only=True, choices=UPSAMPLE_MODES),
    "input_qos": NodeParameter(
        "sensor_data", "QoS of the input subscription: `sensor_data` (best effort, depth 5, like "
        "camera drivers) or `reliable` (depth 10); the standard `qos_overrides.<topic>."
        "subscription.*` parameters override single policies.",
        read_only=True, choices=("sensor_data", "reliable")),
    "image_transport": NodeParameter(
        "raw", "Input transport, as image_transport names it: `raw` (`image`) or `compressed` "
        "(`image/compressed`, JPEG/PNG).", read_only=True, choices=IMAGE_TRANSPORTS),
    "use_compressed": NodeParameter(
        False, "Same as `image_transport: compressed` (kept for existing parameter files).",
        read_only=True),
    "frame_queue_size": NodeParameter(
        1, "Frames waiting per camera: 1 = keep only the newest (live cameras); N = keep up to N, "
        "dropping the oldest when full (bag replay without loss).", read_only=True, int_range=(1, 100)),
    "max_input_pixels": NodeParameter(
        8_388_608, "Reject images with more pixels than this (protects memory from corrupt headers).",
        int_range=(4, 1 << 28)),
    "publish_color": NodeParameter(True, "Publish `~/color` (rgb8 palette image) when someone subscribes."),
    "publish_overlay": NodeParameter(
        False, "Publish `~/overlay` (rgb8 palette blended over the frame) when someone subscribes."),
    "overlay_alpha": NodeParameter(0.5, "Weight of the palette colours in `~/overlay`.", float_range=(0.0, 1.0)),
    "publish_confidence": NodeParameter(
        False, "Publish `~/confidence` (32FC1, max softmax probability) when someone subscribes."),
    "temporal_state": NodeParameter(
        True, "Keep the model's memory across frames (checkpoints with local memory attention only; "
        "no effect on per-frame models)."),
    "reset_on_gap_s": NodeParameter(
        1.0, "Clear a camera's temporal state when its consecutive input stamps are further apart "
        "than this (seconds); 0 disables.", float_range=(0.0, 3600.0)),
    "consistency_metric": NodeParameter(
        True, "Compute the online temporal-consistency metric and publish `~/consistency`."),
    "consistency_stride": NodeParameter(
        5, "Measure TC on every N-th frame (against the frame before it).", int_range=(1, 1000)),
    "consistency_max_width": NodeParameter(
        320, "Width at which the TC metric computes optical flow.", read_only=True, int_range=(16, 4096)),
    "flow_preset": NodeParameter(
        "ultrafast", "DIS optical-flow preset of the TC metric.", read_only=True, choices=tuple(DIS_PRESETS)),
    "diagnostics_period_s": NodeParameter(
        1.0, "Period of the `/diagnostics` status (seconds).", read_only=True, float_range=(0.1, 60.0)),
    "diagnostics_stale_s": NodeParameter(
        3.0, "Report a camera as STALE when no frame arrived for this long (seconds); 0 disables.",
        float_range=(0.0, 3600.0)),
}


def validate_choice(name: str, value) -> str | None:
    """Reason a string parameter value is invalid, or None."""
    if name == "device":
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
            return None
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "cameras":
        names = list(value)
        for camera in names:
            if not camera or not all(c.isalnum() or c == "_" for c in camera) or camera[0].isdigit():
                return (f"camera name {camera!r} is not a valid topic name part; use letters, digits "
                        "and '_', not starting with a digit")
        if len(set(names)) != len(names):
            return f"cameras has duplicate names: {names}"
        return None
    choices = PARAMETERS[name].choices if name in PARAMETERS else ()
    if choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return None


CHECKED_NAMES = ("device", "cameras") + tuple(name for name, spec in PARAMETERS.items() if spec.choices)


def descriptor(name: str):
    """The rcl_interfaces ParameterDescriptor of one parameter."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    spec = PARAMETERS[name]
    result = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only,
                                 additional_constraints="|".join(spec.choices))
    if isinstance(spec.default, list):
        result.type = ParameterType.PARAMETER_STRING_ARRAY
    if spec.int_range:
        result.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        result.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                          to_value=spec.float_range[1], step=0.0)]
    return result


def _format_default(value) -> str:
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
        return f"{low}..{'2^%d' % (high.bit_length() - 1) if high > 100_000 and high & (high - 1) == 0 else high}"
    if spec.float_range:
        return f"{spec.float_range[0]:g}..{spec.float_range[1]:g}"
    return type(spec.default).__name__


def markdown_table() -> str:
    """The README's parameter table (one row per parameter, in declaration order)."""
    lines = ["| parameter | default | values | run-time | meaning |", "|---|---|---|---|---|"]
    for name, spec in PARAMETERS.items():
        runtime = "read-only" if spec.read_only else "yes"
        lines.append(f"| `{name}` | {_format_default(spec.default)} | {_values_column(spec)} | {runtime} | "
                     f"{spec.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
