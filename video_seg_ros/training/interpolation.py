"""Weight-space interpolation of a fine-tuned checkpoint with the one it started from.

``theta = alpha * theta_finetuned + (1 - alpha) * theta_start`` (WiSE-FT: Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022). Both checkpoints must be the same network; because
fine-tuning from a checkpoint stays in its basin, every alpha in between is a working model that
trades what fine-tuning learned (here: the synthetic street) against what the start knew (real
Cityscapes), usually better than either end on the mix. BatchNorm statistics are interpolated
like the weights; integer buffers (BatchNorm's step counters) come from the fine-tuned side.
"""

from __future__ import annotations

import copy


from video_seg_ros.checkpoint import Checkpoint, CheckpointError


def interpolate_checkpoints(
    finetuned: Checkpoint, start: Checkpoint, alpha: float, provenance: dict | None = None
) -> Checkpoint:
    """A copy of ``finetuned`` whose floating-point tensors are ``alpha`` of its own plus
    ``1 - alpha`` of ``start``'s; ``provenance`` is recorded under ``training["interpolation"]``.

    Raises :class:`CheckpointError` naming the difference when the two are not the same network.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    if (finetuned.arch, finetuned.arch_kwargs) != (start.arch, start.arch_kwargs):
        raise CheckpointError(
            f"the checkpoints are different networks: {finetuned.model_name} and "
            f"{start.model_name}; interpolate a fine-tuned checkpoint with the one it started from"
        )
    own, other = finetuned.state_dict, start.state_dict
    if set(own) != set(other):
        missing = sorted(set(own) ^ set(other))
        raise CheckpointError(
            f"the checkpoints' tensors differ ({len(missing)} names in only one, e.g. "
            f"{missing[0]}); a memory checkpoint interpolates only with a memory checkpoint"
        )
    mixed = {}
    for name, tensor in own.items():
        if tensor.shape != other[name].shape:
            raise CheckpointError(
                f"{name}: shape {tuple(tensor.shape)} vs {tuple(other[name].shape)}"
            )
        if tensor.is_floating_point():
            blend = alpha * tensor.double() + (1.0 - alpha) * other[name].double()
            mixed[name] = blend.to(tensor.dtype)
        else:
            mixed[name] = tensor.clone()
    result = copy.deepcopy(finetuned)
    result.state_dict = mixed
    result.training = dict(result.training or {})
    result.training["interpolation"] = {"alpha": float(alpha), **(provenance or {})}
    return result


__all__ = ["interpolate_checkpoints"]
