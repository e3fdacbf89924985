"""PyTorch backend: the module itself, on the CPU (oneDNN or native kernels) or CUDA, with
autocast.

Temporal models keep one :class:`~video_seg_ros.models.memory.MemoryState` per stream (held in the
engine's per-stream temporal state, :class:`~video_seg_ros.temporal.StreamTemporalState`); the
module's own ``state`` only serves direct ``model.step`` calls. Frames of different streams with
equally full memories run as one batch.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import replace

import torch
from torch import nn

from video_seg_ros.models.local_attention import TiledMemoryFrame
from video_seg_ros.models.memory import MemoryState
from video_seg_ros.runtime import autocast_dtype


class TorchRunner:
    """Runs ``model`` (on ``device``) in ``precision`` ('fp32', 'bf16' or 'fp16').

    ``cpu_mkldnn`` switches oneDNN convolutions on the CPU. A caller's module (``owned=False``)
    is switched to eval mode for each call and back to its own mode afterwards.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str,
        cpu_mkldnn: bool,
        owned: bool = True,
    ):
        self.model = model
        self.device = device
        self.precision = precision
        self.cpu_mkldnn = cpu_mkldnn
        self.owned = owned
        self.temporal = bool(getattr(model, "is_temporal", False))

    def context(self):
        """Autocast and oneDNN settings for one inference call."""
        stack = contextlib.ExitStack()
        dtype = autocast_dtype(self.precision)
        if self.device.type == "cuda":
            stack.enter_context(
                torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None)
            )
        else:
            # Only toggle oneDNN: the flags' default allow_tf32=True makes torch warn about Intel
            # GPUs on every CPU-only build.
            stack.enter_context(
                torch.backends.mkldnn.flags(
                    enabled=self.cpu_mkldnn,
                    deterministic=None,
                    allow_tf32=None,
                    fp32_precision=None,
                )
            )
            if dtype is not None:
                stack.enter_context(torch.autocast("cpu", dtype=dtype))
        return stack

    def new_memory(self) -> MemoryState:
        return MemoryState(self.model.config.memory_length)

    def run(self, batch: torch.Tensor, memories: list[MemoryState] | None = None) -> torch.Tensor:
        """Logits (N, C, h, w); temporal models read and update one memory per frame."""
        was_training = self.model.training
        if not self.owned and was_training:
            self.model.eval()
        try:
            with torch.inference_mode(), self.context():
                if not self.temporal:
                    return self.model(batch)
                return self._step(batch, memories)
        finally:
            if not self.owned and was_training:
                self.model.train(True)

    def _step(self, batch: torch.Tensor, memories: list[MemoryState]) -> torch.Tensor:
        # The memory attends over the same number of frames for every batch element, so frames
        # are grouped by how full their stream's memory is (one group in steady state).
        groups = defaultdict(list)
        for index, memory in enumerate(memories):
            groups[len(memory)].append(index)
        logits = [None] * len(memories)
        own_state = self.model.state
        try:
            for indices in groups.values():
                if len(indices) == 1:
                    state = memories[indices[0]]
                else:
                    state = MemoryState(own_state.capacity)
                    for frames in zip(*(memories[i].frames for i in indices)):
                        state.push(_join(frames))
                self.model.state = state
                out = self.model.step(batch[indices])
                if len(indices) > 1:
                    for j, newest in enumerate(_split(state.frames[-1])):
                        memories[indices[j]].push(newest)
                for j, i in enumerate(indices):
                    logits[i] = out[j : j + 1]
        finally:
            self.model.state = own_state
        return torch.cat(logits)

    def release(self) -> None:
        self.model = None


def _join(frames: tuple[TiledMemoryFrame, ...]) -> TiledMemoryFrame:
    """Single-stream memory frames -> one frame of a batch (tiles are stored batch-major)."""
    return replace(
        frames[0],
        keys=torch.cat([f.keys for f in frames]),
        values=torch.cat([f.values for f in frames]),
        batch=sum(f.batch for f in frames),
    )


def _split(frame: TiledMemoryFrame) -> list[TiledMemoryFrame]:
    keys, values = frame.keys.chunk(frame.batch), frame.values.chunk(frame.batch)
    return [replace(frame, keys=k, values=v, batch=1) for k, v in zip(keys, values)]
