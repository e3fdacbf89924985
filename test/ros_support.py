"""Helpers for tests that talk to real ROS 2 processes (node tests, bag replay tests).

- One random ``ROS_DOMAIN_ID`` per test session (:func:`session_domain_id`), so parallel runs and
  other ROS processes on the machine do not see each other.
- The Fast DDS large-image profile (config/fastdds_large_images.xml) in this process and in every
  child (:func:`ros_environment`), so full-size frames cross process boundaries.
- :class:`RosProbe`: a test-side rclpy node in its own context, spun in a background thread, with
  helpers to publish, collect messages and call services.
- :class:`NodeProcess`: ``video_seg_node`` (or ``video_seg_lifecycle_node``) started as its
  console script with a parameters file.
- :func:`make_tiny_memory_checkpoint`: a tiny checkpoint whose memory visibly matters.

Import this module only from tests that need rclpy: ``pytest.importorskip("rclpy")`` first.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from video_seg_ros.processes import LoggedProcess
from video_seg_ros.ros.dds import PROFILE_ENV, ros_process_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_large_images.xml"
CLIENT_SETTLE_S = 0.3  # after a new service client first sees its server

_DOMAIN_ID: int | None = None


def session_domain_id() -> int:
    """A ROS domain id chosen at random once per process (range 10..99: valid UDP port ranges)."""
    global _DOMAIN_ID
    if _DOMAIN_ID is None:
        _DOMAIN_ID = random.SystemRandom().randint(10, 99)
    return _DOMAIN_ID


def ros_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ROS processes of this test session: domain id, Fast DDS profile, no
    buffering."""
    env = ros_process_environment(session_domain_id(), base)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env[PROFILE_ENV] = str(FASTDDS_PROFILE)  # the tests always use this checkout's profile
    return env


def configure_this_process() -> None:
    """Apply :func:`ros_environment` to os.environ; call before the first rclpy.init."""
    os.environ.update(ros_environment())


def write_params_file(path: Path, parameters: dict[str, Any], node_name: str = "/**") -> Path:
    """A ROS 2 parameters YAML for ``node_name`` (wildcard by default)."""
    path = Path(path)
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": parameters}}, sort_keys=False))
    return path


def make_tiny_checkpoint(
    path: Path, num_classes: int = 20, size: tuple[int, int] = (64, 32), seed: int = 0
) -> Path:
    """The tests' tiny random-init ESPNet (test/checkpoints.py) saved at ``path``; model input
    ``size`` (W, H)."""
    from checkpoints import make_tiny_espnet_checkpoint

    return make_tiny_espnet_checkpoint(path, num_classes=num_classes, size=size, seed=seed)


def make_tiny_memory_checkpoint(
    path: Path, size: tuple[int, int] = (64, 32), seed: int = 1
) -> Path:
    """:func:`checkpoints.random_memory_checkpoint` saved at ``path``."""
    from checkpoints import random_memory_checkpoint

    return random_memory_checkpoint(size, seed).save(path)


