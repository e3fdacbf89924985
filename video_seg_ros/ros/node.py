"""``video_seg_node``: camera images in; labels, colour views, TC and diagnostics out.

A thin rclpy adapter over :class:`video_seg_ros.ros.pipeline.StreamPipeline` (queueing, reset
policy, segmentation, rendering and the TC metric live there and in the core, tested without ROS).

The DDS callback only time-stamps the message and hands it to a bounded queue; one worker thread
decodes, segments and publishes, so a slow model never blocks the executor. With the default
``frame_queue_size: 1`` the worker always takes the newest frame and older waiting frames are
dropped and counted (keep-latest).

Run: ``ros2 run video_seg_ros video_seg_node --ros-args --params-file config/video_seg.yaml
-r image:=/camera/image_raw``. Parameters, topics and services: docs/node.md.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger

from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
from video_seg_ros.engine import UPSAMPLE_MODES, DeviceError, SegmentationEngine
from video_seg_ros.flow import DIS_PRESETS
from video_seg_ros.image_encoding import (FRAME_ENCODINGS, Frame, ImageDecodeError, check_data_length,
                                          check_image_size, compressed_to_frame, fill_image,
                                          image_to_frame)
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.ros.dds import use_large_image_profile
from video_seg_ros.ros.pipeline import FrameQueue, OutputRequest, StreamPipeline, StreamStats

try:  # vision_msgs is optional: without it the class map goes out as JSON on ~/label_info
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

NODE_NAME = "video_seg_node"
LABEL_INFO_FORMAT = "video_seg_ros/label_info/1"
_STRING_CHOICES = {
    "device": None,  # auto | cpu | cuda[:N], checked by resolve_device
    "upsample": UPSAMPLE_MODES,
    "input_qos": ("sensor_data", "reliable"),
    "flow_preset": tuple(DIS_PRESETS),
}


class StartupError(RuntimeError):
    """A configuration the node cannot start with; the message is printed as one line."""


@dataclass(frozen=True)
class _Param:
    default: object
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: str = ""


#: Every parameter, its default (same as config/video_seg.yaml) and its descriptor.
PARAMETERS: dict[str, _Param] = {
    "checkpoint": _Param("default", "Checkpoint file (project format); 'default' = the embedded "
                         "model. Convert published weights with video-seg-import.", read_only=True),
    "device": _Param("auto", "Inference device: auto (CUDA if available), cpu, cuda or cuda:N.",
                     read_only=True, choices="auto|cpu|cuda|cuda:N"),
    "fp16": _Param(True, "Half-precision autocast on CUDA (ignored on the CPU).", read_only=True),
    "cpu_threads": _Param(0, "PyTorch CPU threads for inference; 0 = PyTorch's default (one per "
                          "core). Fewer threads help when other processes share the cores.",
                          read_only=True, int_range=(0, 256)),
    "upsample": _Param("auto", "logits: resize class scores to the frame before argmax (best "
                       "edges); labels: argmax at model size, resize ids (cheaper on CPU); "
                       "auto: logits on CUDA, labels on the CPU.",
                       read_only=True, choices="auto|logits|labels"),
    "input_qos": _Param("sensor_data", "QoS of the input subscription: sensor_data (best effort, "
                        "depth 5, like camera drivers) or reliable.", read_only=True,
                        choices="sensor_data|reliable"),
    "use_compressed": _Param(False, "Subscribe to <image>/compressed (JPEG/PNG) instead of the raw "
                             "image topic.", read_only=True),
    "frame_queue_size": _Param(1, "Frames waiting for the worker: 1 = keep only the newest (live "
                               "cameras); N = keep up to N, dropping the oldest when full.",
                               read_only=True, int_range=(1, 100)),
    "max_input_pixels": _Param(8_388_608, "Reject images with more pixels than this (protects "
                               "memory from corrupt headers).", int_range=(4, 1 << 28)),
    "publish_color": _Param(True, "Publish ~/color (rgb8 palette image) when someone subscribes."),
    "publish_overlay": _Param(False, "Publish ~/overlay (rgb8 palette blended over the frame) when "
                              "someone subscribes."),
    "overlay_alpha": _Param(0.5, "Weight of the palette colours in ~/overlay.", float_range=(0.0, 1.0)),
    "publish_confidence": _Param(False, "Publish ~/confidence (32FC1, max softmax probability) "
                                 "when someone subscribes."),
    "temporal_state": _Param(True, "Keep the model's memory across frames (checkpoints with local "
                             "memory attention only; no effect on per-frame models)."),
    "reset_on_gap_s": _Param(1.0, "Clear temporal state when consecutive stamps are further apart "
                             "than this (seconds); 0 disables.", float_range=(0.0, 3600.0)),
    "consistency_metric": _Param(True, "Compute the online temporal-consistency metric and publish "
                                 "~/consistency."),
    "consistency_stride": _Param(5, "Measure TC on every N-th frame (against the frame before it).",
                                 int_range=(1, 1000)),
    "consistency_max_width": _Param(320, "Width at which the TC metric computes flow.",
                                    read_only=True, int_range=(16, 4096)),
    "flow_preset": _Param("ultrafast", "DIS optical-flow preset of the TC metric.", read_only=True,
                          choices="|".join(DIS_PRESETS)),
    "diagnostics_period_s": _Param(1.0, "Period of the /diagnostics status (seconds).", read_only=True,
                                   float_range=(0.1, 60.0)),
}


def _descriptor(name: str, spec: _Param) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only,
                                     additional_constraints=spec.choices)
    if spec.int_range:
        descriptor.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                              to_value=spec.float_range[1], step=0.0)]
    return descriptor


def _validate_choice(name: str, value) -> str | None:
    """Reason a string parameter value is invalid, or None."""
    if name == "device":
        text = str(value).strip().lower()
        if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
            return None
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    choices = _STRING_CHOICES.get(name)
    if choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return None


def _stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


@dataclass
class _Pending:
    """A received message waiting for the worker."""

    msg: object
    kind: str              # "raw" or "compressed"
    received_at: float     # time.monotonic() in the DDS callback
    input_gap_s: float     # largest stamp gap in the input since the previous waiting frame


def _inherit_gap(dropped: _Pending, successor: _Pending) -> None:
    # A skipped frame's input gap still happened before the next processed frame.
    successor.input_gap_s = max(successor.input_gap_s, dropped.input_gap_s)


class VideoSegNode(Node):
    """See the module docstring; raises :class:`StartupError` on an unusable configuration."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_parameters()
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name in _STRING_CHOICES:
            reason = _validate_choice(name, p[name])
            if reason:
                raise StartupError(reason)
        self._settings = p

        if p["cpu_threads"] > 0:
            torch.set_num_threads(p["cpu_threads"])
        try:
            checkpoint = load_checkpoint(p["checkpoint"])
            engine = SegmentationEngine(checkpoint, device=p["device"], fp16=p["fp16"], upsample=p["upsample"])
        except (CheckpointError, DeviceError) as error:
            raise StartupError(str(error)) from error
        except Exception as error:  # a damaged state_dict or unknown architecture
            raise StartupError(f"could not build the model from {p['checkpoint']}: "
                               f"{type(error).__name__}: {error}") from error
        # One warm-up pass, so the first camera frame is not slowed by lazy kernel initialisation.
        pre = checkpoint.preprocessing
        engine.segment(np.zeros((pre.input_height, pre.input_width, 3), np.uint8))
        engine.reset()
        from video_seg_ros.metrics import OnlineConsistency  # after the model: import cost only on success

        consistency = OnlineConsistency(len(checkpoint.class_names), stride=p["consistency_stride"],
                                        max_width=p["consistency_max_width"], preset=p["flow_preset"])
        self.engine = engine
        self.pipeline = StreamPipeline(engine, reset_gap_s=p["reset_on_gap_s"],
                                       temporal_state=p["temporal_state"], consistency=consistency)
        self.stats = StreamStats()
        self._queue = FrameQueue(p["frame_queue_size"], on_drop=_inherit_gap)
        self._last_input_stamp: float | None = None  # touched by the executor thread only
        self._cv_bridge = _load_cv_bridge()

        # Outputs: reliable, shallow history (images are large; late frames are useless).
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._labels_pub = self.create_publisher(Image, "~/labels", output_qos)
        self._color_pub = self.create_publisher(Image, "~/color", output_qos)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", output_qos)
        self._confidence_pub = self.create_publisher(Image, "~/confidence", output_qos)
        self._consistency_pub = self.create_publisher(Float32, "~/consistency", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._publish_label_info(checkpoint, latched)
        self.create_service(Trigger, "~/reset", self._on_reset)

        # Reliable input keeps 10 samples in the reader: a burst of that size survives a busy executor.
        input_qos = qos_profile_sensor_data if p["input_qos"] == "sensor_data" else QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_topic = self.resolve_topic_name("image")
        if p["use_compressed"]:
            self._input_topic = image_topic.rstrip("/") + "/compressed"
            self.create_subscription(CompressedImage, self._input_topic,
                                     lambda msg: self._on_message(msg, "compressed"), input_qos)
        else:
            self._input_topic = image_topic
            self.create_subscription(Image, image_topic, lambda msg: self._on_message(msg, "raw"), input_qos)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, name="video_seg_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model {engine.model_name} on {engine.device}, input {self._input_topic} "
            f"({p['input_qos']}), {len(checkpoint.class_names)} classes, "
            f"temporal={'yes' if engine.is_temporal else 'no'}")

    # ---- parameters --------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for name, spec in PARAMETERS.items():
            try:
                self.declare_parameter(name, spec.default, _descriptor(name, spec))
            except (InvalidParameterValueException, ParameterException) as error:
                raise StartupError(f"parameter '{name}': {error}") from error
            except TypeError as error:  # wrong type in the params file
                raise StartupError(f"parameter '{name}' has the wrong type: {error}") from error

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject invalid values with a reason (ranges and read-only are checked by rclpy)."""
        for parameter in parameters:
            if parameter.name in _STRING_CHOICES:
                reason = _validate_choice(parameter.name, parameter.value)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        settings = dict(self._settings)
        for parameter in parameters:
            settings[parameter.name] = parameter.value
        if settings["consistency_metric"] and not self._settings["consistency_metric"]:
            self.pipeline.consistency.reset()  # its previous frame is stale
        self.pipeline.consistency.stride = settings["consistency_stride"]
        self.pipeline.policy.gap_s = settings["reset_on_gap_s"]
        self.pipeline.temporal_state = settings["temporal_state"]
        self._settings = settings  # one assignment: the worker sees old or new, never a mix
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in parameters))

    # ---- input -------------------------------------------------------------------------------
    def _on_message(self, msg, kind: str) -> None:
        """DDS callback: never blocks; the worker takes it from the queue."""
        received_at = time.monotonic()
        stamp = _stamp_seconds(msg.header.stamp)
        gap = 0.0 if self._last_input_stamp is None else stamp - self._last_input_stamp
        self._last_input_stamp = stamp
        dropped = self._queue.put(_Pending(msg, kind, received_at, gap))
        self.stats.on_received(dropped)

    def _decode(self, msg, kind: str) -> Frame:
        max_pixels = self._settings["max_input_pixels"]
        if kind == "compressed":
            return compressed_to_frame(msg, max_pixels=max_pixels)
        if msg.encoding not in FRAME_ENCODINGS and self._cv_bridge is not None:
            # cv_bridge (when installed) widens the accepted encodings (Bayer, YUV, 16-bit colour).
            try:
                check_image_size(msg, max_pixels)
                check_data_length(msg, len(msg.data))
                pixels = self._cv_bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
                return Frame(pixels, "rgb", msg.encoding)
            except ImageDecodeError:
                raise
            except Exception as error:
                raise ImageDecodeError("unsupported_encoding", f"cv_bridge could not convert "
                                       f"{msg.encoding!r}: {error}") from error
        return image_to_frame(msg, max_pixels=max_pixels)

    # ---- worker ------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        if self._settings["cpu_threads"] > 0:
            torch.set_num_threads(self._settings["cpu_threads"])
        while not self._stop.is_set():
            item = self._queue.get(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(item.msg, item.kind, item.received_at, item.input_gap_s)
            except Exception as error:  # never let one frame kill the worker
                self._reject("internal_error", f"{type(error).__name__}: {error}")

    def _reject(self, reason: str, message: str) -> None:
        self.stats.on_rejected(reason, message)
        self.get_logger().warning(f"rejected a frame ({reason}): {message}", throttle_duration_sec=5.0)

    def _process(self, msg, kind: str, received_at: float, input_gap_s: float) -> None:
        try:
            frame = self._decode(msg, kind)
            if frame.height < 2 or frame.width < 2:
                raise ImageDecodeError("too_small", f"image {frame.width}x{frame.height} is too small "
                                                    "to segment (at least 2x2 pixels)")
        except ImageDecodeError as error:
            self._reject(error.reason, str(error))
            return
        settings = self._settings
        request = OutputRequest(
            color=settings["publish_color"] and self._color_pub.get_subscription_count() > 0,
            overlay=settings["publish_overlay"] and self._overlay_pub.get_subscription_count() > 0,
            overlay_alpha=settings["overlay_alpha"],
            confidence=settings["publish_confidence"] and self._confidence_pub.get_subscription_count() > 0,
        )
        result = self.pipeline.segment(frame, _stamp_seconds(msg.header.stamp), request, input_gap_s)
        if result.reset is not None:
            self.stats.on_reset(*result.reset)
            self.get_logger().info(f"temporal state cleared: {result.reset[1]}")
        self._labels_pub.publish(fill_image(Image(), result.labels, "mono8", msg.header))
        self.stats.on_processed((time.monotonic() - received_at) * 1000.0, result.model_ms)

        if result.confidence is not None:
            self._confidence_pub.publish(fill_image(Image(), result.confidence, "32FC1", msg.header))
        if request.color or request.overlay:
            self.pipeline.render(frame, result, request)
            if "color" in result.extras:
                self._color_pub.publish(fill_image(Image(), result.extras["color"], "rgb8", msg.header))
            if "overlay" in result.extras:
                self._overlay_pub.publish(fill_image(Image(), result.extras["overlay"], "rgb8", msg.header))
        if settings["consistency_metric"]:
            sample = self.pipeline.measure(frame, result.labels)
            if sample is not None and sample.tc is not None:
                self._consistency_pub.publish(Float32(data=float(sample.tc)))

    # ---- services, class map, diagnostics ----------------------------------------------------
    def _on_reset(self, request, response):
        self.pipeline.request_reset("service", "~/reset service called")
        response.success = True
        response.message = "temporal state (model memory and TC metric) is cleared before the next frame"
        return response

    def _publish_label_info(self, checkpoint, qos: QoSProfile) -> None:
        names = list(checkpoint.class_names)
        if LabelInfo is not None:
            self._label_info_pub = self.create_publisher(LabelInfo, "~/label_info", qos)
            message = LabelInfo()
            message.header.stamp = self.get_clock().now().to_msg()
            message.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(names)]
            message.class_map.append(VisionClass(class_id=IGNORE_ID, class_name="unlabelled"))
            message.threshold = 0.0
        else:
            self._label_info_pub = self.create_publisher(String, "~/label_info", qos)
            message = String(data=label_info_json(checkpoint, self.engine.model_name))
        self._label_info_pub.publish(message)

    def _publish_diagnostics(self) -> None:
        figures = self.stats.snapshot()
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: segmentation",
                                  hardware_id=str(self.engine.device))
        tc = self.pipeline.consistency.running_tc if self._settings["consistency_metric"] else None
        if figures["new_rejections"]:
            status.level = DiagnosticStatus.WARN
            status.message = f"rejected {figures['new_rejections']} frame(s): {figures['last_reject_reason']}"
        elif figures["received"] == 0:
            status.level = DiagnosticStatus.OK
            status.message = f"waiting for images on {self._input_topic}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"segmenting at {figures['fps']:.1f} fps"

        def fmt(value):
            return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

        values = {
            "received": figures["received"], "processed": figures["processed"],
            "dropped": figures["dropped"], "rejected": figures["rejected"],
            **{f"rejected_{reason}": count for reason, count in sorted(figures["rejected_by_reason"].items())},
            "last_reject_reason": figures["last_reject_reason"],
            "fps": figures["fps"],
            "latency_p50_ms": figures["latency_p50_ms"], "latency_p95_ms": figures["latency_p95_ms"],
            "model_p50_ms": figures["model_p50_ms"], "model_p95_ms": figures["model_p95_ms"],
            "resets": figures["resets"],
            **{f"resets_{key}": count for key, count in sorted(figures["resets_by_reason"].items())},
            "last_reset_reason": figures["last_reset_reason"],
            "device": str(self.engine.device), "model": self.engine.model_name,
            "temporal_model": self.engine.is_temporal, "input_topic": self._input_topic,
            "running_tc": tc,
        }
        status.values = [KeyValue(key=key, value=fmt(value)) for key, value in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def destroy_node(self):
        self._stop.set()
        self._queue.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        return super().destroy_node()


def label_info_json(checkpoint, model_name: str) -> str:
    """The class map as published on ~/label_info when vision_msgs is not installed."""
    return json.dumps({
        "format": LABEL_INFO_FORMAT,
        "model": model_name,
        "label_set": checkpoint.label_set,
        "ignore_id": IGNORE_ID,
        "classes": [{"id": i, "name": name, "color": list(map(int, checkpoint.palette[i]))
                     if i < len(checkpoint.palette) else [0, 0, 0]}
                    for i, name in enumerate(checkpoint.class_names)],
    })


def _load_cv_bridge():
    try:
        from cv_bridge import CvBridge

        return CvBridge()
    except Exception:  # not installed (pip-only ROS) or broken binary: the numpy path is used
        return None


def main(args=None) -> int:
    use_large_image_profile()  # before the first DDS participant; a user-set profile wins
    rclpy.init(args=args)
    node = None
    try:
        node = VideoSegNode()
        rclpy.spin(node)
    except StartupError as error:
        print(f"{NODE_NAME}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM / ros2 lifecycle shutdown: a normal exit
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
