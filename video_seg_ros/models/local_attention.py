"""Local window attention over memory frames, without an HW x HW attention matrix.

Every query pixel ``p`` of the current frame attends to the ``window x window`` neighbourhood of
``p`` in each of ``T`` memory frames; one softmax runs over all ``T * window**2`` candidates and
the
attended values are summed (LMANet, Paul et al., IROS 2021). Candidates that fall outside the frame
do not exist (they get no weight), exactly as if a full attention matrix were masked to the window:
:func:`dense_local_attention` is that naive reference, kept for the tests.

Implementation: tiles of batched matrix products. The query map is cut into ``tile x tile`` blocks;
every block attends to the ``(tile + 2r)**2`` key block around it (r = window // 2) with one
``bmm``,
and a fixed band mask removes the candidates outside each pixel's own window. A handful of large
GEMMs run at full BLAS/cuBLAS speed on CPU and GPU, whereas the alternatives measured on the 2-core
CPU of this project (T=3, 16 key / 32 value channels, 64x128 feature map) were 8-200x slower:
a Python loop over displacements (one small kernel per displacement and frame: ~400 ms at 9x9),
``F.unfold`` of all displacements (window**2 copies of the keys: ~1 s at 9x9, 11 s at 21x21) and
row-wise unfolding with einsum (~400 ms at 9x9). The tiles cost ``((tile + 2r) / window)**2``
extra score entries (3.2x at 9x9 with tile 8), cheap next to the GEMM speed-up. Memory is
``O(HW * T * (tile + 2r)**2)`` for the scores, linear in the image size.

Each memory frame is laid out as tiles once (:func:`tile_memory_frame`) and can be reused for the
next ``T`` frames, so a streaming step only re-tiles the newest frame.

Out-of-frame candidates are handled with one extra key channel that holds ``0`` inside the frame
and
``-1e4`` outside, multiplied by a constant ``1`` query channel: the GEMM itself adds the mask, and
``exp(-1e4)`` is exactly zero in float32 and float16 without creating NaN gradients as ``-inf``
would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: Added to the score of every candidate that must get no weight; exp() of it is 0 in fp16/fp32.
MASKED_SCORE = -1.0e4


@dataclass
class TiledMemoryFrame:
    """One memory frame's keys and values, cut into overlapping tiles for :func:`local_attention`.

    ``keys``: (N * tiles, S, K + 1) with S = (tile + 2r)**2, the last channel being the frame mask;
    ``values``: (N * tiles, S, V). ``radius``, ``tile`` and ``size`` (h, w) say how it was cut.
    """

    keys: Tensor
    values: Tensor
    radius: int
    tile: int
    size: tuple[int, int]
    batch: int

    @property
    def device(self) -> torch.device:
        return self.keys.device


def check_window(window: int) -> int:
    """Return the radius of an odd window size; raise ValueError with advice otherwise."""
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(
            f"window must be a positive odd number of feature pixels (e.g. 9 or 21), got "
            f"{window!r}"
        )
    return window // 2


def _padded_size(h: int, w: int, tile: int) -> tuple[int, int]:
    return -(-h // tile) * tile, -(-w // tile) * tile


def tile_memory_frame(key: Tensor, value: Tensor, window: int, tile: int = 8) -> TiledMemoryFrame:
    """Lay out one frame's ``key`` (N, K, h, w) and ``value`` (N, V, h, w) as attention tiles."""
    radius = check_window(window)
    if (
        key.dim() != 4
        or value.dim() != 4
        or key.shape[0] != value.shape[0]
        or key.shape[-2:] != value.shape[-2:]
    ):
        raise ValueError(
            f"key (N,K,h,w) and value (N,V,h,w) must agree, got {tuple(key.shape)} and "
            f"{tuple(value.shape)}"
        )
    n, k_channels, h, w = key.shape
    hp, wp = _padded_size(h, w, tile)
    pad = (radius, radius + wp - w, radius, radius + hp - h)
    frame_mask = F.pad(key.new_zeros(n, 1, h, w), pad, value=MASKED_SCORE)
    stacked = torch.cat([F.pad(key, pad), frame_mask, F.pad(value, pad)], dim=1)
    side = tile + 2 * radius
    # (N, C, ny, nx, side, side) view -> one copy into (N * ny * nx, side * side, C)
    tiles = stacked.unfold(2, side, tile).unfold(3, side, tile)
    tiles = tiles.permute(0, 2, 3, 4, 5, 1).reshape(-1, side * side, stacked.shape[1])
    return TiledMemoryFrame(
        keys=tiles[..., : k_channels + 1].contiguous(),
        values=tiles[..., k_channels + 1 :].contiguous(),
        radius=radius,
        tile=tile,
        size=(h, w),
        batch=n,
    )


