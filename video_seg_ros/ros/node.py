"""``video_seg_node``: camera images in; labels, colour views, TC, camera_info and diagnostics out.

A thin rclpy adapter over :mod:`video_seg_ros.ros.pipeline` (queueing, reset policy, batching,
rendering and the TC metric live there and in the core, tested without ROS). One process serves
one camera (``image``) or several (parameter ``cameras``: ``N/image`` for each name N) with one
shared model; frames of different cameras that wait at the same time are segmented as one batch,
each camera with its own temporal memory, reset policy, queue, TC and diagnostics status.

The DDS callbacks only time-stamp a message and hand it to a bounded per-camera queue; one worker
thread decodes, segments and publishes, so a slow model never blocks the executor. With the
default ``frame_queue_size: 1`` the worker always takes each camera's newest frame and older
waiting frames are dropped and counted (keep-latest). With no subscriber on any of a camera's
outputs its frames are not segmented at all (counted as ``skipped``).

:class:`SegmenterMixin` holds the behaviour in lifecycle-shaped steps (configure, activate,
deactivate, cleanup); :class:`VideoSegNode` runs them all at start-up, and
:class:`video_seg_ros.ros.lifecycle_node.VideoSegLifecycleNode` runs them on lifecycle transitions.

Run: ``ros2 run video_seg_ros video_seg_node --ros-args --params-file config/video_seg.yaml
-r image:=/camera/image_raw``. Parameters, topics and services: README, "Running the node".
"""

from __future__ import annotations

import copy
import gc
import json
import sys
import threading
import time
from dataclasses import dataclass

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import (InvalidParameterValueException, ParameterException,
                              ParameterUninitializedException)
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger

from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
from video_seg_ros.engine import DeviceError, SegmentationEngine
from video_seg_ros.image_encoding import (FRAME_ENCODINGS, Frame, ImageDecodeError, check_data_length,
                                          check_image_size, compressed_to_frame, fill_image,
                                          image_to_frame)
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.ros.camera import Camera, scale_camera_info
from video_seg_ros.processes import install_stop_handlers
from video_seg_ros.ros.dds import use_large_image_profile
from video_seg_ros.ros.parameters import (CHECKED_NAMES, PARAMETERS, TEMPORAL_PARAMETERS, descriptor,
                                          normalise, temporal_settings, validate_choice)
from video_seg_ros.ros.pipeline import FrameQueue, OutputRequest, StreamPipeline, segment_streams

try:  # vision_msgs is optional: without it the class map goes out as JSON on ~/label_info
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

NODE_NAME = "video_seg_node"
LABEL_INFO_FORMAT = "video_seg_ros/label_info/1"


class StartupError(RuntimeError):
    """A configuration the node cannot start with; the message is printed as one line."""


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
    # A skipped frame's input gap still happened before the next processed frame; a backwards
    # jump (a looping bag) among skipped frames must not be hidden by later forward gaps.
    gaps = (successor.input_gap_s, dropped.input_gap_s)
    successor.input_gap_s = min(gaps) if min(gaps) < 0 else max(gaps)


