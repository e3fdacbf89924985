"""Floating-point operations of one forward pass, counted from the model itself.

:func:`count_gflops` runs the model once on a (1, 3, H, W) frame under
:class:`torch.utils.flop_counter.FlopCounterMode`, which adds up the operators PyTorch executes:

- convolutions (transposed and grouped ones included) and matrix products (``mm``, ``addmm``,
  ``bmm``, ``baddbmm``, attention) count a multiply-add as 2 FLOPs; a convolution's bias and its
  zero padding are not told apart (every output pixel counts the whole kernel);
- element-wise work (BatchNorm, activations, interpolation, softmax, additions) counts nothing.

So the figure is the network's multiply-add work, the part a CPU's or GPU's peak FLOP/s is quoted
for; dividing it by that peak gives the floor no backend can beat at that precision. It depends
on the input size only, not on the pixel values or on the backend that later runs the model.

Temporal models (``is_temporal``, the LMANet memory wrapper of
:mod:`video_seg_ros.models.memory`): ``model(x)`` is one frame with a fresh (empty) memory, which
attends to the frame's own keys and values, i.e. a memory of one frame; nothing is stored. A
stream in steady state attends to ``memory_length`` stored frames instead, so its two attention
matrix products (``baddbmm`` and ``bmm`` in
:func:`~video_seg_ros.models.local_attention.local_attention`) cost ``memory_length`` times what
is counted here; every convolution costs the same.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_gflops(model: nn.Module, input_size: tuple[int, int]) -> float:
    """GFLOP (1e9 FLOPs) of one forward pass of ``model`` on one frame of ``input_size``.

    Args:
        model: a segmenter taking a (1, 3, H, W) float frame and returning logits
            (1, classes, H, W). It runs once, in eval mode and without gradients, on a zero frame
            on the device and in the floating dtype of its parameters; its training mode is
            restored afterwards and a temporal model's memory is neither read nor changed.
        input_size: (width, height) of the network input in pixels.

    Returns:
        Counted FLOPs / 1e9 (see the module docstring for what is counted).

    Raises:
        ValueError: the model does not run in PyTorch (an imported ONNX graph: nothing to count),
            or ``input_size`` is not two positive sizes.
    """
    if getattr(model, "runs_in_torch", True) is False:
        raise ValueError(
            f"{type(model).__name__} does not run in PyTorch, so its operations cannot be counted"
        )
    width, height = input_size
    if width < 1 or height < 1:
        raise ValueError(f"input_size must be (width, height) > 0, got {input_size!r}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = (
        parameter.dtype
        if parameter is not None and parameter.is_floating_point()
        else torch.float32
    )
    frame = torch.zeros((1, 3, height, width), device=device, dtype=dtype)
    was_training = model.training
    # A forward in training mode would update BatchNorm's running statistics: leave no trace.
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(frame)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


__all__ = ["count_gflops"]
