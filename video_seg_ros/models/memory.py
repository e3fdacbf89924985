"""LMANet local memory attention: turns any encoder/decoder segmenter into a video segmenter.

Paul, Danelljan, Van Gool, Timofte, "Local Memory Attention for Fast Video Semantic Segmentation",
IROS 2021. Per frame (shapes for a base with C feature channels at 1/8 resolution, h x w)::

    features, skips = base.encode(frame)                 # (N, C, h, w)
    query = query_key(features)                          # (N, K, h, w), 3x3 conv
    read  = local_attention(query, memory of T frames)   # (N, V, h, w), window x window per frame
    fused = fusion(features, read, query)                # (N, C, h, w), sigmoid-gated
    logits = base.decode(fused, skips, frame size)       # the base model's own decoder
    memory.push(memory_key(features), memory_value(features))   # 3x3 convs, FIFO of T frames

The query key conv starts as a copy of the memory key conv (as in the paper). The softmax runs
jointly over the ``T * window**2`` candidates of all memory frames
(:mod:`video_seg_ros.models.local_attention`, no HW x HW matrix).

Empty memory (first frame of a stream, after :meth:`reset_state`, and ``forward(x)``): the frame
attends to its own keys and values, i.e. the memory is treated as holding the current frame. The
output is therefore defined, deterministic and in the same feature distribution as later frames; a
static scene gives the same output on the first and on every later frame.

Fusion variants (``fusion`` in the config):

- ``"residual-gated"`` (default): ``fused = 2*sigmoid(g_cur) * features + sigmoid(g_mem) *
  proj(read)``; the gates come from a 3x3 conv over the query key and the read memory (plus a 1x1
  conv to C channels), with dropout on the read memory during training. The gate and projection
  convs start at zero, so a freshly wrapped model gives exactly the base model's output: training
  with a frozen base starts from the base model's accuracy, and the compute stays small for thin
  bases (no C x C 3x3 conv).
- ``"paper"``: LMANet's fusion module (their ``sigmoid-do1``): BatchNorm, dropout and ReLU on both
  inputs, a 3x3 conv each (to C channels) multiplied by sigmoid gates from 3x3 convs over the
  concatenation, then BatchNorm + ReLU. Costs four C-channel 3x3 convs; needs training from
  scratch.

Explicit state (:meth:`MemoryAugmentedSegmenter.step_with_state`, for exported graphs: ONNX,
OpenVINO, TensorRT): the memory travels as tensors instead of living in the module, so an engine
can keep one per camera. ``keys`` (N, T, tiles, S, K+1) and ``values`` (N, T, tiles, S, V) are the
T stored frames in the tiled layout of
:func:`~video_seg_ros.models.local_attention.tile_memory_frame`
(oldest first, newest last), ``valid`` (N, T) marks the slots that hold a frame (1) or not (0). An
empty memory (all ``valid`` 0) attends to the current frame, exactly like :meth:`step` after a
reset.

Configuration (``Checkpoint.memory``; :class:`MemoryConfig` validates it): ``memory_length`` T,
``window`` (odd, feature pixels), ``key_channels``, ``value_channels``, ``fusion``, ``dropout``,
``tile`` (attention tile size, a speed setting only).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from video_seg_ros.models.local_attention import (
    MASKED_SCORE,
    TiledMemoryFrame,
    check_window,
    local_attention,
    tile_memory_frame,
)

FUSION_VARIANTS = ("residual-gated", "paper")


@dataclass
class MemoryConfig:
    """Settings of the memory wrapper; stored as a plain dict in ``Checkpoint.memory``."""

    memory_length: int = 3
    window: int = 9
    key_channels: int = 16
    value_channels: int = 32
    fusion: str = "residual-gated"
    dropout: float = 0.1
    tile: int = 8
    method: str = "lmanet"

    def __post_init__(self):
        if not isinstance(self.memory_length, int) or self.memory_length < 1:
            raise ValueError(
                f"memory.memory_length must be an integer >= 1 (paper: 3 or 4), got "
                f"{self.memory_length!r}"
            )
        check_window(self.window)
        for name in ("key_channels", "value_channels", "tile"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"memory.{name} must be a positive integer, got {value!r}")
        if self.fusion not in FUSION_VARIANTS:
            raise ValueError(
                f"memory.fusion must be one of {', '.join(FUSION_VARIANTS)}, got {self.fusion!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"memory.dropout must be in [0, 1), got {self.dropout!r}")
        if self.method != "lmanet":
            raise ValueError(
                f"memory.method {self.method!r} is not known; this package implements 'lmanet'"
            )

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> "MemoryConfig":
        """Defaults for missing keys; unknown keys are an error (a typo must not pass silently)."""
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"unknown memory setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryState:
    """First-in-first-out memory of the last ``capacity`` frames' keys and values.

    Entries are :class:`TiledMemoryFrame` objects (keys and values already cut into attention
    tiles, so each frame is laid out once and reused for ``capacity`` steps), oldest first.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("memory capacity must be >= 1")
        self.capacity = capacity
        self._frames: list[TiledMemoryFrame] = []

    def push(self, frame: TiledMemoryFrame) -> None:
        """Append the newest frame, dropping the oldest beyond ``capacity``."""
        if not self.accepts(frame.batch, frame.size, frame.device):
            raise ValueError(
                "memory frame differs in batch size, feature size or device from the stored ones; "
                "call reset() before changing the input"
            )
        self._frames.append(frame)
        del self._frames[: -self.capacity]

    def reset(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def frames(self) -> list[TiledMemoryFrame]:
        """Stored frames, oldest first (a copy of the list)."""
        return list(self._frames)

    @property
    def device(self) -> torch.device | None:
        """Device of the stored tensors, None while empty."""
        return self._frames[0].device if self._frames else None

    def accepts(self, batch: int, size: tuple[int, int], device: torch.device) -> bool:
        """Whether a frame of this batch size, feature size and device fits the stored ones."""
        if not self._frames:
            return True
        first = self._frames[0]
        return first.batch == batch and tuple(first.size) == tuple(size) and first.device == device


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualGatedFusion(nn.Module):
    """fused = 2 sigmoid(g_cur) * features + sigmoid(g_mem) * proj(read); exactly ``features`` at
    init.

    Shapes: features (N, C, h, w), read (N, V, h, w), query (N, K, h, w) -> (N, C, h, w).
    """

    def __init__(
        self, feature_channels: int, key_channels: int, value_channels: int, dropout: float
    ):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.hidden = _conv3x3(key_channels + value_channels, value_channels)
        self.gates = nn.Conv2d(value_channels, 2 * feature_channels, 1)
        self.project = nn.Conv2d(value_channels, feature_channels, 1)
        for conv in (self.gates, self.project):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor, read: Tensor, query: Tensor) -> Tensor:
        read = self.dropout(read)
        hidden = F.relu(self.hidden(torch.cat([query, read], 1)))
        gate_current, gate_memory = torch.sigmoid(self.gates(hidden)).chunk(2, dim=1)
        return 2.0 * gate_current * features + gate_memory * self.project(read)


