"""ONNX export (``video-seg-export`` and ``backends.onnx_export``): the graph computes what the
torch
model computes, memory included, and the tool refuses to write a graph that does not.

The ONNX files run with OpenVINO (onnxruntime is not a dependency). Tiny random-init models at
128x64 keep export and conversion short.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import random_memory_checkpoint, tiny_espnet
from video_seg_ros.backends.onnx_export import (
    IMAGE,
    LOGITS,
    STATE_INPUTS,
    STATE_OUTPUTS,
    empty_state,
    export_onnx,
)
from video_seg_ros.models import build_from_checkpoint
from video_seg_ros.tools.export import main as export_main

openvino = pytest.importorskip(
    "openvino", reason="openvino is not installed (requirements.txt pins it)"
)
onnx = pytest.importorskip("onnx", reason="onnx is not installed (requirements.txt pins it)")

pytestmark = pytest.mark.openvino

SIZE = (128, 64)


def compile_onnx(path, shapes=None):
    core = openvino.Core()
    model = core.read_model(str(path))
    if shapes:
        model.reshape(shapes)
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def memory_checkpoint(size=SIZE):
    return random_memory_checkpoint(size, seed=2, scale=2.0)


def test_exported_per_frame_graph_equals_torch_at_any_batch_size(tmp_path):
    model = build_from_checkpoint(tiny_espnet(size=SIZE)).eval()
    path = export_onnx(model, SIZE, tmp_path / "tiny.onnx", dynamic_batch=True)
    onnx.checker.check_model(str(path))
    x = torch.randn(3, 3, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
    got = torch.from_numpy(compile_onnx(path)({IMAGE: x.numpy()})[LOGITS])
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_memory_through_the_exported_graph_equals_the_torch_memory_with_a_reset(tmp_path):
    model = build_from_checkpoint(memory_checkpoint()).eval()
    path = export_onnx(model, SIZE, tmp_path / "memory.onnx")
    graph = compile_onnx(path)
    assert [i.get_any_name() for i in graph.inputs] == [IMAGE, *STATE_INPUTS]
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, SIZE[1], SIZE[0], generator=generator) for _ in range(5)]
    state = [t.numpy() for t in empty_state(model, SIZE)]
    model.reset_state()
    with torch.inference_mode():
        for i, image in enumerate(images):
            if i == 3:  # a reset: zero inputs on the graph side, reset_state() on the torch side
                model.reset_state()
                state = [t.numpy() for t in empty_state(model, SIZE)]
            expected = model.step(image)
            outputs = graph({IMAGE: image.numpy(), **dict(zip(STATE_INPUTS, state))})
            state = [outputs[name] for name in STATE_OUTPUTS]
            assert (torch.from_numpy(outputs[LOGITS]) - expected).abs().max() < 1e-4, f"frame {i}"
            # The state the graph hands back is the torch memory: same frames, same keys, newest
            # last.
            stored = model.state.frames
            valid = state[2][0]
            assert valid.sum() == len(stored)
            for slot, frame in zip(range(len(valid) - len(stored), len(valid)), stored):
                np.testing.assert_allclose(
                    state[0][0, slot], frame.keys.numpy(), rtol=1e-4, atol=1e-4
                )
                np.testing.assert_allclose(
                    state[1][0, slot], frame.values.numpy(), rtol=1e-4, atol=1e-4
                )
        # ... and the memory changes the output (so the comparison covers it).
        model.reset_state()
        alone = model.step(images[2])
        model.step(images[0])
        assert (model.step(images[2]) - alone).abs().max() > 1e-3


# In a child process: the crash this guards against (SIGFPE in the exporter's shape inference)
# killed the whole process, and would take the test session with it.
SMALL_MEMORY_EXPORT = """
import sys, torch
sys.path.insert(0, {test_dir!r})
from test_export import compile_onnx, memory_checkpoint
from video_seg_ros.backends import onnx_export as ox
from video_seg_ros.models import build_from_checkpoint
size = {size!r}
model = build_from_checkpoint(memory_checkpoint(size)).eval()
path = ox.export_onnx(model, size, {path!r})
image = torch.randn(1, 3, size[1], size[0], generator=torch.Generator().manual_seed(0))
state = [t.numpy() for t in ox.empty_state(model, size)]
with torch.inference_mode():
    expected = model.step(image)
