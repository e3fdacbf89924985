"""An imported ONNX graph as a module: the graph's bytes in the state_dict, nothing PyTorch can
run.

``video-seg-import --onnx FILE`` writes a checkpoint with ``arch: onnx`` whose state_dict holds
the file's bytes as one uint8 tensor (``graph``), so the one checkpoint format (read with
``weights_only=True``) carries a user's network unchanged, and every conversion cache keyed by
the state_dict sees a changed graph. The OpenVINO and TensorRT backends run it
(:mod:`video_seg_ros.backends.onnx_graph` adapts it to their image -> logits contract);
:class:`ImportedGraph` only holds it, and ``runs_in_torch = False`` tells the engine so.

Builder arguments (``arch_kwargs``): ``num_classes`` (channels of the adapted logits, one per
``output_to_class`` entry), ``output`` (``logits``, ``probabilities`` or ``class_ids``: what the
graph returns) and ``output_name`` (which of the graph's outputs that is).
"""

from __future__ import annotations

import torch
from torch import nn

from video_seg_ros.models.registry import register

OUTPUT_KINDS = ("logits", "probabilities", "class_ids")


class ImportedGraph(nn.Module):
    """Holds an ONNX graph (``graph``: uint8 tensor of the file's bytes) and how to read its
    output."""

    runs_in_torch = False
    is_temporal = False

    def __init__(self, num_classes: int, output: str = "logits", output_name: str = ""):
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        self.num_classes = int(num_classes)
        self.output_kind = output
        self.output_name = output_name
        self.register_buffer("graph", torch.zeros(0, dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The buffer takes the stored graph's length (load_state_dict otherwise insists on shapes).
        stored = state_dict.get(prefix + "graph")
        if isinstance(stored, torch.Tensor):
            self.graph = torch.empty_like(stored, device=self.graph.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def graph_bytes(self) -> bytes:
        return self.graph.detach().cpu().numpy().tobytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "an imported ONNX graph does not run in PyTorch; run it with backend "
            "'openvino' (CPU), 'tensorrt' (CUDA) or 'auto'"
        )


@register("onnx")
def onnx_graph(num_classes: int, output: str = "logits", output_name: str = "") -> ImportedGraph:
    """An empty :class:`ImportedGraph`; ``load_state_dict`` puts the graph in."""
    return ImportedGraph(num_classes, output, output_name)


def graph_tensor(data: bytes) -> torch.Tensor:
    """The state_dict entry for an ONNX file's bytes."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