def _console_script(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


def lifecycle_node_command() -> list[str]:
    """The installed ``video_seg_lifecycle_node`` console script (else ``python -m``)."""
    return _console_script("video_seg_lifecycle_node", "video_seg_ros.ros.lifecycle_node")


def node_command() -> list[str]:
    """The installed ``video_seg_node`` console script, else ``python -m
    video_seg_ros.ros.executable``."""
    return _console_script("video_seg_node", "video_seg_ros.ros.executable")


class NodeProcess(LoggedProcess):
    """``video_seg_node`` in a subprocess with a parameters file; output goes to a log file.

    Args:
        params_file: ROS 2 parameters YAML.
        log_path: where stdout+stderr are written (read it with :meth:`output`).
        remaps: ``{"image": "/camera/image"}`` -> ``-r image:=/camera/image``.
        name: node name (``-r __node:=name``), so topics are ``/<name>/labels`` etc.
        env: extra environment variables of the node process (e.g. the bf16 probe's answer).
    """

    def __init__(
        self,
        params_file: Path,
        log_path: Path,
        remaps: dict[str, str] | None = None,
        name: str = "video_seg_node",
        command: list[str] | None = None,
        parameters: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ):
        args = ["--ros-args", "--params-file", str(params_file), "-r", f"__node:={name}"]
        for source, target in (remaps or {}).items():
            args += ["-r", f"{source}:={target}"]
        for key, value in (parameters or {}).items():  # -p name:=value (YAML syntax)
            args += ["-p", f"{key}:={value}"]
        super().__init__(
            (command or node_command()) + args,
            log_path,
            env={**ros_environment(), **(env or {})},
            cwd=REPO_ROOT,
            name=name,  # the node name doubles as the process's name in errors
        )

    def topic(self, suffix: str) -> str:
        return f"/{self.name}/{suffix}"

    def wait_exit(self, timeout: float) -> int:
        """The exit code; a process still running after ``timeout`` is killed."""
        code = self.wait(timeout)
        return self.stop(signal.SIGKILL) if code is None else self.stop()


class RosProbe:
    """A test-side rclpy node in a private context, spun by a background thread.

    Use as a context manager. Messages on subscribed topics are appended to lists returned by
    :meth:`collect`; :meth:`wait_for` polls a condition with a deadline.
    """

    def __init__(self, name: str = "test_probe"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        configure_this_process()
        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context, domain_id=session_domain_id())
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self._closing = False
        self._clients: dict = {}
        self.spin_error: BaseException | None = None
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as error:  # a failing callback: kept, and raised by close() / call()
            if not self._closing:
                self.spin_error = error

    def _check_spin(self):
        if self.spin_error is not None:
            raise RuntimeError(
                f"the probe's executor thread failed: {self.spin_error!r}"
            ) from self.spin_error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._closing = True
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)
        self._check_spin()

    def collect(
        self, msg_type, topic: str, qos=10, keep: Callable[[Any], Any] | None = None
    ) -> list:
        """Subscribe and return the list messages (or ``keep(msg)``) are appended to."""
        received: list = []

        def callback(msg):
            with self._lock:
                received.append(keep(msg) if keep else msg)

        self.node.create_subscription(msg_type, topic, callback, qos)
        return received

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    @staticmethod
    def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.02):
        """Poll ``condition`` until it returns something truthy; returns it, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                return None
            time.sleep(interval)

    def call(self, srv_type, name: str, request=None, timeout: float = 10.0):
        """Call a service and return its response (None on timeout)."""
        self._check_spin()
        # One client per service, kept: a fresh client's response reader may not be matched by
        # the server yet when the request arrives, and a response written before that is lost
        # (seen as a ~/change_state call that never answered on a loaded CI machine).
        key = (srv_type, name)
        fresh = key not in self._clients
        if fresh:
            self._clients[key] = self.node.create_client(srv_type, name)
        client = self._clients[key]
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        if fresh:
            time.sleep(CLIENT_SETTLE_S)  # the server's side of the matching may lag the client's
        future = client.call_async(request if request is not None else srv_type.Request())
        self.wait_for(future.done, timeout)
        return future.result() if future.done() else None

    def wait_for_subscriber(self, publisher, timeout: float = 20.0) -> bool:
        return bool(self.wait_for(lambda: publisher.get_subscription_count() > 0, timeout))


def image_message(pixels: np.ndarray, encoding: str, stamp_s: float, frame_id: str = "camera"):
    """A sensor_msgs/Image with the given pixels and header."""
    from sensor_msgs.msg import Image

    from video_seg_ros.image_encoding import fill_image

    msg = fill_image(Image(), pixels, encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = int(stamp_s)
    msg.header.stamp.nanosec = int(round((stamp_s - int(stamp_s)) * 1e9))
    return msg


def newest_diagnostics(
    diagnostics: list, name: str, condition=lambda values: True, since: int = 0
) -> dict[str, str] | None:
    """The values of the newest status named ``name`` among ``diagnostics[since:]`` (collected
    DiagnosticArrays) for which ``condition`` holds, or None; poll it with RosProbe.wait_for."""
    for array in reversed(diagnostics[since:]):
        values = diagnostics_values(array, name=name)
        if values is not None and condition(values):
            return values
    return None


def diagnostics_values(
    array_msg, name_contains: str = "segmentation", name: str | None = None
) -> dict[str, str] | None:
    """Key/values of the first status in a DiagnosticArray whose name is ``name`` (or contains
    ``name_contains``), with ``_level``, ``_message``, ``_name`` and ``_hardware_id`` added."""
    for status in array_msg.status:
        if status.name == name if name is not None else name_contains in status.name:
            values = {kv.key: kv.value for kv in status.values}
            values["_level"] = (
                int.from_bytes(status.level, "little")
                if isinstance(status.level, bytes)
                else int(status.level)
            )
            values["_message"] = status.message
            values["_name"] = status.name
            values["_hardware_id"] = status.hardware_id
            return values
    return None
