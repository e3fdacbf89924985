"""video-seg-import: published ESPNet weights -> project checkpoints that behave as the
original."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from shared_data import require_shared_file
from video_seg_ros.checkpoint import file_sha256, load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.frames import read_label, read_rgb
from video_seg_ros.labels import IGNORE_ID
from video_seg_ros.metrics import ConfusionMatrix
from video_seg_ros.models import build_from_checkpoint, build_model
from video_seg_ros.tools.import_weights import main
from video_seg_ros.weights_import import WeightsImportError, import_weights

ESPNET_WEIGHTS = {
    # file -> (preset, expected builder arguments read from the weights)
    "espnet_p_2_q_3.pth": ("cityscapes", {"num_classes": 20, "p": 2, "q": 3}),
    "espnet_p_2_q_5.pth": ("cityscapes", {"num_classes": 20, "p": 2, "q": 5}),
    "espnet_p_2_q_8.pth": ("cityscapes", {"num_classes": 20, "p": 2, "q": 8}),
    "espnet_p_2_q_8_camvid.pth": (
        "camvid",
        {"num_classes": 12, "p": 2, "q": 8, "decoder_skip_channels": 19},
    ),
}
FRAME = "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"
GROUND_TRUTH = "data/cityscapes_val/gtFine/frankfurt_000001_058914_gtFine_labelTrainIds.png"


@pytest.fixture
def random_espnet_weights(tmp_path):
    """A plain state_dict file shaped like the published Cityscapes ESPNet-(2,3), random values."""
    torch.manual_seed(0)
    model = build_model("espnet", num_classes=20, p=2, q=3)
    path = tmp_path / "espnet_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("file_name", sorted(ESPNET_WEIGHTS))
def test_published_espnet_weights_load_with_no_missing_or_unexpected_keys(shared, file_name):
    weights = require_shared_file(shared, f"weights/espnet/{file_name}")
    preset, expected_kwargs = ESPNET_WEIGHTS[file_name]
    published = torch.load(weights, map_location="cpu", weights_only=True)
    checkpoint = import_weights("espnet", preset, weights)
    assert checkpoint.arch_kwargs == expected_kwargs
    model = build_model("espnet", **expected_kwargs)
    result = model.load_state_dict(published, strict=False)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] == []
    # Every published tensor ends up in the checkpoint unchanged.
    for key, value in published.items():
        assert torch.equal(checkpoint.state_dict[key], value), key


def test_published_cgnet_weights_load_and_keep_the_source_preprocessing(shared):
    weights = require_shared_file(shared, "weights/cgnet/cgnet_m3n21_camvid_trainval.pth")
    inform = json.loads(
        require_shared_file(shared, "weights/cgnet/cgnet_camvid_inform.json").read_text()
    )
    published = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    checkpoint = import_weights("cgnet", "camvid", weights)
    assert checkpoint.arch_kwargs == {"num_classes": 11, "m": 3, "n": 21}
    assert set(checkpoint.state_dict) == set(published)
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in published.items())
    pre = checkpoint.preprocessing
    assert (pre.channel_order, pre.std, pre.scale) == ("rgb", [1.0, 1.0, 1.0], 1.0)
    assert pre.mean == pytest.approx(inform["mean"])
    assert checkpoint.output_to_class == list(range(11))


def test_checkpoint_records_labels_preprocessing_and_source(random_espnet_weights):
    checkpoint = import_weights(
        "espnet", "cityscapes", random_espnet_weights, command="video-seg-import x"
    )
    assert checkpoint.output_to_class == list(range(19)) + [IGNORE_ID]  # background -> unlabelled
    assert len(checkpoint.class_names) == 19 and len(checkpoint.palette) == 19
    pre = checkpoint.preprocessing
    assert (pre.input_width, pre.input_height, pre.channel_order) == (1024, 512, "bgr")
    assert pre.mean == pytest.approx([72.3923111, 82.90893555, 73.15840149])
    assert pre.std == pytest.approx([45.3192215, 46.15289307, 44.91483307])
    assert pre.scale == pytest.approx(1 / 255)
    assert checkpoint.source["sha256"] == file_sha256(random_espnet_weights)
    assert checkpoint.source["weights_file"] == "espnet_random.pth"
    assert checkpoint.source["command"] == "video-seg-import x"


def test_checkpoint_round_trip_gives_identical_outputs(random_espnet_weights, tmp_path):
    out = tmp_path / "espnet.pt"
    assert (
        main(
            [
                "--arch",
                "espnet",
                "--preset",
                "cityscapes",
                "--weights",
                str(random_espnet_weights),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    loaded = load_checkpoint(out)
    assert loaded.source["command"].startswith("video-seg-import --arch espnet")
    reference = build_model("espnet", num_classes=20, p=2, q=3).eval()
    reference.load_state_dict(torch.load(random_espnet_weights, weights_only=True))
    restored = build_from_checkpoint(loaded).eval()
    x = torch.randn(2, 3, 64, 96) * 0.02
    with torch.inference_mode():
        assert torch.equal(reference(x), restored(x))


def test_corrupt_weights_file_is_reported_clearly(random_espnet_weights, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(random_espnet_weights.read_bytes()[:2000])
    code = main(
        [
            "--arch",
            "espnet",
            "--preset",
            "cityscapes",
            "--weights",
            str(corrupt),
            "-o",
            str(tmp_path / "out.pt"),
        ]
    )
    assert code == 1  # a run-time failure (usage errors exit with 2)
    message = capsys.readouterr().err
    assert "could not read" in message and "damaged" in message
    assert not (tmp_path / "out.pt").exists()


def test_missing_weights_file_is_reported_clearly(tmp_path):
    with pytest.raises(WeightsImportError, match="weights file not found"):
        import_weights("espnet", "cityscapes", tmp_path / "nope.pth")


def test_key_mismatch_lists_the_offending_keys(random_espnet_weights, tmp_path):
    state = torch.load(random_espnet_weights, weights_only=True)
    del state["encoder.level1.conv.weight"]
    state["decoder.extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsImportError) as error:
        import_weights("espnet", "cityscapes", bad)
    assert "missing keys: encoder.level1.conv.weight" in str(error.value)
    assert "unexpected keys: decoder.extra.weight" in str(error.value)


def test_wrong_preset_or_q_is_rejected_with_advice(random_espnet_weights):
    with pytest.raises(WeightsImportError, match="preset camvid expects 12"):
        import_weights("espnet", "camvid", random_espnet_weights)
    with pytest.raises(WeightsImportError, match="--q 8 given, but the weights have q=3"):
        import_weights("espnet", "cityscapes", random_espnet_weights, q=8)


def test_engine_input_equals_original_espnet_preprocessing(shared, random_espnet_weights):
    """sacmehta/ESPNet normalises the BGR float image, then resizes it, then divides by 255."""
    frame_bgr = cv2.imread(str(require_shared_file(shared, FRAME)))
    checkpoint = import_weights("espnet", "cityscapes", random_espnet_weights)
    pre = checkpoint.preprocessing
    original = frame_bgr.astype(np.float32)
    original = (original - np.float32(pre.mean)) / np.float32(pre.std)
    original = cv2.resize(original, (1024, 512)) / 255.0
    engine = SegmentationEngine(checkpoint, device="cpu", precision="fp32")
    ours = engine.preprocess([frame_bgr], channel_order="bgr")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, original, atol=2e-6)


@pytest.mark.slow
def test_imported_espnet_p2q8_segments_the_real_cityscapes_frame_as_published(shared):
    """The original network reaches 92.7-94.3 % pixel accuracy on this frame
    (../shared/README.md)."""
    checkpoint = import_weights(
        "espnet", "cityscapes", require_shared_file(shared, "weights/espnet/espnet_p_2_q_8.pth")
    )
    frame_bgr = cv2.imread(str(require_shared_file(shared, FRAME)))
    truth = read_label(require_shared_file(shared, GROUND_TRUTH), "trainids")
    result = SegmentationEngine(checkpoint, device="cpu", precision="fp32").segment(
        frame_bgr, channel_order="bgr"
    )
    assert result.labels.shape == truth.shape and result.labels.dtype == np.uint8
    scores = ConfusionMatrix(19).update(result.labels, truth)
    assert 0.92 <= scores.pixel_accuracy <= 0.95
    assert scores.miou > 0.45


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "weights", "minimum_accuracy"),
    [
        ("espnet", "weights/espnet/espnet_p_2_q_8_camvid.pth", 0.93),  # measured 94.8 %
        ("cgnet", "weights/cgnet/cgnet_m3n21_camvid_trainval.pth", 0.96),  # measured 97.5 %
    ],
)
def test_imported_camvid_models_segment_a_real_camvid_frame(
    shared, arch, weights, minimum_accuracy
):
    """One CamVid val frame: a wrong channel order or statistics drops accuracy far below this."""
    checkpoint = import_weights(arch, "camvid", require_shared_file(shared, weights))
    frame_rgb = read_rgb(require_shared_file(shared, "data/camvid/val/0016E5_07959.png"))
    truth = read_label(
        require_shared_file(shared, "data/camvid/valannot/0016E5_07959.png"), "camvid"
    )
    result = SegmentationEngine(checkpoint, device="cpu", precision="fp32").segment(
        frame_rgb, channel_order="rgb"
    )
    assert ConfusionMatrix(11).update(result.labels, truth).pixel_accuracy >= minimum_accuracy