class PaperFusion(nn.Module):
    """LMANet's gated fusion (``sigmoid-do1``): both inputs BN-dropout-ReLU, 3x3 convs gated by
    sigmoids of 3x3 convs over their concatenation, then BN + ReLU.

    Shapes: features (N, C, h, w), read (N, V, h, w) -> (N, C, h, w).
    """

    def __init__(self, feature_channels: int, value_channels: int, dropout: float):
        super().__init__()
        c, v = feature_channels, value_channels
        self.norm_current, self.norm_memory = (
            nn.BatchNorm2d(c, eps=1e-3),
            nn.BatchNorm2d(v, eps=1e-3),
        )
        self.dropout_current, self.dropout_memory = nn.Dropout2d(dropout), nn.Dropout2d(dropout)
        self.conv_current, self.conv_memory = _conv3x3(c, c), _conv3x3(v, c)
        self.gate_current, self.gate_memory = _conv3x3(c + v, c), _conv3x3(c + v, c)
        self.norm_out = nn.BatchNorm2d(c, eps=1e-3)

    def forward(self, features: Tensor, read: Tensor, query: Tensor) -> Tensor:
        current = F.relu(self.dropout_current(self.norm_current(features)))
        memory = F.relu(self.dropout_memory(self.norm_memory(read)))
        both = torch.cat([current, memory], 1)
        fused = self.conv_current(current) * torch.sigmoid(
            self.gate_current(both)
        ) + self.conv_memory(memory) * torch.sigmoid(self.gate_memory(both))
        return F.relu(self.norm_out(fused))


