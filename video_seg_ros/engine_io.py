"""The engine's edges: the device and model it is given, the frames that come in and the results
that go out. No ROS here.

:class:`FrameCodec` applies the preprocessing a checkpoint declares (uint8 frames -> the
normalised (N, 3, h, w) float tensor every backend takes) and the postprocessing (logits
(N, classes, h, w) -> class ids and confidence at the frame size), in this one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from video_seg_ros.checkpoint import Checkpoint, check_weights_fit, output_class_lookup
from video_seg_ros.models import build_from_checkpoint

_CV2_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


#: How predictions reach the frame size; "auto" = "logits" on CUDA, "labels" on the CPU, where
#: resizing 20 score maps to 2048x1024 costs about as much as the network itself (measured 494 vs
#: 109 ms) for under 0.1 point of pixel accuracy.
UPSAMPLE_MODES = ("auto", "logits", "labels")


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> first CUDA device if any, else CPU; ``cuda[:N]`` must exist."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{device}' requested but no CUDA device is available here; "
                "use 'cpu' or 'auto'."
            )
        try:
            resolved = torch.device(device if ":" in device else "cuda:0")
        except RuntimeError as error:
            raise DeviceError(
                f"cannot parse device '{device}'; use auto, cpu or cuda[:N]."
            ) from error
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{device}' requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
        return resolved
    raise DeviceError(f"unknown device '{device}'; use auto, cpu or cuda[:N].")


@dataclass
class SegmentationResult:
    """One frame's output at the frame's own resolution.

    With temporal fusion (:mod:`video_seg_ros.temporal`) ``labels`` and ``confidence`` are those of
    the fused probabilities, ``flow`` is the flow of this frame to its stream's previous frame
    (reusable, e.g. by :class:`~video_seg_ros.metrics.OnlineConsistency`), and ``keyframe`` says
    whether the network ran on this frame (always True in modes off and fuse).
    """

    labels: np.ndarray  # (H, W) uint8 class ids, IGNORE_ID = unlabelled
    confidence: np.ndarray | None  # (H, W) float32 max (fused) probability, if requested
    model_ms: float  # everything the engine did for this frame, milliseconds
    keyframe: bool = True  # the network ran on this frame
    flow: np.ndarray | None = None  # (h, w, 2) float32 flow this frame -> previous one (flow size)
    network_ms: float = 0.0  # preprocessing + network, this frame's share (mode off: all)
    flow_ms: float = 0.0  # optical flow, warp-error check and warp
    fusion_ms: float = 0.0  # blend and postprocessing (argmax, resize)


class FrameCodec:
    """A checkpoint's preprocessing and postprocessing on ``device``; ``upsample`` is
    ``"logits"`` or ``"labels"`` (see :data:`UPSAMPLE_MODES`)."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, upsample: str):
        pre = checkpoint.preprocessing
        self.device = device
        self.upsample = upsample
        self.input_size = (pre.input_width, pre.input_height)
        self._interpolation = _CV2_INTERPOLATION[pre.interpolation]
        self._channel_order = pre.channel_order
        std = torch.tensor(pre.std, dtype=torch.float32)
        self._mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._factor = (pre.scale / std).to(device).view(1, 3, 1, 1)
        self._output_to_class = output_class_lookup(checkpoint.output_to_class, device)

    def preprocess(self, frames, channel_order):
        """(H, W, 3) uint8 frames in ``channel_order`` -> the normalised (N, 3, h, w) float
        tensor on the device."""
        if channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order must be 'rgb' or 'bgr'")
        width, height = self.input_size
        # Resize in float, as the source repositories do: rounding resized pixels to uint8
        # moves ESPNet's logits by up to 0.7 (its normalised inputs span only about +-0.02).
        resized = [
            frame
            if frame.shape[:2] == (height, width)
            else cv2.resize(
                frame.astype(np.float32), (width, height), interpolation=self._interpolation
            )
            for frame in frames
        ]
        host = torch.from_numpy(
            np.stack(resized)
        )  # (N, h, w, 3) uint8, or float32 when any was resized
        if channel_order != self._channel_order:
            host = host.flip(-1)
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self._mean) * self._factor).contiguous()

    def postprocess(self, logits, size, with_confidence):
        """Logits (N, classes, h, w) -> class ids (N, H, W) uint8 at ``size`` (H, W) and, if
        asked, the max softmax (N, H, W) float32 (else ``None``)."""
        if self.upsample == "logits" and logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        scores, index = channel_max(logits)
        confidence = None
        if with_confidence:
            # max softmax = 1 / sum(exp(l - max l)), without materialising the softmax.
            confidence = 1.0 / torch.exp(logits - scores.unsqueeze(1)).sum(dim=1)
        return self._finish(index, confidence, size)

    def postprocess_probabilities(self, probabilities, size, with_confidence):
        """As :meth:`postprocess`, from class probabilities (N, classes, h, w) that sum to 1 per
        pixel (fused ones): their argmax and maximum, without the logarithm."""
        if self.upsample == "logits" and probabilities.shape[-2:] != size:
            # Interpolated as log-probabilities, like logits.
            return self.postprocess(
                torch.log(probabilities.clamp_min(1e-12)), size, with_confidence
            )
        scores, index = channel_max(probabilities)
        return self._finish(index, scores if with_confidence else None, size)

    def labels_from_index(self, index, size):
        """Class ids (N, H, W) uint8 at ``size`` from the index of each pixel's largest output
        (N, h, w), e.g. taken by the backend."""
        return self._finish(index.long(), None, size)[0]

    def _finish(self, index, confidence, size):
        labels = self._output_to_class[index.to(self._output_to_class.device)]
        if labels.shape[-2:] != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(
                torch.uint8
            )
            if confidence is not None:
                confidence = F.interpolate(
                    confidence[:, None], size=size, mode="bilinear", align_corners=False
                )[:, 0]
        return labels, confidence


