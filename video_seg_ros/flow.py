"""Optical flow and warping, shared by the TC metric, the node's online metric and training.

Convention everywhere: ``flow`` is (H, W, 2) float32 (x, y) displacement from frame ``a`` to frame
``b``, so that ``a[y, x] ~ b[y + flow_y, x + flow_x]``. "Warping ``b`` back to ``a``" samples ``b``
at ``p + flow(p)``; the result lies on ``a``'s pixel grid.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DisFlow:
    """OpenCV DIS optical flow between two frames (RGB/BGR uint8 or grayscale).

    ``max_width`` downsizes wide frames before the flow and scales the result back up: the
    consistency metric needs coarse motion, and DIS cost grows with the pixel count.
    """

    def __init__(self, preset: str = "ultrafast", max_width: int | None = None):
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
        self.preset = preset
        self.max_width = max_width
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        """Flow from ``frame_a`` to ``frame_b``: (H, W, 2) float32 at the frames' resolution."""
        gray_a, gray_b = to_gray(frame_a), to_gray(frame_b)
        if gray_a.shape != gray_b.shape:
            raise ValueError(f"frames differ in size: {gray_a.shape} vs {gray_b.shape}")
        height, width = gray_a.shape
        size = reduced_size(height, width, self.max_width)
        if size is not None:
            gray_a = cv2.resize(gray_a, size, interpolation=cv2.INTER_AREA)
            gray_b = cv2.resize(gray_b, size, interpolation=cv2.INTER_AREA)
        flow = self._dis.calc(gray_a, gray_b, None)
        if size is not None:
            flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) / (
                size[0] / width
            )
        return flow.astype(np.float32, copy=False)


def reduced_size(height: int, width: int, max_width: int | None) -> tuple[int, int] | None:
    """(width, height) to shrink a frame to for flow, or None when it is narrow enough already."""
    if not max_width or width <= max_width:
        return None
    return max_width, max(8, round(height * max_width / width))


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Grey image for flow from (H, W), (H, W, 3) or (H, W, 4) uint8."""
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    # Channel order does not matter for flow; RGB2GRAY weights are close enough either way
    # (OpenCV takes 4-channel input for it too).
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def sampling_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap's source coordinates (map_x, map_y) for a backward warp along ``flow``."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    return grid_x + flow[..., 0], grid_y + flow[..., 1]


def warp_labels(labels_b: np.ndarray, flow_ab: np.ndarray, fill: int = 255) -> np.ndarray:
    """Warp a label map of frame ``b`` back to frame ``a`` with nearest-neighbour sampling.

    Nearest sampling copies existing ids only (bilinear sampling of ids invents classes at
    boundaries). Pixels whose source falls outside the image get ``fill``.
    """
    map_x, map_y = sampling_maps(flow_ab)
    return cv2.remap(
        labels_b,
        map_x,
        map_y,
        interpolation=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=int(fill),
    )


def warp_image(image_b: np.ndarray, flow_ab: np.ndarray, maps=None) -> np.ndarray:
    """Bilinear backward warp of an image (or float map) of frame ``b`` onto frame ``a``
    (``maps``: :func:`sampling_maps` of ``flow_ab`` when the caller has them already)."""
    map_x, map_y = maps if maps is not None else sampling_maps(flow_ab)
    return cv2.remap(
        image_b, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def inside_mask(flow_ab: np.ndarray, maps=None) -> np.ndarray:
    """(H, W) bool: True where ``p + flow_ab(p)`` falls inside the image (the warp has a
    source); ``maps`` as in :func:`warp_image`."""
    map_x, map_y = maps if maps is not None else sampling_maps(flow_ab)
    height, width = flow_ab.shape[:2]
    return (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 2) flow resampled to ``size`` (height, width), its vectors scaled per axis to
    match."""
    height, width = flow.shape[:2]
    if (height, width) == tuple(size):
        return flow
    resized = cv2.resize(flow, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    resized[..., 0] *= size[1] / width
    resized[..., 1] *= size[0] / height
    return resized


def occlusion_mask(
    flow_ab: np.ndarray, flow_ba: np.ndarray, alpha: float = 0.01, beta: float = 0.5
) -> np.ndarray:
    """Forward-backward consistency check: True where a pixel of ``a`` is visible in ``b``.

    A pixel is declared occluded when ``|f_ab + f_ba(p + f_ab)|^2 > alpha * (|f_ab|^2 +
    |f_ba(p + f_ab)|^2) + beta`` (Sundaram et al. 2010), or when it leaves the image.
    """
    back = warp_image(flow_ba, flow_ab)
    total = flow_ab + back
    lhs = (total**2).sum(-1)
    rhs = alpha * ((flow_ab**2).sum(-1) + (back**2).sum(-1)) + beta
    return (lhs <= rhs) & inside_mask(flow_ab)


def warp_tensor(
    tensor_b: torch.Tensor, flow_ab: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Backward-warp a batch of maps of frame ``b`` onto frame ``a`` (differentiable).

    Args:
        tensor_b: (N, C, H, W).
        flow_ab: (N, 2, H, W) displacement in pixels (x, y), same resolution as ``tensor_b``.
        mode: ``"bilinear"`` for scores/images, ``"nearest"`` for ids.

    Returns:
        (N, C, H, W); samples outside the image repeat the border.
    """
    n, _, height, width = tensor_b.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=flow_ab.device, dtype=flow_ab.dtype),
        torch.arange(width, device=flow_ab.device, dtype=flow_ab.dtype),
        indexing="ij",
    )
    sample_x = xs.unsqueeze(0) + flow_ab[:, 0]
    sample_y = ys.unsqueeze(0) + flow_ab[:, 1]
    # grid_sample wants coordinates in [-1, 1] with align_corners=True mapping to pixel centres.
    grid = torch.stack(
        (2.0 * sample_x / max(width - 1, 1) - 1.0, 2.0 * sample_y / max(height - 1, 1) - 1.0),
        dim=-1,
    )
    return F.grid_sample(
        tensor_b, grid.to(tensor_b.dtype), mode=mode, padding_mode="border", align_corners=True
    )
