"""Inference engine: uint8 frames in, class-id maps (and confidences) out. No ROS here.

The node, the evaluator, the demo and the benchmarks all call :class:`SegmentationEngine`, so the
preprocessing a checkpoint declares is applied in exactly one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from video_seg_ros.checkpoint import Checkpoint, load_checkpoint, output_class_lookup
from video_seg_ros.labels import palette_lookup_table
from video_seg_ros.models import build_from_checkpoint

_CV2_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


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
            raise DeviceError(f"device '{device}' requested but no CUDA device is available here; "
                              "use 'cpu' or 'auto'.")
        try:
            resolved = torch.device(device if ":" in device else "cuda:0")
        except RuntimeError as error:
            raise DeviceError(f"cannot parse device '{device}'; use auto, cpu or cuda[:N].") from error
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{device}' requested but only {torch.cuda.device_count()} "
                              "CUDA device(s) exist.")
        return resolved
    raise DeviceError(f"unknown device '{device}'; use auto, cpu or cuda[:N].")


@dataclass
class SegmentationResult:
    """One frame's output at the frame's own resolution."""

    labels: np.ndarray                 # (H, W) uint8 class ids, IGNORE_ID = unlabelled
    confidence: np.ndarray | None      # (H, W) float32 max softmax probability, if requested
    model_ms: float                    # preprocessing + network + postprocessing, milliseconds


class SegmentationEngine:
    """Runs a checkpoint's model on frames, one at a time (streaming) or in batches.

    Args:
        checkpoint: a :class:`Checkpoint` or a path (``None``/"default" = embedded model).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        fp16: autocast to float16 on CUDA; ``None`` means "on when the device is CUDA".
        upsample: ``"logits"`` resizes class scores bilinearly to the frame size before the
            argmax (best boundaries); ``"labels"`` takes the argmax at model resolution and
            resizes the ids nearest-neighbour (cheaper on large frames on a CPU); ``"auto"``
            picks logits on CUDA and labels on the CPU.
        cpu_mkldnn: use oneDNN convolutions on the CPU; ``None`` takes the architecture's
            measured preference (attribute ``prefers_mkldnn`` of the model, default True).
    """

    def __init__(self, checkpoint: Checkpoint | str | None = None, device: str = "auto",
                 fp16: bool | None = None, upsample: str = "auto",
                 cpu_mkldnn: bool | None = None):
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint)
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        if upsample == "auto":
            upsample = "logits" if self.device.type == "cuda" else "labels"
        self.fp16 = (self.device.type == "cuda") if fp16 is None else bool(fp16 and self.device.type == "cuda")
        self.upsample = upsample
        self.model = build_from_checkpoint(checkpoint).eval().to(self.device)
        base = getattr(self.model, "base", self.model)
        self.cpu_mkldnn = getattr(base, "prefers_mkldnn", True) if cpu_mkldnn is None else cpu_mkldnn
        pre = checkpoint.preprocessing
        self._input_size = (pre.input_width, pre.input_height)
        self._interpolation = _CV2_INTERPOLATION[pre.interpolation]
        self._channel_order = pre.channel_order
        std = torch.tensor(pre.std, dtype=torch.float32)
        self._mean = torch.tensor(pre.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._factor = (pre.scale / std).to(self.device).view(1, 3, 1, 1)
        self._output_to_class = output_class_lookup(checkpoint.output_to_class, self.device)
        self.palette_table = palette_lookup_table(checkpoint.palette)

    # ---- properties the node and the tools report ---------------------------------------------
    @property
    def model_name(self) -> str:
        return self.checkpoint.model_name

    @property
    def class_names(self) -> list[str]:
        return list(self.checkpoint.class_names)

    @property
    def is_temporal(self) -> bool:
        return bool(getattr(self.model, "is_temporal", False))

    def reset(self) -> None:
        """Forget all temporal state (memory frames); a no-op for per-frame models."""
        if self.is_temporal:
            self.model.reset_state()

    # ---- inference ---------------------------------------------------------------------------
    def segment(self, frame: np.ndarray, channel_order: str = "rgb",
                with_confidence: bool = False) -> SegmentationResult:
        """Segment one (H, W, 3) uint8 frame given in ``channel_order`` ('rgb' or 'bgr')."""
        return self.segment_batch([frame], channel_order, with_confidence)[0]

    def segment_batch(self, frames: list[np.ndarray], channel_order: str = "rgb",
                      with_confidence: bool = False) -> list[SegmentationResult]:
        """Segment frames of one size together; a temporal model sees them as consecutive frames."""
        if not frames:
            return []
        size = frames[0].shape[:2]
        for frame in frames:
            _check_frame(frame)
            if frame.shape[:2] != size:
                raise ValueError("all frames of a batch must have the same size")
        start = time.perf_counter()
        batch = self._preprocess(frames, channel_order)
        with torch.inference_mode(), self._backend_context():
            if self.is_temporal:
                logits = torch.cat([self.model.step(batch[i:i + 1]) for i in range(len(frames))])
            else:
                logits = self.model(batch)
            labels, confidence = self._postprocess(logits.float(), size, with_confidence)
        labels_np = labels.cpu().numpy()
        confidence_np = confidence.cpu().numpy() if confidence is not None else None
        elapsed_ms = (time.perf_counter() - start) * 1000.0 / len(frames)
        return [SegmentationResult(labels_np[i], None if confidence_np is None else confidence_np[i],
                                   elapsed_ms) for i in range(len(frames))]

    def preprocess(self, frames: list[np.ndarray], channel_order: str = "rgb") -> torch.Tensor:
        """Frames -> the normalised (N, 3, h, w) float tensor the model takes, on the device."""
        return self._preprocess(frames, channel_order)

    # ---- internals ---------------------------------------------------------------------------
    def _preprocess(self, frames, channel_order):
        if channel_order not in ("rgb", "bgr"):
            raise ValueError("channel_order must be 'rgb' or 'bgr'")
        width, height = self._input_size
        if frames[0].shape[:2] != (height, width):
            # Resize in float, as the source repositories do: rounding resized pixels to uint8
            # moves ESPNet's logits by up to 0.7 (its normalised inputs span only about +-0.02).
            frames = [cv2.resize(frame.astype(np.float32), (width, height),
                                 interpolation=self._interpolation) for frame in frames]
        host = torch.from_numpy(np.stack(frames))  # (N, h, w, 3) uint8, or float32 when resized
        if channel_order != self._channel_order:
            host = host.flip(-1)
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self._mean) * self._factor).contiguous()

    def _postprocess(self, logits, size, with_confidence):
        if self.upsample == "logits" and logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        scores, index = logits.max(dim=1)
        labels = self._output_to_class[index]
        confidence = None
        if with_confidence:
            # max softmax = 1 / sum(exp(l - max l)), without materialising the softmax.
            confidence = 1.0 / torch.exp(logits - scores.unsqueeze(1)).sum(dim=1)
        if labels.shape[-2:] != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
            if confidence is not None:
                confidence = F.interpolate(confidence[:, None], size=size, mode="bilinear",
                                           align_corners=False)[:, 0]
        return labels, confidence

    def _backend_context(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16)
        # Only toggle oneDNN: the flags' default allow_tf32=True makes torch warn about Intel GPUs
        # on every CPU-only build.
        return torch.backends.mkldnn.flags(enabled=self.cpu_mkldnn, deterministic=None,
                                           allow_tf32=None, fp32_precision=None)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError("frames must be (H, W, 3) uint8 arrays, got "
                         f"{getattr(frame, 'shape', None)} {getattr(frame, 'dtype', type(frame))}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"frame too small: {frame.shape[:2]}")
