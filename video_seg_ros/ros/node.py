"""``VideoSegNode``: camera images in; labels, colour views, TC, camera_info and diagnostics out.

One rclpy lifecycle node serves both executables (:mod:`video_seg_ros.ros.executable`):
``video_seg_node`` configures and activates it at start (read-only parameter ``autostart``
true), ``video_seg_lifecycle_node`` waits for lifecycle transitions (``autostart`` false):

- configure: load the checkpoint, build the engine, create publishers, services and
  diagnostics; a bad configuration returns FAILURE (the node stays unconfigured) and logs why;
- activate: subscribe to the camera(s) and start the worker;
- deactivate: unsubscribe and finish the frame in progress; waiting frames are dropped
  (counted), every camera's temporal state is cleared;
- cleanup: release the model and everything configure made; shutdown: exit with status 0.

The frame work is ROS-free (:class:`video_seg_ros.ros.pipeline.NodePipeline`) behind the
queue and worker thread of :mod:`video_seg_ros.ros.worker`. One process serves one camera
(``image``) or several (parameter ``cameras``: ``N/image`` for each name N) with one model.

Run: ``ros2 run video_seg_ros video_seg_node --ros-args --params-file config/video_seg.yaml
-r image:=/camera/image_raw``. Parameters, topics and services: README, "Running the node".
"""

from __future__ import annotations

