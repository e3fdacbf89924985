"""Model architectures: shapes, dtypes and the encoder/decoder contract every segmenter follows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from video_seg_ros.models import available_architectures, build_model

# (arch, builder kwargs): small variants of each registered architecture.
ARCHITECTURES = [
    ("espnet", {"num_classes": 20, "p": 2, "q": 3}),
    ("espnet", {"num_classes": 12, "p": 2, "q": 8, "decoder_skip_channels": 19}),
    ("pspnet18", {"num_classes": 19}),
    ("cgnet", {"num_classes": 11, "m": 2, "n": 3}),
    ("dicenet", {"num_classes": 20, "width_scale": 0.5}),
]
IDS = ["espnet-city-q3", "espnet-camvid-q8", "pspnet18", "cgnet-m2n3", "dicenet-s0.5"]


_BUILT: dict[str, torch.nn.Module] = {}


def _model(arch, kwargs):
    """Each variant is built once per session (ResNet initialisation alone takes a second)."""
    key = f"{arch}{sorted(kwargs.items())}"
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = build_model(arch, **kwargs)
    return _BUILT[key].eval()


def test_every_model_builder_is_registered():
    assert {"espnet", "pspnet18", "cgnet", "dicenet"} <= set(available_architectures())


@pytest.mark.parametrize(("arch", "kwargs"), ARCHITECTURES, ids=IDS)
def test_logits_have_input_size_and_one_channel_per_class(arch, kwargs):
    model = _model(arch, kwargs)
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 32, 48))
    assert logits.shape == (2, kwargs["num_classes"], 32, 48)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.num_classes == kwargs["num_classes"]


@pytest.mark.parametrize(("arch", "kwargs"), ARCHITECTURES, ids=IDS)
def test_encoder_features_are_at_one_eighth_resolution(arch, kwargs):
    model = _model(arch, kwargs)
    with torch.inference_mode():
        features, _ = model.encode(torch.randn(1, 3, 32, 48))
    assert features.shape == (1, model.feature_channels, 4, 6)
    assert isinstance(model.feature_channels, int)


@pytest.mark.parametrize(("arch", "kwargs"), ARCHITECTURES, ids=IDS)
def test_forward_equals_decode_of_encode(arch, kwargs):
    model = _model(arch, kwargs)
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        features, skips = model.encode(x)
        assert torch.equal(model(x), model.decode(features, skips, x.shape[-2:]))
        # The decoder also serves other output sizes (the memory wrapper and the engine rely on
        # it).
        assert model.decode(features, skips, (32, 40)).shape == (1, kwargs["num_classes"], 32, 40)


@pytest.mark.parametrize(("arch", "kwargs"), ARCHITECTURES, ids=IDS)
def test_input_sizes_not_divisible_by_eight_still_give_full_size_logits(arch, kwargs):
    model = _model(arch, kwargs)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 37, 51)).shape == (1, kwargs["num_classes"], 37, 51)


@pytest.mark.parametrize(("arch", "kwargs"), ARCHITECTURES, ids=IDS)
def test_models_train_end_to_end(arch, kwargs):
    """Every parameter receives a gradient (no dead branch in the encoder/decoder split)."""
    model = _model(arch, kwargs).train()
    model.zero_grad(set_to_none=True)
    try:
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean().backward()
        dead = [name for name, p in model.named_parameters() if p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    assert dead == []


def test_espnet_depth_arguments_set_the_number_of_esp_blocks():
    model = build_model("espnet", num_classes=20, p=2, q=5)
    assert len(model.encoder.level2) == 2 and len(model.encoder.level3) == 5
    assert model.conv.conv.in_channels == 16 + 20
    camvid = build_model("espnet", num_classes=12, decoder_skip_channels=19)
    assert camvid.conv.conv.in_channels == 19 + 12


def test_espnet_rejects_an_unknown_decoder_skip_width():
    with pytest.raises(ValueError, match="decoder_skip_channels"):
        build_model("espnet", decoder_skip_channels=17)


@pytest.mark.parametrize(
    ("output_stride", "feature_size"), [(8, (4, 6)), (16, (2, 3)), (32, (1, 2))]
)
def test_pspnet18_output_stride_option(output_stride, feature_size):
    model = build_model("pspnet18", num_classes=5, output_stride=output_stride).eval()
    with torch.inference_mode():
        features, _ = model.encode(torch.randn(1, 3, 32, 48))
        assert features.shape[-2:] == feature_size
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 5, 32, 48)


def test_pspnet18_backbone_keeps_resnet18_weight_shapes():
    """Dilation changes strides and rates only, so ImageNet ResNet-18 weights still fit."""
    from torchvision.models import resnet18

    reference = {
        k: v.shape
        for k, v in resnet18(weights=None).state_dict().items()
        if not k.startswith("fc.")
    }
    model = build_model("pspnet18", num_classes=19)
    ours = {
        k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): v.shape
        for k, v in model.state_dict().items()
        if k.startswith(("stem.", "layer"))
    }
    assert ours == reference


def test_unknown_architecture_error_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*espnet"):
        build_model("segformer")


def test_building_one_architecture_imports_only_its_own_module():
    """A node serving ESPNet does not pay for torchvision's import (about 2 s of its start)."""
    code = (
        "import sys\n"
        "from video_seg_ros.models import build_model\n"
        "build_model('espnet', num_classes=20)\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
        "assert 'video_seg_ros.models.pspnet' not in sys.modules\n"
        "build_model('pspnet18', num_classes=20)\n"
        "assert 'torchvision' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
