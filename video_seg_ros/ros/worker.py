"""The node's frame worker: a bounded per-camera queue filled by the DDS callbacks and one
thread that decodes, segments (through :class:`~video_seg_ros.ros.pipeline.NodePipeline`) and
publishes, so a slow model never blocks the executor.

With ``frame_queue_size: 1`` the worker always takes each camera's newest frame; older waiting
frames are dropped and counted (keep-latest). With no subscriber on any of a camera's outputs
its frames are not segmented (``skipped``). A failure while processing one camera's frame
rejects that frame only (``internal_error``). Per camera, every received frame ends as exactly
one of processed, skipped, rejected or dropped (also the frames waiting at deactivate and
those arriving while the worker is stopped).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from sensor_msgs.msg import Image
from std_msgs.msg import Float32

from video_seg_ros.image_encoding import ImageDecodeError, fill_image
from video_seg_ros.ros.camera import Camera, scale_camera_info
from video_seg_ros.ros.conversions import load_cv_bridge, message_to_frame
from video_seg_ros.ros.frame_queue import FrameQueue, merge_input_gaps
from video_seg_ros.ros.pipeline import NodePipeline, OutputRequest, StreamItem
from video_seg_ros.runtime import HeapTrimmer

OPTIONAL_VIEWS = ("color", "overlay", "confidence")


def _stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


@dataclass
class _Pending:
    """A received message waiting for the worker."""

    msg: object
    kind: str  # "raw" or "compressed"
    received_at: float  # time.monotonic() in the DDS callback
    input_gap_s: float  # largest stamp gap in the input since the previous waiting frame


def _inherit_gap(dropped: _Pending, successor: _Pending) -> None:
    successor.input_gap_s = merge_input_gaps(dropped.input_gap_s, successor.input_gap_s)


class FrameWorker:
    """Queue and worker thread of the node's cameras; ``logger``: the node's rclpy logger."""

    def __init__(self, pipeline: NodePipeline, cameras: list[Camera], logger):
        self.pipeline, self.cameras, self.logger = pipeline, cameras, logger
        self.running = False
        self._by_name = {camera.name: camera for camera in cameras}
        self._queue = FrameQueue(pipeline.settings["frame_queue_size"], on_drop=_inherit_gap)
        self._cv_bridge = load_cv_bridge()
        # One thread for the worker's whole life, idle while inactive: a new thread per activate
        # took a new malloc arena each time, and the process grew with every lifecycle cycle.
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._wake = threading.Event()  # set while running
        self._busy = threading.Lock()  # held while a batch is processed
        # Without it freed per-frame temporaries stay resident and RSS ratchets for hours.
        self._heap = HeapTrimmer()

    def receive(self, camera: Camera, msg, kind: str) -> None:
        """DDS callback (``kind``: "raw" or "compressed"): never blocks."""
        received_at = time.monotonic()
        if not self.running:
            camera.stats.on_received(1, received_at)  # received and dropped: not taking frames
            return
        stamp = _stamp_seconds(msg.header.stamp)
        gap = 0.0 if camera.last_input_stamp is None else stamp - camera.last_input_stamp
        camera.last_input_stamp = stamp
        dropped = self._queue.put(_Pending(msg, kind, received_at, gap), stream=camera.name)
        camera.stats.on_received(dropped, received_at)

    def start(self) -> None:
        self.running = True
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, name="video_seg_worker", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Finish the frame in progress; the waiting ones are dropped and counted per camera
        (no ROS call: also safe once the context is shut down). The thread stays, idle."""
        self.running = False
        self._wake.clear()
        with self._busy:  # returns once the batch in progress is done
            pass
        for name, count in self._queue.clear().items():
            self._by_name[name].stats.on_dropped(count)

    def close(self) -> None:
        self.stop()
        self._closed.set()
        self._wake.set()
        self._queue.close()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30.0)
        self._thread = None

    def _loop(self) -> None:
        threads = self.pipeline.settings["cpu_threads"]
        if threads > 0:
            torch.set_num_threads(threads)
        while not self._closed.is_set():
            if not self.running:
                self._wake.wait(timeout=0.2)
                continue
            taken = self._queue.get_batch(timeout=0.2)
            with self._busy:
                batch = [(self._by_name[name], pending) for name, pending in taken]
                if not self.running:  # taken just as the worker was stopped
                    for camera, _ in batch:
                        camera.stats.on_dropped(1)
                    continue
                try:
                    self._process(batch)
                except Exception as error:  # outside the per-camera guards: still never stop
                    for camera, _ in batch:
                        self._reject_internal(camera, error)
            self._heap.maybe_release()  # outside the lock: stop() need not wait for it

    def _reject(self, camera: Camera, reason: str, message: str) -> None:
        camera.stats.on_rejected(reason, message)
        where = f" from {camera.input_topic}" if camera.name else ""
        self.logger.warning(
            f"rejected a frame{where} ({reason}): {message}", throttle_duration_sec=5.0
        )

    def _reject_internal(self, camera: Camera, error: Exception) -> None:
        self._reject(camera, "internal_error", f"{type(error).__name__}: {error}")

    def _item(self, camera: Camera, pending: _Pending, settings: dict) -> StreamItem | None:
        """The pipeline's work for one frame; None when nobody needs it (counted as skipped)."""
        if not camera.has_subscribers():
            camera.stats.on_skipped()
            camera.idle = True
            return None
        if camera.idle:  # its memory is from before the pause
            camera.pipeline.request_reset(
                "idle", "inference resumed after frames were skipped with no subscriber"
            )
            camera.idle = False
        frame = message_to_frame(
            pending.msg, pending.kind, settings["max_input_pixels"], self._cv_bridge
        )
        wanted = {
            view: settings[f"publish_{view}"]
            and camera.publishers[view].get_subscription_count() > 0
            for view in OPTIONAL_VIEWS
        }
        request = OutputRequest(overlay_alpha=settings["overlay_alpha"], **wanted)
        stamp = _stamp_seconds(pending.msg.header.stamp)
        return StreamItem(camera.pipeline, frame, stamp, request, pending.input_gap_s)

    def _process(self, batch: list[tuple[Camera, _Pending]]) -> None:
        settings = self.pipeline.settings  # one snapshot for the whole batch
        work = []
        for camera, pending in batch:
            try:
                item = self._item(camera, pending, settings)
            except ImageDecodeError as error:
                self._reject(camera, error.reason, str(error))
                continue
            except Exception as error:
                self._reject_internal(camera, error)
                continue
            if item is not None:
                work.append((camera, pending, item))
        outcomes = self.pipeline.process([item for _, _, item in work])
        for (camera, pending, item), outcome in zip(work, outcomes):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                self._publish(camera, pending, item, outcome)
            except Exception as error:
                self._reject_internal(camera, error)

    def _publish(self, camera: Camera, pending: _Pending, item: StreamItem, result) -> None:
        header, publishers, frame = pending.msg.header, camera.publishers, item.frame
        if result.reset is not None:
            camera.stats.on_reset(*result.reset)
            where = f" ({camera.name})" if camera.name else ""
            self.logger.info(f"temporal state cleared{where}: {result.reset[1]}")
        # Every message is made before the first goes out: a failure publishes nothing.
        outgoing = [("labels", fill_image(Image(), result.labels, "mono8", header))]
        if camera.camera_info is not None:
            scaled = scale_camera_info(camera.camera_info, frame.width, frame.height)
            scaled.header = header
            outgoing.append(("camera_info", scaled))
        if result.confidence is not None:
            outgoing.append(
                ("confidence", fill_image(Image(), result.confidence, "32FC1", header))
            )
        for view in ("color", "overlay"):
            if view in result.extras:
                outgoing.append((view, fill_image(Image(), result.extras[view], "rgb8", header)))
        if result.tc is not None:
            outgoing.append(("consistency", Float32(data=result.tc)))
        for output, message in outgoing:
            publishers[output].publish(message)
        latency_ms = (time.monotonic() - pending.received_at) * 1000.0
        camera.stats.on_processed(latency_ms, result.model_ms, keyframe=result.keyframe)
        camera.frame_id = header.frame_id  # only frames that went through name the camera