inputs = {{ox.IMAGE: image.numpy(), **dict(zip(ox.STATE_INPUTS, state))}}
got = compile_onnx(path)(inputs)[ox.LOGITS]
print(float((torch.from_numpy(got) - expected).abs().max()))
"""


@pytest.mark.parametrize("size", [(64, 32), (80, 40)], ids=["1/8 map 8x4", "1/8 map 10x5"])
def test_a_memory_model_exports_at_sizes_whose_attention_is_one_tile(tmp_path, size):
    import subprocess
    import sys
    from pathlib import Path

    script = SMALL_MEMORY_EXPORT.format(
        test_dir=str(Path(__file__).parent), size=size, path=str(tmp_path / "memory.onnx")
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-2000:]}"
    assert float(result.stdout.split()[-1]) < 1e-4, result.stdout


def test_export_tool_checks_and_writes_a_dynamic_graph(tmp_path, capsys):
    checkpoint = tiny_espnet(size=SIZE).save(tmp_path / "tiny.pt")
    out = tmp_path / "tiny.onnx"
    assert (
        export_main(
            ["--checkpoint", str(checkpoint), "-o", str(out), "--dynamic-batch", "--dynamic-size"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "max |logit difference|" in printed
        and "labels agree on" in printed
        and "(1, 3, 48, 96)" in printed
    )
    graph = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert not (tmp_path / "tiny.onnx.partial").exists()


def test_export_tool_writes_a_memory_checkpoint_with_its_state_and_refuses_dynamic_shapes(
    tmp_path, capsys
):
    checkpoint = memory_checkpoint().save(tmp_path / "memory.pt")
    out = tmp_path / "memory.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "-o", str(out)]) == 0
    assert "frame 2 (after a reset)" in capsys.readouterr().out
    names = [i.name for i in onnx.load(str(out)).graph.input]
    assert names == [IMAGE, *STATE_INPUTS]
    assert (
        export_main(
            ["--checkpoint", str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--dynamic-batch"]
        )
        == 2
    )
    assert "fixed size" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


def test_export_tool_refuses_to_write_a_graph_outside_the_tolerance(tmp_path, capsys):
    checkpoint = tiny_espnet(size=SIZE).save(tmp_path / "tiny.pt")
    out = tmp_path / "tiny.onnx"
    # OpenVINO's fp32 kernels round differently from PyTorch's: a zero tolerance cannot be met.
    assert export_main(["--checkpoint", str(checkpoint), "-o", str(out), "--atol", "1e-12"]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "tiny.onnx.partial").exists()


@pytest.mark.parametrize(
    ("size", "window", "tile"), [((8, 16), 5, 8), ((13, 21), 9, 8), ((7, 9), 3, 4)]
)
def test_static_tiling_for_export_copies_exactly_what_the_attention_tiling_copies(
    size, window, tile
):
    from video_seg_ros.models.local_attention import tile_memory_frame
    from video_seg_ros.models.memory import tile_memory_frame_static

    generator = torch.Generator().manual_seed(0)
    key, value = (
        torch.randn(2, 16, *size, generator=generator),
        torch.randn(2, 32, *size, generator=generator),
    )
    reference, static = (
        tile_memory_frame(key, value, window, tile),
        tile_memory_frame_static(key, value, window, tile),
    )
    assert torch.equal(reference.keys, static.keys) and torch.equal(
        reference.values, static.values
    )
    assert (reference.size, reference.batch, reference.radius) == (
        static.size,
        static.batch,
        static.radius,
    )


def test_explicit_state_step_equals_the_streaming_step_for_each_batch_element():
    """Two cameras in one batch with differently full memories, each equal to its own stream."""
    model = build_from_checkpoint(memory_checkpoint()).eval()
    generator = torch.Generator().manual_seed(3)
    images = [torch.randn(1, 3, SIZE[1], SIZE[0], generator=generator) for _ in range(4)]
    keys, values, valid = empty_state(model, SIZE, batch=2)
    with torch.inference_mode():
        # camera 0 sees images 0..3; camera 1 joins at image 2 (its memory starts empty there).
        _, *first = model.step_with_state(images[0], *(t[:1] for t in (keys, values, valid)))
        _, *first = model.step_with_state(images[1], *first)
        state = [torch.cat([a, b]) for a, b in zip(first, (t[1:] for t in (keys, values, valid)))]
        for image in images[2:]:
            logits, *state = model.step_with_state(torch.cat([image, image]), *state)
        model.reset_state()
        for image in images:
            camera0 = model.step(image)
        model.reset_state()
        for image in images[2:]:
            camera1 = model.step(image)
    assert (logits[:1] - camera0).abs().max() < 1e-5
    assert (logits[1:] - camera1).abs().max() < 1e-5
    assert (camera0 - camera1).abs().max() > 1e-3  # the two memories really differ