import time

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import (
    InvalidParameterValueException,
    ParameterException,
    ParameterUninitializedException,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import Trigger

from video_seg_ros.ros.camera import Camera
from video_seg_ros.ros.diagnostics import camera_status
from video_seg_ros.ros.label_info import label_info_message
from video_seg_ros.ros.parameters import (
    PARAMETERS,
    TEMPORAL_PARAMETERS,
    change_error,
    descriptor,
    normalise,
    read_settings,
    temporal_settings,
)
from video_seg_ros.ros.pipeline import NodePipeline
from video_seg_ros.ros.qos import CAMERA_INFO_QOS, LATCHED_QOS, OUTPUT_QOS, input_qos
from video_seg_ros.ros.worker import FrameWorker

NODE_NAME = "video_seg_node"


class StartupError(RuntimeError):
    """A configuration the node cannot start with; the message is printed as one line."""


class VideoSegNode(LifecycleNode):
    """See the module docstring. ``autostart``: the default of the read-only ``autostart``
    parameter (the executable's choice); when true, a configuration the node cannot start with
    raises :class:`StartupError` from the constructor."""

    def __init__(self, autostart: bool = True, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.engine = None
        self.pipeline: NodePipeline | None = None
        self.cameras: list[Camera] = []
        self.exit_requested = False  # the executable stops spinning once shutdown has answered
        self._worker: FrameWorker | None = None
        self._active = False
        self._activated_at = time.monotonic()
        self._failure = ""
        self._seg_services, self._seg_timers, self._plain_publishers = [], [], []
        try:
            self._declare_parameters(autostart)
        except StartupError as error:
            self.get_logger().error(str(error))  # reaches /rosout too, not only stderr
            raise
        if self.get_parameter("autostart").value:
            for transition in (self.trigger_configure, self.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    raise StartupError(self._failure)  # already logged by _step
            self.get_logger().info("ready")

    # ---- parameters --------------------------------------------------------------------------
    def _declare_parameters(self, autostart: bool) -> None:
        for name, spec in PARAMETERS.items():
            # autostart's default is the executable's (true: video_seg_node, false:
            # video_seg_lifecycle_node), so it is not in config/video_seg.yaml.
            default = autostart if name == "autostart" else spec.default
            try:
                if isinstance(default, list):  # an empty default cannot carry its type
                    self.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor(name))
                else:
                    self.declare_parameter(name, default, descriptor(name))
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

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject invalid values with a reason (ranges and read-only are checked by rclpy)."""
        if self.pipeline is not None:
            current = self.pipeline.settings
        else:
            current = {name: normalise(name, self._parameter_value(name)) for name in PARAMETERS}
        reason = change_error({p.name: p.value for p in parameters}, current)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        known = [p for p in parameters if p.name in PARAMETERS]
        if not known or self.pipeline is None:
            return  # configure reads every value afresh
        settings = dict(self.pipeline.settings)
        for parameter in known:
            settings[parameter.name] = normalise(parameter.name, parameter.value)
        temporal = None
        if any(p.name in TEMPORAL_PARAMETERS for p in known):
            temporal = temporal_settings(settings)
        self.pipeline.apply(settings, temporal)  # applies from the worker's next frame
        self.get_logger().info(
            "parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in known)
        )

    # ---- lifecycle transitions ---------------------------------------------------------------
    def _step(self, name: str, step) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition callback into ERROR without a word: say why.
        try:
            step()
        except StartupError as error:
            self._failure = str(error)
            self.get_logger().error(f"{name} failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:
            self._failure = f"{type(error).__name__}: {error}"
            self.get_logger().error(f"{name} failed: {self._failure}")
            return TransitionCallbackReturn.ERROR
        self.get_logger().info(f"{name}: done")
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("configure", self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._cleanup()  # whatever configure made before it failed
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        return self._step("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("deactivate", self._deactivate)  # before the publishers go quiet
        return (
            result if result != TransitionCallbackReturn.SUCCESS else super().on_deactivate(state)
        )

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._step("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._step("shutdown", self._cleanup)
        self.exit_requested = True
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self._step("error recovery", self._cleanup)
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def destroy_node(self):
        self._stop_worker()  # Node.destroy_node() destroys the subscriptions and publishers
        result = super().destroy_node()
        # rclpy's LifecycleNode never destroys its state machine, which keeps the rcl node and
        # so the DDS participant alive: Fast DDS then left its shared-memory segment (64 MB with
        # the large-image profile) in /dev/shm at every exit, 18 GB after a day of tests.
        self._state_machine.destroy_when_not_in_use()
        return result

    # ---- configure: model, publishers, services ----------------------------------------------
    def _configure(self) -> None:
        try:
            settings = read_settings(self._parameter_value)
            if settings["cpu_threads"] > 0:
                torch.set_num_threads(settings["cpu_threads"])
            self.pipeline, checkpoint = NodePipeline.build(settings, self.get_logger().warning)
        except ValueError as error:  # ConfigurationError too
            raise StartupError(str(error)) from error
        self.engine = self.pipeline.engine
        self.cameras = [Camera(name, stream) for name, stream in self.pipeline.streams.items()]
        self._worker = FrameWorker(self.pipeline, self.cameras, self.get_logger())
        self._compressed = (
            settings["image_transport"] == "compressed" or settings["use_compressed"]
        )
        if settings["use_compressed"]:
            self.get_logger().warning(
                "parameter use_compressed is deprecated; use image_transport: compressed"
            )
        for camera in self.cameras:
            self._make_camera_outputs(camera)
        self._seg_services.append(
            self.create_service(
                Trigger,
                "~/reset",
                lambda request, response: self._on_reset(response, self.cameras, "~/reset"),
            )
        )
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        msg_type, message = label_info_message(
            checkpoint, self.engine.model_name, self.get_clock().now().to_msg()
        )
        label_info = self.create_publisher(msg_type, "~/label_info", LATCHED_QOS)
        label_info.publish(message)
        self._plain_publishers += [self._diagnostics_pub, label_info]
        self._seg_timers.append(
            self.create_timer(settings["diagnostics_period_s"], self._publish_diagnostics)
        )
        inputs = [camera.input_topic for camera in self.cameras]
        self.get_logger().info(f"configured: {self.pipeline.summary(inputs)}")

    def _make_camera_outputs(self, camera: Camera) -> None:
        image_topic = self.resolve_topic_name(camera.topic("image"))
        camera.input_topic = (
            image_topic.rstrip("/") + "/compressed" if self._compressed else image_topic
        )
        # image_transport's rule: camera_info is the image topic's sibling.
        camera.camera_info_topic = image_topic.rsplit("/", 1)[0] + "/camera_info"
        for output, msg_type in (
            ("labels", Image),
            ("color", Image),
            ("overlay", Image),
            ("confidence", Image),
            ("camera_info", CameraInfo),
        ):
            camera.publishers[output] = self.create_lifecycle_publisher(
                msg_type, camera.private(output), OUTPUT_QOS
            )
        camera.publishers["consistency"] = self.create_lifecycle_publisher(
            Float32, camera.private("consistency"), 10
        )
        if camera.name:
            self._seg_services.append(
                self.create_service(
                    Trigger,
                    camera.private("reset"),
                    lambda request, response, c=camera: self._on_reset(
                        response, [c], c.private("reset")
                    ),
                )
            )

    # ---- activate / deactivate / cleanup -----------------------------------------------------
    def _activate(self) -> None:
        kind, msg_type = ("compressed", CompressedImage) if self._compressed else ("raw", Image)
        for camera in self.cameras:
            camera.subscriptions.append(
                self.create_subscription(
                    msg_type,
                    camera.input_topic,
                    lambda msg, c=camera, k=kind: self._worker.receive(c, msg, k),
                    input_qos(self.pipeline.settings["input_qos"]),
                    event_callbacks=SubscriptionEventCallbacks(
                        incompatible_qos=lambda event, c=camera: self._on_incompatible_qos(
                            c, event
                        )
                    ),
                    qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                )
            )
            camera.subscriptions.append(
                self.create_subscription(
                    CameraInfo,
                    camera.camera_info_topic,
                    lambda msg, c=camera: setattr(c, "camera_info", msg),
                    CAMERA_INFO_QOS,
                )
            )
            camera.last_input_stamp = None
        self._activated_at = time.monotonic()
        self._active = True
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
            camera.pipeline.start_over()  # the first frame after activate is not a "gap"
            camera.stats.on_reset("deactivate", "node deactivated")

    def _stop_worker(self) -> None:
        """Finish the frame in progress and drop the waiting ones (no ROS call)."""
        self._active = False
        if self._worker is not None:
            self._worker.stop()

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
                self.destroy_lifecycle_publisher(publisher)
        self._seg_timers, self._seg_services, self._plain_publishers, self.cameras = [], [], [], []
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        self.pipeline = None
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.release()  # frees the model (and CUDA cache)

    # ---- input -------------------------------------------------------------------------------
    def _on_incompatible_qos(self, camera: Camera, event) -> None:
        try:
            policy = QoSPolicyKind(event.last_policy_kind).name
        except ValueError:
            policy = str(event.last_policy_kind)
        self.get_logger().warning(
            f"a publisher on {camera.input_topic} offers QoS incompatible with this subscription "
            f"({policy} policy; {self.pipeline.settings['input_qos']} input): nothing is "
            f"received from it. Set input_qos, or qos_overrides.{camera.input_topic}."
            f"subscription.{policy.lower()}, to match the publisher"
        )

    # ---- services, diagnostics ---------------------------------------------------------------
    def _on_reset(self, response, cameras: list[Camera], service: str):
        for camera in cameras:
            camera.pipeline.request_reset("service", f"{service} service called")
        which = ", ".join(c.name for c in cameras if c.name) or "the camera"
        response.success = True
        response.message = (
            f"temporal state (model memory, fused probabilities, keyframe clock "
            f"and TC metric) of {which} is cleared before the next frame"
        )
        return response

    def _camera_status(self, camera: Camera, now: float) -> DiagnosticStatus:
        figures = camera.stats.snapshot(now)
        since = figures["seconds_since_frame"]
        quiet_s = (
            now - self._activated_at if since is None else min(now - self._activated_at, since)
        )
        level, message, values = camera_status(
            camera.name,
            camera.input_topic,
            figures,
            camera.pipeline,
            self.engine,
            self.pipeline.settings,
            self._active,
            quiet_s,
        )
        return DiagnosticStatus(
            level=bytes([level]),
            message=message,
            name=camera.status_name(self.get_fully_qualified_name()),
            hardware_id=camera.frame_id or camera.input_topic,
            values=[KeyValue(key=key, value=value) for key, value in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        if self.engine is None or self.pipeline is None:
            return
        now = time.monotonic()
        array = DiagnosticArray(status=[self._camera_status(c, now) for c in self.cameras])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)