class SegmenterMixin:
    """The node's behaviour, for an rclpy ``Node`` or ``LifecycleNode`` subclass.

    Steps: :meth:`_declare_parameters` (constructor), :meth:`_configure` (model, publishers,
    services, diagnostics), :meth:`_activate` (subscriptions, worker), :meth:`_deactivate`,
    :meth:`_cleanup`. Each raises :class:`StartupError` with a reason when it cannot run.
    """

    executable_name = NODE_NAME

    # ---- parameters --------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        self.engine = None
        self.cameras: list[Camera] = []
        self._queue: FrameQueue | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self._activated_at = time.monotonic()
        self._seg_services, self._seg_timers, self._plain_publishers = [], [], []
        for name, spec in PARAMETERS.items():
            try:
                if isinstance(spec.default, list):  # an empty default cannot carry its type
                    self.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor(name))
                else:
                    self.declare_parameter(name, spec.default, descriptor(name))
            except (InvalidParameterValueException, ParameterException) as error:
                raise StartupError(f"parameter '{name}': {error}") from error
            except TypeError as error:  # wrong type in the params file
                raise StartupError(f"parameter '{name}' has the wrong type: {error}") from error
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

    def _parameter_value(self, name: str):
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return list(PARAMETERS[name].default)

    def _read_settings(self) -> dict:
        settings = {name: normalise(name, self._parameter_value(name)) for name in PARAMETERS}
        for name in CHECKED_NAMES:
            reason = validate_choice(name, settings[name])
            if reason:
                raise StartupError(reason)
        try:
            temporal_settings(settings)
        except ValueError as error:
            raise StartupError(f"invalid temporal settings: {error}") from error
        settings["cameras"] = list(settings["cameras"])
        return settings

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject invalid values with a reason (ranges and read-only are checked by rclpy)."""
        for parameter in parameters:
            if parameter.name in CHECKED_NAMES:
                reason = validate_choice(parameter.name, parameter.value)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
        changed = {p.name: normalise(p.name, p.value) for p in parameters if p.name in TEMPORAL_PARAMETERS}
        if changed:
            try:  # the new values together with the current others, as the engine would get them
                temporal_settings({**self._temporal_values(), **changed})
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _temporal_values(self) -> dict:
        current = getattr(self, "_settings", None)
        if current is not None:
            return {name: current[name] for name in TEMPORAL_PARAMETERS}
        return {name: normalise(name, self._parameter_value(name)) for name in TEMPORAL_PARAMETERS}

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        known = [p for p in parameters if p.name in PARAMETERS]
        if not known or not self.cameras:
            return
        settings = dict(self._settings)
        for parameter in known:
            settings[parameter.name] = normalise(parameter.name, parameter.value)
        for camera in self.cameras:
            consistency = camera.pipeline.consistency
            if settings["consistency_metric"] and not self._settings["consistency_metric"]:
                consistency.reset()  # its previous frame is stale
            consistency.stride = settings["consistency_stride"]
            camera.pipeline.policy.gap_s = settings["reset_on_gap_s"]
            camera.pipeline.temporal_state = settings["temporal_state"]
        if any(p.name in TEMPORAL_PARAMETERS for p in known) and self.engine is not None:
            self.engine.set_temporal(temporal_settings(settings))  # applies from the worker's next frame
        self._settings = settings  # one assignment: the worker sees old or new, never a mix
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in known))

    # ---- configure: model, publishers, services ----------------------------------------------
    def _make_publisher(self, msg_type, topic: str, qos):
        """Output publisher; the lifecycle node makes lifecycle publishers."""
        return self.create_publisher(msg_type, topic, qos)

    def _configure(self) -> None:
        p = self._settings = self._read_settings()
        if p["cpu_threads"] > 0:
            torch.set_num_threads(p["cpu_threads"])
        precision = p["precision"]
        if not p["fp16"]:
            if precision == "auto":
                precision = "fp32"
            self.get_logger().warning(f"parameter fp16 is deprecated; use precision (now {precision})")
        try:
            checkpoint = load_checkpoint(p["checkpoint"])
            engine = SegmentationEngine(checkpoint, device=p["device"], precision=precision,
                                        backend=p["backend"], upsample=p["upsample"],
                                        min_agreement=p["precision_min_agreement"])
        except (CheckpointError, DeviceError, ValueError) as error:  # PrecisionError is a ValueError
            raise StartupError(str(error)) from error
        except Exception as error:  # a damaged state_dict, unknown architecture, backend failure
            raise StartupError(f"could not build the model from {p['checkpoint']}: "
                               f"{type(error).__name__}: {error}") from error
        # The engine ran its warm-up pass in the precision it chose (the first camera frame is not
        # slowed by lazy kernel initialisation, and a model that cannot run failed above).
        engine.set_temporal(temporal_settings(p))
        from video_seg_ros.metrics import OnlineConsistency  # after the model: import cost only on success

        self.engine = engine
        names = p["cameras"] or [""]
        self.cameras = [
            Camera(name, StreamPipeline(
                engine, reset_gap_s=p["reset_on_gap_s"], temporal_state=p["temporal_state"],
                consistency=OnlineConsistency(len(checkpoint.class_names), stride=p["consistency_stride"],
                                              max_width=p["consistency_max_width"], preset=p["flow_preset"],
                                              recent=p["consistency_window"]),
                stream=name or None))
            for name in names]
        self._queue = FrameQueue(p["frame_queue_size"], on_drop=_inherit_gap)
        self._cv_bridge = _load_cv_bridge()
        self._compressed = p["image_transport"] == "compressed" or p["use_compressed"]

        # Outputs: reliable, shallow history (images are large; late frames are useless).
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
        for camera in self.cameras:
            image_topic = self.resolve_topic_name(camera.topic("image"))
            camera.input_topic = image_topic.rstrip("/") + "/compressed" if self._compressed else image_topic
            # image_transport's rule: camera_info is the image topic's sibling.
            camera.camera_info_topic = image_topic.rsplit("/", 1)[0] + "/camera_info"
            for output, msg_type in (("labels", Image), ("color", Image), ("overlay", Image),
                                     ("confidence", Image), ("camera_info", CameraInfo)):
                camera.publishers[output] = self._make_publisher(msg_type, camera.private(output), output_qos)
            camera.publishers["consistency"] = self._make_publisher(Float32, camera.private("consistency"), 10)
            if camera.name:
                self._seg_services.append(self.create_service(
                    Trigger, camera.private("reset"), lambda request, response, c=camera: self._on_reset(
                        response, [c], c.private("reset"))))
        self._seg_services.append(self.create_service(
            Trigger, "~/reset", lambda request, response: self._on_reset(response, self.cameras, "~/reset")))
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._plain_publishers.append(self._diagnostics_pub)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._publish_label_info(checkpoint, latched)
        self._seg_timers.append(self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics))
        described = engine.describe()
        fallbacks = "; ".join(f"{what} fallback: {described[key]}" for what, key in
                              (("backend", "backend_fallback"), ("precision", "precision_fallback"))
                              if described[key])
        self.get_logger().info(
            f"configured: model {engine.model_name} on {engine.device} "
            f"(backend {engine.backend}, precision {engine.precision}: {described['precision_reason']}"
            f"{'; ' + fallbacks if fallbacks else ''}), "
            f"{len(checkpoint.class_names)} classes, temporal={'yes' if engine.is_temporal else 'no'}, "
            f"cameras: {', '.join(c.input_topic for c in self.cameras)} ({p['input_qos']})")

    # ---- activate / deactivate: subscriptions and the worker ---------------------------------
    def _input_qos(self) -> QoSProfile:
        # Reliable input keeps 10 samples in the reader: a burst of that size survives a busy executor.
        if self._settings["input_qos"] == "sensor_data":
            return copy.copy(qos_profile_sensor_data)  # QoS overrides edit the profile in place
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

    def _activate(self) -> None:
        for camera in self.cameras:
            kind, msg_type = ("compressed", CompressedImage) if self._compressed else ("raw", Image)
            camera.subscriptions.append(self.create_subscription(
                msg_type, camera.input_topic, lambda msg, c=camera, k=kind: self._on_message(c, msg, k),
                self._input_qos(),
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=lambda event, c=camera: self._on_incompatible_qos(c, event)),
                qos_overriding_options=QoSOverridingOptions.with_default_policies()))
            camera.subscriptions.append(self.create_subscription(
                CameraInfo, camera.camera_info_topic, lambda msg, c=camera: setattr(c, "camera_info", msg),
                qos_profile_sensor_data))
            camera.last_input_stamp = None
        self._stop.clear()
        self._activated_at = time.monotonic()
        self._active = True
        self._worker = threading.Thread(target=self._worker_loop, name="video_seg_worker", daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        """Stop taking frames: no subscription, no waiting frame, the worker finished; every
        camera's temporal state is cleared (frames after activate start a new stream)."""
        self._active = False
        for camera in self.cameras:
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions.clear()
        self._stop_worker()
        for camera in self.cameras:  # the worker has stopped: nothing else touches the state now
            camera.pipeline.reset()
            camera.pipeline.policy.forget()  # the first frame after activate is not a "gap"
            camera.stats.on_reset("deactivate", "node deactivated")

    def _stop_worker(self) -> None:
        """Finish the frame in progress and drop the waiting ones (no ROS call: also safe once
        the context is shut down, where destroying entities can block)."""
        self._active = False
        self._stop.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=30.0)
        self._worker = None
        if self._queue is not None:
            self._queue.clear()

    def _cleanup(self) -> None:
        """Release the model and every publisher, service and timer made by :meth:`_configure`."""
        if self._active:
            self._deactivate()
        for timer in self._seg_timers:
            self.destroy_timer(timer)
        for service in self._seg_services:
            self.destroy_service(service)
        for publisher in self._plain_publishers:
            self.destroy_publisher(publisher)
        for camera in self.cameras:
            for publisher in camera.publishers.values():
                self._destroy_output_publisher(publisher)
        self._seg_timers, self._seg_services, self._plain_publishers, self.cameras = [], [], [], []
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.release()  # frees the model (and CUDA cache)

    def _destroy_output_publisher(self, publisher) -> None:
        self.destroy_publisher(publisher)

    # ---- input -------------------------------------------------------------------------------
    def _on_message(self, camera: Camera, msg, kind: str) -> None:
        """DDS callback: never blocks; the worker takes it from the queue."""
        if not self._active:
            return
        received_at = time.monotonic()
        stamp = _stamp_seconds(msg.header.stamp)
        gap = 0.0 if camera.last_input_stamp is None else stamp - camera.last_input_stamp
        camera.last_input_stamp = stamp
        camera.frame_id = msg.header.frame_id
        dropped = self._queue.put(_Pending(msg, kind, received_at, gap), stream=camera.name)
        camera.stats.on_received(dropped, received_at)

    def _on_incompatible_qos(self, camera: Camera, event) -> None:
        try:
            policy = QoSPolicyKind(event.last_policy_kind).name
        except ValueError:
            policy = str(event.last_policy_kind)
        self.get_logger().warning(
            f"a publisher on {camera.input_topic} offers QoS incompatible with this subscription "
            f"({policy} policy; {self._settings['input_qos']} input): nothing is received from it. "
            f"Set input_qos, or qos_overrides.{camera.input_topic}.subscription.{policy.lower()}, "
            "to match the publisher")

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
        by_name = {camera.name: camera for camera in self.cameras}
        while not self._stop.is_set():
            batch = self._queue.get_batch(timeout=0.2)
            if not batch or self._stop.is_set():
                continue
            cameras = [(by_name[name], item) for name, item in batch]
            try:
                self._process(cameras)
            except Exception as error:  # never let one frame kill the worker
                for camera, _ in cameras:
                    self._reject(camera, "internal_error", f"{type(error).__name__}: {error}")

    def _reject(self, camera: Camera, reason: str, message: str) -> None:
        camera.stats.on_rejected(reason, message)
        where = f" from {camera.input_topic}" if camera.name else ""
        self.get_logger().warning(f"rejected a frame{where} ({reason}): {message}", throttle_duration_sec=5.0)

    def _process(self, cameras: list[tuple[Camera, _Pending]]) -> None:
        settings = self._settings
        work = []
        for camera, pending in cameras:
            if not camera.has_subscribers():
                camera.stats.on_skipped()
                camera.idle = True
                continue
            if camera.idle:  # its memory is from before the pause
                camera.pipeline.request_reset("idle", "inference resumed after frames were skipped "
                                                      "with no subscriber")
                camera.idle = False
            try:
                frame = self._decode(pending.msg, pending.kind)
                if frame.height < 2 or frame.width < 2:
                    raise ImageDecodeError("too_small", f"image {frame.width}x{frame.height} is too small "
                                                        "to segment (at least 2x2 pixels)")
            except ImageDecodeError as error:
                self._reject(camera, error.reason, str(error))
                continue
            publishers = camera.publishers
            request = OutputRequest(
                color=settings["publish_color"] and publishers["color"].get_subscription_count() > 0,
                overlay=settings["publish_overlay"] and publishers["overlay"].get_subscription_count() > 0,
                overlay_alpha=settings["overlay_alpha"],
                confidence=settings["publish_confidence"] and publishers["confidence"].get_subscription_count() > 0,
            )
            work.append((camera, pending, frame, request))
        if not work:
            return
        results = segment_streams([(camera.pipeline, frame, _stamp_seconds(pending.msg.header.stamp), request,
                                    pending.input_gap_s) for camera, pending, frame, request in work])
        for (camera, pending, frame, request), result in zip(work, results):
            self._publish(camera, pending, frame, request, result, settings)

    def _publish(self, camera: Camera, pending: _Pending, frame: Frame, request: OutputRequest, result,
                 settings: dict) -> None:
        header, publishers = pending.msg.header, camera.publishers
        if result.reset is not None:
            camera.stats.on_reset(*result.reset)
            where = f" ({camera.name})" if camera.name else ""
            self.get_logger().info(f"temporal state cleared{where}: {result.reset[1]}")
        publishers["labels"].publish(fill_image(Image(), result.labels, "mono8", header))
        info = camera.camera_info
        if info is not None:
            scaled = scale_camera_info(info, frame.width, frame.height)
            scaled.header = header
            publishers["camera_info"].publish(scaled)
        camera.stats.on_processed((time.monotonic() - pending.received_at) * 1000.0, result.model_ms,
                                  keyframe=result.keyframe)

        if result.confidence is not None:
            publishers["confidence"].publish(fill_image(Image(), result.confidence, "32FC1", header))
        if request.color or request.overlay:
            camera.pipeline.render(frame, result, request)
            for view in ("color", "overlay"):
                if view in result.extras:
                    publishers[view].publish(fill_image(Image(), result.extras[view], "rgb8", header))
        if settings["consistency_metric"]:
            sample = camera.pipeline.measure(frame, result.labels, result.flow)
            if sample is not None and sample.tc is not None:
                publishers["consistency"].publish(Float32(data=float(sample.tc)))

    # ---- services, class map, diagnostics ----------------------------------------------------
    def _on_reset(self, response, cameras: list[Camera], service: str):
        for camera in cameras:
            camera.pipeline.request_reset("service", f"{service} service called")
        which = ", ".join(c.name for c in cameras if c.name) or "the camera"
        response.success = True
        response.message = (f"temporal state (model memory, fused probabilities, keyframe clock and TC "
                            f"metric) of {which} is cleared before the next frame")
        return response

    def _publish_label_info(self, checkpoint, qos: QoSProfile) -> None:
        names = list(checkpoint.class_names)
        if LabelInfo is not None:
            publisher = self.create_publisher(LabelInfo, "~/label_info", qos)
            message = LabelInfo()
            message.header.stamp = self.get_clock().now().to_msg()
            message.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(names)]
            message.class_map.append(VisionClass(class_id=IGNORE_ID, class_name="unlabelled"))
            message.threshold = 0.0
        else:
            publisher = self.create_publisher(String, "~/label_info", qos)
            message = String(data=label_info_json(checkpoint, self.engine.model_name))
        self._plain_publishers.append(publisher)
        publisher.publish(message)

    def _camera_status(self, camera: Camera, now: float) -> DiagnosticStatus:
        figures = camera.stats.snapshot(now)
        settings, engine = self._settings, self.engine
        status = DiagnosticStatus(name=camera.status_name(self.get_fully_qualified_name()),
                                  hardware_id=camera.frame_id or camera.input_topic)
        since = figures["seconds_since_frame"]
        quiet_s = min(now - self._activated_at, since) if since is not None else now - self._activated_at
        stale_s = settings["diagnostics_stale_s"]
        consistency = camera.pipeline.consistency
        recent_tc = consistency.recent_tc if settings["consistency_metric"] else None
        flicker = settings["flicker_tc_threshold"]
        if not self._active:
            status.level, status.message = DiagnosticStatus.OK, "inactive: not subscribed to the camera"
        elif stale_s > 0 and quiet_s > stale_s:
            status.level = DiagnosticStatus.STALE
            status.message = f"no image on {camera.input_topic} for {quiet_s:.1f} s"
        elif figures["new_rejected"] and not figures["new_processed"] and not figures["new_skipped"]:
            status.level = DiagnosticStatus.ERROR
            status.message = (f"every frame of the last period was rejected ({figures['new_rejected']}): "
                              f"{figures['last_reject_reason']}")
        elif figures["new_rejected"]:
            status.level = DiagnosticStatus.WARN
            status.message = f"rejected {figures['new_rejected']} frame(s): {figures['last_reject_reason']}"
        elif figures["new_skipped"] and not figures["new_processed"]:
            status.level = DiagnosticStatus.OK
            status.message = "no subscriber on any output: inference skipped"
        elif figures["received"] == 0:
            status.level, status.message = DiagnosticStatus.OK, f"waiting for images on {camera.input_topic}"
        elif flicker > 0 and recent_tc is not None and recent_tc < flicker:
            status.level = DiagnosticStatus.WARN
            status.message = (f"flicker: online TC {recent_tc:.2f} over the last {consistency.recent_pairs} "
                              f"pair(s) is below flicker_tc_threshold {flicker:g}")
        else:
            status.level, status.message = DiagnosticStatus.OK, f"segmenting at {figures['fps']:.1f} fps"

        def fmt(value):
            return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

        temporal = engine.temporal_stats(camera.pipeline.stream)
        described = engine.describe()
        values = {
            "camera": camera.name, "input_topic": camera.input_topic,
            "received": figures["received"], "processed": figures["processed"],
            "dropped": figures["dropped"], "skipped_no_subscriber": figures["skipped"],
            "rejected": figures["rejected"],
            **{f"rejected_{reason}": count for reason, count in sorted(figures["rejected_by_reason"].items())},
            "last_reject_reason": figures["last_reject_reason"],
            "fps": figures["fps"], "seconds_since_frame": since,
            "latency_p50_ms": figures["latency_p50_ms"], "latency_p95_ms": figures["latency_p95_ms"],
            "keyframe_latency_p50_ms": figures["keyframe_latency_p50_ms"],
            "propagated_latency_p50_ms": figures["propagated_latency_p50_ms"],
            "model_p50_ms": figures["model_p50_ms"], "model_p95_ms": figures["model_p95_ms"],
            "resets": figures["resets"],
            **{f"resets_{key}": count for key, count in sorted(figures["resets_by_reason"].items())},
            "last_reset_reason": figures["last_reset_reason"],
            "frames_since_reset": camera.pipeline.frames_since_reset,
            "tc_pairs": consistency.pairs,
            "running_tc": consistency.running_tc if settings["consistency_metric"] else None,
            "recent_tc": recent_tc, "recent_tc_pairs": consistency.recent_pairs,
            "temporal_mode": temporal["mode"], "keyframe_share": temporal["keyframe_share"],
            "fused_confidence": temporal["fused_confidence"],
            **{key: described[key] or "" for key in (
                "device", "backend", "precision", "precision_reason", "precision_agreement", "precision_fallback",
                "backend_fallback")},
            "model": engine.model_name, "temporal_model": engine.is_temporal,
        }
        status.values = [KeyValue(key=key, value=fmt(value)) for key, value in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        if self.engine is None:
            return
        now = time.monotonic()
        array = DiagnosticArray(status=[self._camera_status(camera, now) for camera in self.cameras])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)