def channel_max(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over dim 1 of (N, C, h, w) and its index (the first one on ties), as
    ``torch.max(scores, 1)``: 3x faster on a CPU, where max-with-indices over the channels of a
    contiguous map is slow (4.5 vs 1.5 ms for 19 x 256 x 512, 2 cores)."""
    if scores.device.type != "cpu" or scores.shape[1] > 255:
        return scores.max(dim=1)
    best = torch.amax(scores, dim=1, keepdim=True)
    last = scores.shape[1] - 1
    reverse = torch.arange(last, -1, -1, dtype=torch.uint8, device=scores.device).view(1, -1, 1, 1)
    # The largest reversed index among the maxima is the first maximum.
    index = last - ((scores == best).to(torch.uint8) * reverse).amax(dim=1).long()
    return best[:, 0], index


def build_model(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's model with its weights; weights that do not fit the architecture its
    metadata names (another label set's classifier, another model) raise a one-line
    :class:`~video_seg_ros.checkpoint.CheckpointError` instead of torch's page of key lists."""
    try:
        return build_from_checkpoint(checkpoint)
    except RuntimeError as error:
        try:  # the same model without weights, to compare shapes
            skeleton = build_from_checkpoint(
                dataclasses.replace(checkpoint, state_dict={}), strict=False
            )
        except Exception:
            raise error from None
        expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
        origin = getattr(checkpoint, "loaded_from", None) or checkpoint.model_name
        check_weights_fit(checkpoint, expected, origin=origin)
        raise


def check_model_device(model: nn.Module, device: torch.device) -> None:
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != device.type:
        raise ValueError(
            f"model= is on {parameter.device} but the engine runs on {device}; move it "
            "with model.to(...) or pass the matching device."
        )


def check_frame(frame: np.ndarray) -> None:
    """Refuse anything but an (H, W, 3) uint8 array of at least 2x2 pixels."""
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] != 3
    ):
        raise ValueError(
            "frames must be (H, W, 3) uint8 arrays, got "
            f"{getattr(frame, 'shape', None)} {getattr(frame, 'dtype', type(frame))}"
        )
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame too small: {frame.shape[:2]}")
