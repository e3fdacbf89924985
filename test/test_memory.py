"""LMANet local memory attention: the attention kernel, the memory state and the wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from checkpoints import tiny_espnet
from video_seg_ros.checkpoint import (
    Checkpoint,
    add_memory_to_checkpoint,
    load_checkpoint,
    strip_memory_from_checkpoint,
    with_memory_settings,
)
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.models import build_from_checkpoint
from video_seg_ros.models.local_attention import (
    dense_local_attention,
    local_attention,
    local_window_attention,
    tile_memory_frame,
)
from video_seg_ros.models.memory import (
    MemoryAugmentedSegmenter,
    MemoryConfig,
    MemoryState,
    wrap_with_memory,
)


class TinySegmenter(nn.Module):
    """A small real encoder/decoder that follows the models contract (features at 1/8)."""

    def __init__(self, num_classes: int = 5, feature_channels: int = 12):
        super().__init__()
        self.num_classes, self.feature_channels = num_classes, feature_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, feature_channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(feature_channels, num_classes, 1)

    def encode(self, x):
        return self.encoder(x), None

    def decode(self, features, skips, out_size):
        return nn.functional.interpolate(
            self.classifier(features), size=tuple(out_size), mode="bilinear", align_corners=False
        )

    def forward(self, x):
        return self.decode(*self.encode(x), x.shape[-2:])


def tiny_memory_model(seed=0, **config) -> MemoryAugmentedSegmenter:
    torch.manual_seed(seed)
    model = wrap_with_memory(
        TinySegmenter(), {"key_channels": 4, "value_channels": 6, "window": 3, "tile": 4, **config}
    )
    # Give the fusion non-zero weights so the memory really changes the output in these tests.
    with torch.no_grad():
        for parameter in model.fusion.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


def random_frames(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- the local attention kernel --------------------------------------------------------------
@pytest.mark.parametrize(
    "batch,frames,height,width,window,tile",
    [
        (2, 3, 13, 19, 5, 4),  # sizes not multiples of the tile, batch > 1
        (1, 1, 10, 7, 9, 8),  # window wider than the image
        (2, 2, 9, 9, 21, 8),  # the paper's 21x21 window
        (1, 4, 16, 16, 3, 8),
        (1, 2, 6, 11, 1, 2),  # 1x1 window: only the same pixel in each frame
    ],
)
def test_local_attention_equals_dense_masked_reference(batch, frames, height, width, window, tile):
    g = torch.Generator().manual_seed(window * 7 + height)
    query = torch.randn(batch, 6, height, width, generator=g)
    keys = torch.randn(batch, frames, 6, height, width, generator=g)
    values = torch.randn(batch, frames, 5, height, width, generator=g)
    fast = local_window_attention(query, keys, values, window, tile)
    reference = dense_local_attention(query, keys, values, window)
    assert fast.shape == (batch, 5, height, width)
    assert torch.allclose(fast, reference, atol=1e-5, rtol=0)


def test_local_attention_gradients_equal_dense_reference():
    g = torch.Generator().manual_seed(3)
    inputs = [
        torch.randn(2, 4, 9, 10, generator=g, dtype=torch.float64).requires_grad_(),
        torch.randn(2, 2, 4, 9, 10, generator=g, dtype=torch.float64).requires_grad_(),
        torch.randn(2, 2, 3, 9, 10, generator=g, dtype=torch.float64).requires_grad_(),
    ]
    weight = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64)
    (local_window_attention(*inputs, window=5, tile=4) * weight).sum().backward()
    fast_grads = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    (dense_local_attention(*inputs, window=5) * weight).sum().backward()
    for fast, dense in zip(fast_grads, (x.grad for x in inputs)):
        assert torch.isfinite(fast).all()
        assert torch.allclose(fast, dense, atol=1e-10)


def test_local_attention_softmax_is_joint_over_all_memory_frames():
    # One frame whose keys match the query strongly takes (almost) all weight from the others.
    query = torch.ones(1, 2, 4, 4)
    weak = tile_memory_frame(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), window=3, tile=4)
    strong = tile_memory_frame(
        torch.full((1, 2, 4, 4), 20.0), torch.ones(1, 1, 4, 4), window=3, tile=4
    )
    out = local_attention(query, [weak, strong, weak])
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)


def test_local_attention_rejects_memory_of_another_size():
    frame = tile_memory_frame(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), window=3)
    with pytest.raises(ValueError, match="reset the memory"):
        local_attention(torch.zeros(1, 2, 5, 4), [frame])
    with pytest.raises(ValueError, match="odd"):
        tile_memory_frame(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), window=4)


# ---- the memory state --------------------------------------------------------------------------
def _entry(value: float):
    return tile_memory_frame(
        torch.full((1, 2, 3, 3), value), torch.full((1, 1, 3, 3), value), window=3
    )


def test_memory_state_is_fifo_and_bounded():
    state = MemoryState(capacity=3)
    for i in range(5):
        state.push(_entry(float(i)))
        assert len(state) == min(i + 1, 3)
    # The newest three, oldest first (tile centres hold the pushed value).
    centres = [frame.values.amax().item() for frame in state.frames]
    assert centres == [2.0, 3.0, 4.0]
    assert state.device == torch.device("cpu")


def test_memory_state_reset_empties_it():
    state = MemoryState(capacity=2)
    state.push(_entry(1.0))
    state.reset()
    assert len(state) == 0 and state.frames == [] and state.device is None


def test_memory_state_refuses_frames_of_another_size():
    state = MemoryState(capacity=2)
    state.push(_entry(1.0))
    other = tile_memory_frame(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), window=3)
    with pytest.raises(ValueError, match="reset"):
        state.push(other)


# ---- the wrapper ----------------------------------------------------------------------------
def test_model_memory_is_bounded_by_memory_length_and_reset_empties_it():
    model = tiny_memory_model(memory_length=2)
    with torch.no_grad():
        for i in range(4):
            model.step(random_frames(1, 3, 32, 48, seed=i))
            assert len(model.state) == min(i + 1, 2)
    model.reset_state()
    assert len(model.state) == 0


def test_empty_memory_attends_to_the_current_frame():
    model = tiny_memory_model()
    x = random_frames(2, 3, 32, 48)
    with torch.no_grad():
        single = model(x)
        first_step = model.step(x)
        features, skips = model.base.encode(x)
        own = model.read_and_fuse(features, [model.memory_entry(features)])
        expected = model.base.decode(own, skips, x.shape[-2:])
        # A static scene: a memory full of the same frame reads the same values as the empty
        # memory.
        later_steps = [model.step(x) for _ in range(3)]
    assert torch.isfinite(single).all()
    assert torch.equal(single, first_step)
    assert torch.allclose(single, expected, atol=1e-6)
    for later in later_steps:
        assert torch.allclose(later, single, atol=1e-5)


def test_memory_changes_the_output_once_other_frames_are_stored():
    model = tiny_memory_model()
    with torch.no_grad():
        alone = model(random_frames(1, 3, 32, 48, seed=5))
        model.step(random_frames(1, 3, 32, 48, seed=6))
        with_memory = model.step(random_frames(1, 3, 32, 48, seed=5))
    assert (alone - with_memory).abs().max() > 1e-3


def test_fresh_default_memory_gives_the_base_models_output():
    torch.manual_seed(0)
    base = TinySegmenter().eval()
    model = wrap_with_memory(base, {"window": 3}).eval()
    x = random_frames(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-6)
        model.step(random_frames(2, 3, 32, 48, seed=9))
        assert torch.allclose(model.step(x), base(x), atol=1e-6)


def test_sequence_forward_equals_streaming_steps():
    model = tiny_memory_model(memory_length=3)
    frames = random_frames(2, 5, 3, 32, 48)  # 4 past frames: only the last 3 are kept
    with torch.no_grad():
        sequence = model.forward_sequence(frames)
        model.reset_state()
        for t in range(5):
            streamed = model.step(frames[:, t])
        no_past = model.forward_sequence(frames[:, :1])
    assert torch.allclose(sequence, streamed, atol=1e-5)
    assert torch.allclose(no_past, model(frames[:, 0]), atol=1e-6)


def test_batched_streams_equal_separate_streams():
    model = tiny_memory_model()
    frames = random_frames(2, 4, 3, 32, 48)
    with torch.no_grad():
        batched = [model.step(frames[:, t]) for t in range(4)]
        separate = []
        for b in range(2):
            model.reset_state()
            separate.append([model.step(frames[b : b + 1, t]) for t in range(4)])
    for t in range(4):
        assert torch.allclose(batched[t], torch.cat([separate[0][t], separate[1][t]]), atol=1e-5)


def test_step_starts_a_new_stream_when_the_input_size_changes():
    model = tiny_memory_model()
    with torch.no_grad():
        model.step(random_frames(1, 3, 32, 48))
        model.step(random_frames(1, 3, 32, 48, seed=2))
        x = random_frames(1, 3, 40, 64, seed=3)
        out = model.step(x)
    assert len(model.state) == 1
    assert torch.allclose(out, model(x), atol=1e-6)


@pytest.mark.parametrize("fusion", ["residual-gated", "paper"])
def test_frozen_base_trains_only_the_memory_layers(fusion):
    model = tiny_memory_model(fusion=fusion).train().freeze_base()
    assert not model.base.training and model.fusion.training
    frames = random_frames(2, 3, 3, 32, 48)
    target = torch.randint(0, 5, (2, 32, 48))
    loss = nn.functional.cross_entropy(model.forward_sequence(frames), target)
    loss.backward()
    assert all(p.grad is None for p in model.base.parameters())
    memory_grads = [p.grad for p in model.memory_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in memory_grads)
    assert any(g.abs().sum() > 0 for g in memory_grads)
    assert model.query_key.weight.grad.abs().sum() > 0


def test_query_key_starts_as_a_copy_of_the_memory_key():
    model = wrap_with_memory(TinySegmenter(), {})
    assert torch.equal(model.query_key.weight, model.memory_key.weight)
    assert model.query_key.weight.data_ptr() != model.memory_key.weight.data_ptr()


def test_memory_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown memory setting.*windw"):
        MemoryConfig.from_dict({"windw": 9})
    with pytest.raises(ValueError, match="odd"):
        MemoryConfig.from_dict({"window": 8})
    with pytest.raises(ValueError, match="fusion"):
        MemoryConfig.from_dict({"fusion": "concat"})
    with pytest.raises(TypeError, match="contract"):
        wrap_with_memory(nn.Conv2d(3, 3, 1), {})


# ---- checkpoints and the engine ---------------------------------------------------------------
@pytest.fixture(scope="module")
def espnet_checkpoint() -> Checkpoint:
    """A small random-weight ESPNet (p=1, q=1) base checkpoint, built once for this module."""
    return tiny_espnet(
        p=1,
        q=1,
        size=(96, 64),
        channel_order="bgr",
        mean=(72.4, 82.9, 73.2),
        std=(45.3, 46.2, 44.9),
        scale=1 / 255,
    )


def _trained_looking_memory(checkpoint: Checkpoint) -> Checkpoint:
    """add_memory_to_checkpoint, then non-zero fusion weights so the memory matters."""
    with_memory = add_memory_to_checkpoint(checkpoint, {"window": 5, "memory_length": 2})
    g = torch.Generator().manual_seed(4)
    with_memory.state_dict = {
        k: (v + 0.2 * torch.randn(v.shape, generator=g) if k.startswith("fusion.") else v)
        for k, v in with_memory.state_dict.items()
    }
    return with_memory


def _video(n=5, h=48, w=80):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h, w + 2 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, i : i + w]) for i in range(n)]  # a panning camera


def test_memory_checkpoint_round_trip_gives_identical_streaming_outputs(
    tmp_path, espnet_checkpoint
):
    checkpoint = _trained_looking_memory(espnet_checkpoint)
    path = checkpoint.save(tmp_path / "memory.pt")
    loaded = load_checkpoint(path)
    assert loaded.memory == checkpoint.memory and loaded.model_name.endswith("+memory")
    before, after = (
        SegmentationEngine(checkpoint, device="cpu", precision="fp32"),
        SegmentationEngine(loaded, device="cpu", precision="fp32"),
    )
    assert after.is_temporal
    frames = _video()
    out_before = [before.segment(f, with_confidence=True) for f in frames]
    out_after = [after.segment(f, with_confidence=True) for f in frames]
    for a, b in zip(out_before, out_after):
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.confidence, b.confidence)
    # The engine really streams: after reset() the first frame's output comes back.
    after.reset()
    assert np.array_equal(
        after.segment(frames[0], with_confidence=True).confidence, out_after[0].confidence
    )
    assert not np.array_equal(out_after[0].confidence, out_after[-1].confidence)


def test_base_checkpoint_loads_and_untrained_memory_matches_it(espnet_checkpoint):
    base_checkpoint = espnet_checkpoint
    with_memory = add_memory_to_checkpoint(base_checkpoint)
    assert base_checkpoint.memory is None and with_memory.memory == MemoryConfig().to_dict()
    frames = _video(3)
    base_engine = SegmentationEngine(base_checkpoint, device="cpu", precision="fp32")
    memory_engine = SegmentationEngine(with_memory, device="cpu", precision="fp32")
    for frame in frames:
        a, b = (
            base_engine.segment(frame, with_confidence=True),
            memory_engine.segment(frame, with_confidence=True),
        )
        assert np.array_equal(a.labels, b.labels)
        assert np.allclose(a.confidence, b.confidence, atol=1e-5)
    with pytest.raises(ValueError, match="already has a memory"):
        add_memory_to_checkpoint(with_memory)


def test_memory_can_be_stripped_or_retuned_without_retraining(espnet_checkpoint):
    base_checkpoint = espnet_checkpoint
    with_memory = _trained_looking_memory(base_checkpoint)
    stripped = strip_memory_from_checkpoint(with_memory)
    assert stripped.memory is None
    base_model, stripped_model = (
        build_from_checkpoint(base_checkpoint),
        build_from_checkpoint(stripped),
    )
    for (name, a), b in zip(base_model.state_dict().items(), stripped_model.state_dict().values()):
        assert torch.equal(a, b), name
    longer = with_memory_settings(with_memory, memory_length=4, window=7)
    model = build_from_checkpoint(longer)
    assert model.state.capacity == 4 and model.config.window == 7
    with pytest.raises(ValueError, match="without retraining"):
        with_memory_settings(with_memory, value_channels=8)