class MemoryAugmentedSegmenter(nn.Module):
    """A base segmenter (encoder/decoder contract of :mod:`video_seg_ros.models`) plus LMANet
    memory.

    - ``step(x)``: streaming, one frame (N, 3, H, W) -> logits (N, classes, H, W); attends to the
      stored frames, then stores this one. ``reset_state()`` empties the memory.
    - ``forward_sequence(frames)``: (N, T+1, 3, H, W) -> logits of the last frame, with the T
    frames
      before it as memory (training; same result as reset + T+1 steps).
    - ``forward(x)``: one frame with an empty memory (it attends to itself), no state change.

    The streaming memory resets itself when the batch size, feature size or device changes.
    """

    is_temporal = True

    def __init__(self, base: nn.Module, config: MemoryConfig | dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(config, MemoryConfig):
            config = MemoryConfig.from_dict(config)
        for attribute in ("encode", "decode", "feature_channels", "num_classes"):
            if not hasattr(base, attribute):
                raise TypeError(
                    f"{type(base).__name__} does not follow the encoder/decoder contract "
                    f"(no {attribute!r}); see video_seg_ros.models"
                )
        if getattr(base, "is_temporal", False):
            raise TypeError(
                "the base model already has a temporal state; wrap a per-frame segmenter"
            )
        self.config = config
        self.base = base
        channels = base.feature_channels
        self.memory_key = _conv3x3(channels, config.key_channels)
        self.memory_value = _conv3x3(channels, config.value_channels)
        self.query_key = _conv3x3(channels, config.key_channels)
        self.query_key.load_state_dict(
            self.memory_key.state_dict()
        )  # paper: query starts as memory key
        if config.fusion == "paper":
            self.fusion = PaperFusion(channels, config.value_channels, config.dropout)
        else:
            self.fusion = ResidualGatedFusion(
                channels, config.key_channels, config.value_channels, config.dropout
            )
        self.state = MemoryState(config.memory_length)
        self._base_frozen = False

    # ---- the encoder/decoder contract ----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def feature_channels(self) -> int:
        return self.base.feature_channels

    def encode(self, x: Tensor):
        return self.base.encode(x)

    def decode(self, features: Tensor, skips, out_size) -> Tensor:
        return self.base.decode(features, skips, out_size)

    # ---- training helpers ----------------------------------------------------------------------
    def freeze_base(self, frozen: bool = True) -> "MemoryAugmentedSegmenter":
        """Freeze (or unfreeze) the base encoder/decoder: no gradients, BatchNorm kept in eval
        mode."""
        self._base_frozen = frozen
        for parameter in self.base.parameters():
            parameter.requires_grad_(not frozen)
        self.train(self.training)
        return self

    @property
    def base_frozen(self) -> bool:
        return self._base_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if self._base_frozen:
            self.base.eval()
        return self

    def memory_parameters(self) -> list[nn.Parameter]:
        """The parameters the memory adds (keys, values, query key, fusion)."""
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    # ---- memory --------------------------------------------------------------------------------
    def _memory_context(self, device: torch.device):
        # The 3x3 convs on C channels are 10-15x faster with oneDNN on a CPU even for bases that
        # run
        # faster without it (ESPNet's thin dilated convs), so the memory layers always use it
        # there.
        if (
            device.type == "cpu"
            and torch.backends.mkldnn.is_available()
            and not torch.backends.mkldnn.enabled
        ):
            return _mkldnn_enabled()
        return contextlib.nullcontext()

    def memory_entry(self, features: Tensor) -> TiledMemoryFrame:
        """Key/value of one frame's features (N, C, h, w), laid out for the attention."""
        with self._memory_context(features.device):
            key, value = self.memory_key(features), self.memory_value(features)
        return tile_memory_frame(key, value, self.config.window, self.config.tile)

    def read_and_fuse(self, features: Tensor, memory: list[TiledMemoryFrame]) -> Tensor:
        """Attend from ``features`` (N, C, h, w) to ``memory`` and fuse -> (N, C, h, w)."""
        with self._memory_context(features.device):
            query = self.query_key(features)
            read = local_attention(query, memory)
            return self.fusion(features, read, query)

    def reset_state(self) -> None:
        """Forget all stored frames (new stream, scene cut)."""
        self.state.reset()

    # ---- inference and training forwards -----------------------------------------------------
    def step(self, x: Tensor) -> Tensor:
        """Streaming: one frame (N, 3, H, W) -> logits (N, classes, H, W); stores the frame."""
        features, skips = self.base.encode(x)
        entry = self.memory_entry(features)
        if not self.state.accepts(entry.batch, entry.size, entry.device):
            self.state.reset()  # new resolution, batch size or device: a new stream
        memory = self.state.frames or [entry]
        logits = self.base.decode(self.read_and_fuse(features, memory), skips, x.shape[-2:])
        self.state.push(_detached(entry))
        return logits

    # ---- explicit state (exported graphs) ----------------------------------------------------
    def explicit_state_shapes(
        self, feature_size: tuple[int, int], batch: int = 1
    ) -> dict[str, tuple[int, ...]]:
        """Shapes of ``keys``, ``values`` and ``valid`` for features of ``feature_size`` (h, w)."""
        radius, tile = check_window(self.config.window), self.config.tile
        h, w = feature_size
        tiles = -(-h // tile) * -(-w // tile)
        side = (tile + 2 * radius) ** 2
        t = self.config.memory_length
        return {
            "keys": (batch, t, tiles, side, self.config.key_channels + 1),
            "values": (batch, t, tiles, side, self.config.value_channels),
            "valid": (batch, t),
        }

    def empty_explicit_state(
        self, feature_size: tuple[int, int], batch: int = 1, device=None, dtype=torch.float32
    ) -> tuple[Tensor, Tensor, Tensor]:
        """An empty memory as ``(keys, values, valid)`` tensors (see the module docstring)."""
        shapes = self.explicit_state_shapes(feature_size, batch)
        return tuple(
            torch.zeros(shapes[name], device=device, dtype=dtype)
            for name in ("keys", "values", "valid")
        )

    def step_with_state(self, x: Tensor, keys: Tensor, values: Tensor, valid: Tensor):
        """:meth:`step` with the memory as tensors: ``-> (logits, keys, values, valid)`` after this
        frame.

        No Python branch depends on the values, so a traced graph (ONNX export) handles any number
        of stored frames, 0 included. Invalid slots get :data:`MASKED_SCORE` on the frame-mask
        channel of their keys, so their softmax weights are exactly zero, as if they were absent.
        """
        features, skips = self.base.encode(x)
        with self._memory_context(features.device):
            entry = tile_memory_frame_static(
                self.memory_key(features),
                self.memory_value(features),
                self.config.window,
                self.config.tile,
            )
        n, slots = valid.shape
        new_keys = entry.keys.view(n, 1, *keys.shape[2:])
        new_values = entry.values.view(n, 1, *values.shape[2:])
        # An empty memory attends to the current frame (as step() does): it goes in the newest
        # slot.
        empty = (valid.sum(dim=1) == 0).view(n, 1)
        last_valid = torch.where(empty, torch.ones_like(valid[:, -1:]), valid[:, -1:])
        slot_valid = torch.cat([valid[:, :-1], last_valid], dim=1)
        use_current = empty.view(n, 1, 1, 1, 1)
        slot_keys = torch.cat(
            [keys[:, :-1], torch.where(use_current, new_keys, keys[:, -1:])], dim=1
        )
        slot_values = torch.cat(
            [values[:, :-1], torch.where(use_current, new_values, values[:, -1:])], dim=1
        )
        slot_mask = (
            slot_keys[..., -1:]
            + (1.0 - slot_valid).view(n, slots, 1, 1, 1).to(keys.dtype) * MASKED_SCORE
        )
        slot_keys = torch.cat([slot_keys[..., :-1], slot_mask], dim=-1)
        memory = [
            TiledMemoryFrame(
                keys=slot_keys[:, t].reshape(entry.keys.shape),
                values=slot_values[:, t].reshape(entry.values.shape),
                radius=entry.radius,
                tile=entry.tile,
                size=entry.size,
                batch=n,
            )
            for t in range(slots)
        ]
        logits = self.base.decode(self.read_and_fuse(features, memory), skips, x.shape[-2:])
        next_keys = torch.cat([keys[:, 1:], new_keys.to(keys.dtype)], dim=1)
        next_values = torch.cat([values[:, 1:], new_values.to(values.dtype)], dim=1)
        next_valid = torch.cat([valid[:, 1:], torch.ones_like(valid[:, :1])], dim=1)
        return logits, next_keys, next_values, next_valid

    def forward(self, x: Tensor) -> Tensor:
        """One frame (N, 3, H, W) with an empty memory -> logits (N, classes, H, W)."""
        features, skips = self.base.encode(x)
        fused = self.read_and_fuse(features, [self.memory_entry(features)])
        return self.base.decode(fused, skips, x.shape[-2:])

    def forward_sequence(self, frames: Tensor) -> Tensor:
        """(N, T'+1, 3, H, W) -> logits (N, classes, H, W) of the last frame.

        The last ``memory_length`` frames before it form the memory (all T' of them if fewer);
        T' = 0 is the empty-memory case. The streaming state is neither used nor changed.
        """
        if frames.dim() != 5 or frames.shape[1] < 1:
            raise ValueError(f"frames must be (N, T+1, 3, H, W), got {tuple(frames.shape)}")
        n, length = frames.shape[:2]
        past = frames[:, max(0, length - 1 - self.config.memory_length) : length - 1]
        features, skips = self.base.encode(frames[:, -1])
        if past.shape[1]:
            grad = torch.is_grad_enabled() and not self._base_frozen
            with torch.set_grad_enabled(grad):
                past_features, _ = self.base.encode(past.flatten(0, 1))  # one batched pass
            past_features = past_features.unflatten(0, (n, past.shape[1]))
            memory = [self.memory_entry(past_features[:, t]) for t in range(past.shape[1])]
        else:
            memory = [self.memory_entry(features)]
        return self.base.decode(self.read_and_fuse(features, memory), skips, frames.shape[-2:])


def tile_memory_frame_static(
    key: Tensor, value: Tensor, window: int, tile: int = 8
) -> TiledMemoryFrame:
    """:func:`~video_seg_ros.models.local_attention.tile_memory_frame` with the tile layout as a
    constant gather index, so that an ONNX export sees static shapes.

    The exporter cannot convert ``Tensor.unfold`` after a pad whose widths it traced from tensor
    shapes; here every size is a Python int (fixed at export), and one ``index_select`` copies the
    same elements in the same order (``test_export.py`` checks both are equal).
    """
    radius = check_window(window)
    n, k_channels, h, w = (int(size) for size in key.shape)
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile
    pad = (radius, radius + wp - w, radius, radius + hp - h)
    frame_mask = F.pad(key.new_zeros(n, 1, h, w), pad, value=MASKED_SCORE)
    stacked = torch.cat([F.pad(key, pad), frame_mask, F.pad(value, pad)], dim=1)
    index = _tile_index(hp // tile, wp // tile, tile, radius, stacked.device)
    side = tile + 2 * radius
    tiles = stacked.flatten(2).index_select(2, index).view(n, stacked.shape[1], -1, side * side)
    tiles = tiles.permute(0, 2, 3, 1).reshape(-1, side * side, stacked.shape[1])
    return TiledMemoryFrame(
        keys=tiles[..., : k_channels + 1].contiguous(),
        values=tiles[..., k_channels + 1 :].contiguous(),
        radius=radius,
        tile=tile,
        size=(h, w),
        batch=n,
    )


def _tile_index(rows: int, cols: int, tile: int, radius: int, device) -> Tensor:
    """Flat positions in the padded map of every tile's ``side x side`` block, tile by tile."""
    side = tile + 2 * radius
    width = cols * tile + 2 * radius
    block = torch.arange(side, device=device)
    block = block.view(side, 1) * width + block.view(1, side)  # (side, side)
    starts = (
        torch.arange(rows, device=device).view(rows, 1) * (tile * width)
        + torch.arange(cols, device=device).view(1, cols) * tile
    )  # (rows, cols)
    return (starts.view(-1, 1) + block.view(1, -1)).reshape(-1)


@contextlib.contextmanager
def _mkldnn_enabled():
    # Only the enabled switch: torch.backends.mkldnn.flags() also resets TF32 settings and warns.
    torch.backends.mkldnn.enabled = True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = False


def _detached(entry: TiledMemoryFrame) -> TiledMemoryFrame:
    # The streaming memory must not keep autograd graphs of past frames alive.
    return replace(entry, keys=entry.keys.detach(), values=entry.values.detach())


def wrap_with_memory(
    base_model: nn.Module, config: dict[str, Any] | MemoryConfig | None
) -> MemoryAugmentedSegmenter:
    """Wrap a per-frame segmenter with a freshly initialised LMANet memory (config: see
    MemoryConfig)."""
    return MemoryAugmentedSegmenter(base_model, config)