def _band_mask(tile: int, radius: int, device, dtype) -> Tensor:
    """(tile*tile, side*side): 0 where key (a, c) of the tile block lies in query (i, j)'s
    window."""
    side = tile + 2 * radius
    offset = torch.arange(side, device=device).view(1, side) - torch.arange(
        tile, device=device
    ).view(tile, 1)
    inside = (offset >= 0) & (offset <= 2 * radius)  # (tile, side), per axis
    inside = inside.view(tile, 1, side, 1) & inside.view(1, tile, 1, side)
    mask = torch.zeros(inside.shape, device=device, dtype=dtype).masked_fill_(
        ~inside, MASKED_SCORE
    )
    return mask.view(tile * tile, side * side)


def local_attention(query: Tensor, memory: list[TiledMemoryFrame]) -> Tensor:
    """Attend from ``query`` (N, K, h, w) to local windows in every memory frame -> (N, V, h, w).

    Scores are ``q . k / sqrt(K)``; one softmax spans the windows of all memory frames.
    """
    if not memory:
        raise ValueError("local_attention needs at least one memory frame")
    first = memory[0]
    # Python ints, not traced sizes: exported memory graphs have static shapes, and a Reshape
    # whose sizes the ONNX exporter traced from a padded tensor crashed its shape inference with
    # SIGFPE (integer division by zero in C++, the whole process killed) at 1/8 maps of 8x4.
    n, k_channels, h, w = (int(size) for size in query.shape)
    for frame in memory:
        if (frame.size, frame.batch, frame.radius, frame.tile) != (
            (h, w),
            n,
            first.radius,
            first.tile,
        ):
            raise ValueError(
                f"memory frame of size {frame.size} x batch {frame.batch} does not match the "
                f"query (batch {n}, {h}x{w}); reset the memory when the input size changes"
            )
        if frame.keys.shape[-1] != k_channels + 1:
            raise ValueError(
                f"query has {k_channels} key channels, memory keys {frame.keys.shape[-1] - 1}"
            )
    tile, radius = first.tile, first.radius
    hp, wp = _padded_size(h, w, tile)
    ny, nx = hp // tile, wp // tile
    q = F.pad(query * (1.0 / math.sqrt(k_channels)), (0, wp - w, 0, hp - h))
    q = torch.cat([q, q.new_ones(n, 1, hp, wp)], dim=1)  # the ones channel picks up the frame mask
    q = (
        q.view(n, k_channels + 1, ny, tile, nx, tile)
        .permute(0, 2, 4, 3, 5, 1)
        .reshape(-1, tile * tile, k_channels + 1)
    )
    keys = memory[0].keys if len(memory) == 1 else torch.cat([f.keys for f in memory], dim=1)
    values = memory[0].values if len(memory) == 1 else torch.cat([f.values for f in memory], dim=1)
    band = _band_mask(tile, radius, q.device, q.dtype).repeat(1, len(memory))
    scores = torch.baddbmm(band, q, keys.transpose(1, 2))  # (N*tiles, tile*tile, T*side*side)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # the softmax sums T * side**2 terms: keep it in float32
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.bmm(weights, values)  # (N*tiles, tile*tile, V)
    v_channels = values.shape[-1]
    out = (
        out.view(n, ny, nx, tile, tile, v_channels)
        .permute(0, 5, 1, 3, 2, 4)
        .reshape(n, v_channels, hp, wp)
    )
    return out[:, :, :h, :w]


def local_window_attention(
    query: Tensor, keys: Tensor, values: Tensor, window: int, tile: int = 8
) -> Tensor:
    """Convenience form: ``query`` (N, K, h, w), ``keys`` (N, T, K, h, w), ``values`` (N, T, V, h,
    w)."""
    frames = [
        tile_memory_frame(keys[:, t], values[:, t], window, tile) for t in range(keys.shape[1])
    ]
    return local_attention(query, frames)


def dense_local_attention(query: Tensor, keys: Tensor, values: Tensor, window: int) -> Tensor:
    """Naive reference: full (h*w) x (T*h*w) attention, masked to the local window. Tests only."""
    radius = check_window(window)
    n, t, k_channels, h, w = keys.shape
    scores = torch.einsum("nkp,ntkq->nptq", query.flatten(2), keys.flatten(3)) / math.sqrt(
        k_channels
    )
    ys = torch.arange(h, device=query.device).repeat_interleave(w)
    xs = torch.arange(w, device=query.device).repeat(h)
    near = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    scores = scores.masked_fill(~near[None, :, None, :], float("-inf"))
    weights = scores.flatten(2).softmax(-1).view_as(scores)
    return torch.einsum("nptq,ntcq->ncp", weights, values.flatten(3)).view(n, -1, h, w)