class VideoSegNode(SegmenterMixin, Node):
    """See the module docstring; raises :class:`StartupError` on an unusable configuration."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._declare_parameters()
            self._configure()
            self._activate()
        except StartupError as error:
            self.get_logger().error(str(error))  # reaches /rosout too, not only stderr
            raise
        self.get_logger().info("ready")

    def destroy_node(self):
        self._stop_worker()  # Node.destroy_node() destroys the subscriptions and publishers
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


def _ros_arguments_error(error: Exception) -> str:
    """rcl's start-up failure on one line, without its source locations, and what to do."""
    import re

    text = re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split()))
    return (f"{text}. Check the command's --ros-args: a --params-file must be YAML of the form "
            "'<node name or /**>: {ros__parameters: {name: value}}'")


def run_node(make_node, spin, executable: str, args=None) -> int:
    """The body of every node executable: init, build, spin, clean exit; 1 on a start-up error."""
    use_large_image_profile()  # before the first DDS participant; a user-set profile wins
    # Python's own handlers, not rclpy's: SIGTERM (launch, systemd) then leaves spin() as Ctrl-C
    # does; with rclpy's handler a SIGTERM left the process hanging at exit. Set explicitly: a
    # process started in the background by a shell inherits SIGINT as ignored.
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # RCLError: unparsable --ros-args, e.g. a malformed params file
        print(f"{executable}: error: {_ros_arguments_error(error)}", file=sys.stderr, flush=True)
        return 1
    install_stop_handlers()
    node = None
    try:
        node = make_node()
        # The model and libraries are loaded for good: keep the collector from scanning them again,
        # during the run and in the interpreter's final collection (which took tens of seconds
        # after Ctrl-C on a loaded 2-core machine).
        gc.freeze()
        spin(node)
    except StartupError as error:
        print(f"{executable}: error: {error}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM (KeyboardInterrupt) / context shut down: a normal exit
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args=None) -> int:
    return run_node(VideoSegNode, rclpy.spin, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
