"""Bring your own model (docs/byo_model.md): ONNX graphs and torchvision networks as checkpoints
that
run everywhere a model runs, and ONNX files that carry their own class table.

Real onnx, OpenVINO and torch throughout (no mocks). Tiny random-init models at small inputs keep
export and conversion short; every engine runs fp32 (this CPU has native bf16, which ``auto`` might
pick) with a private OpenVINO cache.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from checkpoints import tiny_espnet
from video_seg_ros.backends import BackendError
from video_seg_ros.backends.onnx_graph import METADATA_PREFIX, GraphError
from video_seg_ros.byo_model import ModelImportError, import_onnx, import_torchvision
from video_seg_ros.checkpoint import CheckpointError, load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.labels import CITYSCAPES, IGNORE_ID, colorize, palette_lookup_table
from video_seg_ros.models import build_from_checkpoint, build_model
from video_seg_ros.precision import calibration_frames
from video_seg_ros.tools.export import main as export_main
from video_seg_ros.tools.import_weights import main as import_main

onnx = pytest.importorskip("onnx", reason="onnx is not installed (requirements.txt pins it)")
pytest.importorskip("openvino", reason="openvino is not installed (requirements.txt pins it)")

pytestmark = pytest.mark.openvino

SIZE = (128, 64)  # network input (W, H) of the tiny models
FRAME_SIZE = (256, 128)  # the frames they segment (W, H): resizing is part of every path
LRASPP = "torchvision:lraspp_mobilenet_v3_large"
#: Preprocessing that centres the frames, so a random linear layer sees more than their brightness.
CENTRED = {"mean": [128.0] * 3, "std": [64.0] * 3, "scale": 1.0}


def plain_export(module: nn.Module, path, size=SIZE, **kwargs):
    """What a user does: torch.onnx.export of their own module (not the package's export)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the TorchScript exporter's deprecation and tracer warnings
        example = torch.randn(1, 3, size[1], size[0])
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, **kwargs)
    return path


def engine(checkpoint, backend="auto", cache=None, **kwargs) -> SegmentationEngine:
    return SegmentationEngine(
        checkpoint,
        device="cpu",
        backend=backend,
        precision="fp32",
        cache_dir=None if cache is None else str(cache),
        **kwargs,
    )


def frames(count=4):
    return calibration_frames(*FRAME_SIZE)[:count]


def agreement(first: SegmentationEngine, second: SegmentationEngine, images) -> float:
    same = [np.mean(first.segment(f).labels == second.segment(f).labels) for f in images]
    return float(np.mean(same))


def structured_lraspp(size=SIZE):
    """Random-init LR-ASPP (19 Cityscapes classes) whose labels vary over a frame: torchvision's
    default init lets the classifier biases pick one class everywhere, so they are zeroed and the
    classifier weights scaled up (larger logit gaps, few near-ties)."""
    torch.manual_seed(0)
    checkpoint = import_torchvision(LRASPP, label_set="cityscapes", size=size)
    checkpoint.state_dict = {
        k: torch.zeros_like(v)
        if k.endswith("classifier.bias")
        else v * 100
        if k.endswith("classifier.weight")
        else v
        for k, v in checkpoint.state_dict.items()
    }
    return checkpoint


class StridedHead(nn.Module):
    """A one-layer 'network' with output stride 8: logits, probabilities or class ids."""

    def __init__(self, output: str = "logits", channels: int = 19):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 8, stride=8)
        with torch.no_grad():  # no bias, so that the frame (not a constant) decides the class
            self.conv.bias.zero_()
        self.output = output

    def forward(self, x):
        scores = self.conv(x)
        if self.output == "probabilities":
            return scores.softmax(1)
        if self.output == "class_ids":
            return scores.argmax(1)
        return scores


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("byo")


@pytest.fixture(scope="module")
def cache(tmp):
    return tmp / "cache"


@pytest.fixture(scope="module")
def tiny_onnx(tmp):
    """The tests' tiny ESPNet (20 outputs, channel 19 = background) exported the plain way, dynamic
    batch and spatial axes, and its native checkpoint."""
    native = tiny_espnet(size=SIZE)
    path = plain_export(
        build_from_checkpoint(native),
        tmp / "tiny_espnet.onnx",
        input_names=["frame"],
        output_names=["scores"],
        dynamic_axes={"frame": {0: "n", 2: "h", 3: "w"}},
    )
    return path, native


# ---- refusals -----------------------------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, x, y):
        return self.conv(x) + y


class IntegerInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return self.conv(x.float() / 255.0)


class RankThreeInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 19, 1)

    def forward(self, x):
        return self.conv(x)


def _export_with(module, path, *example, **kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, **kwargs)
    return path


def test_a_graph_with_several_inputs_is_refused_naming_them(tmp):
    path = _export_with(
        TwoInputs(),
        tmp / "two.onnx",
        torch.randn(1, 3, 8, 8),
        torch.randn(1, 19, 8, 8),
        input_names=["image", "prior"],
    )
    with pytest.raises(
        ModelImportError, match=r"has 2 inputs \('image'.*'prior'.*only input is the"
    ):
        import_onnx(path, label_set="cityscapes")


def test_a_graph_with_an_integer_input_is_refused(tmp):
    path = _export_with(
        IntegerInput(), tmp / "uint8.onnx", torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    )
    with pytest.raises(
        ModelImportError, match=r"\(uint8, 1x3x8x8\) is not a float tensor.*--mean/--std/--scale"
    ):
        import_onnx(path, label_set="cityscapes")


def test_a_graph_whose_input_is_not_nchw_is_refused_with_its_rank(tmp):
    path = _export_with(RankThreeInput(), tmp / "rank3.onnx", torch.randn(1, 3, 16))
    with pytest.raises(
        ModelImportError, match=r"has rank 3; the engine feeds \(N, 3, H, W\) images"
    ):
        import_onnx(path, label_set="cityscapes")


def test_output_channels_that_differ_from_the_class_table_are_refused(tmp):
    path = plain_export(StridedHead(channels=7), tmp / "seven.onnx")
    with pytest.raises(
        ModelImportError,
        match=r"has 7 output channels but the label set cityscapes has 19 "
        r"classes; give a class table with 7 classes",
    ):
        import_onnx(path, label_set="cityscapes")


def test_one_extra_channel_is_refused_with_the_ignore_id_that_would_accept_it(tiny_onnx):
    path, _ = tiny_onnx
    with pytest.raises(
        ModelImportError, match=r"20 output channels .* 19 classes; pass --ignore-id 19"
    ):
        import_onnx(path, label_set="cityscapes", size=SIZE)


def test_dynamic_spatial_axes_without_a_size_are_refused(tiny_onnx):
    path, _ = tiny_onnx
    with pytest.raises(ModelImportError, match=r"dynamic height or width; pass --size WxH"):
        import_onnx(path, label_set="cityscapes", ignore_id=19)


def test_a_size_that_contradicts_a_fixed_input_is_refused(tmp):
    path = plain_export(StridedHead(), tmp / "fixed.onnx")
    with pytest.raises(ModelImportError, match=r"fixed at 128 .* pass --size 128x64"):
        import_onnx(path, label_set="cityscapes", size=(256, 64))


def test_a_graph_without_a_class_table_is_refused_saying_which_flags_give_one(tmp):
    path = plain_export(StridedHead(), tmp / "nolabels.onnx")
    with pytest.raises(
        ModelImportError, match=r"names no classes .*--label-set camvid\|cityscapes or --classes"
    ):
        import_onnx(path)


def test_corrupt_and_truncated_onnx_files_are_refused_with_one_line_at_import(
    tmp, tiny_onnx, capsys
):
    path, _ = tiny_onnx
    data = path.read_bytes()
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    for broken in (truncated, garbage):
        code = import_main(
            [
                "--onnx",
                str(broken),
                "--label-set",
                "cityscapes",
                "--ignore-id",
                "19",
                "--size",
                "128x64",
                "-o",
                str(tmp / "never.pt"),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1, err
        assert (
            err.startswith(f"video-seg-import: error: {broken.name} is not a")
            and "export it again" in err
        )
    assert not (tmp / "never.pt").exists()


def test_a_checkpoint_whose_graph_is_damaged_is_refused_at_engine_start(tmp, tiny_onnx):
    path, _ = tiny_onnx
    checkpoint = import_onnx(path, label_set="cityscapes", ignore_id=19, size=SIZE)
    graph = checkpoint.state_dict["graph"]
    checkpoint.state_dict = {"graph": graph[: len(graph) // 2].clone()}
    with pytest.raises(
        GraphError, match=r"not a readable ONNX graph .*video-seg-import --onnx FILE"
    ):
        engine(checkpoint, cache=tmp / "damaged_cache")


def test_an_onnx_file_given_as_a_checkpoint_says_to_import_it(tiny_onnx):
    path, _ = tiny_onnx
    with pytest.raises(
        CheckpointError,
        match=r"is an ONNX graph, not a checkpoint: import it first with "
        r"`video-seg-import --onnx",
    ):
        load_checkpoint(path)


# ---- ONNX import runs like the native model -----------------------------------------------------
def test_plain_torch_export_of_espnet_imported_with_flags_gives_the_native_labels(
    tmp, tiny_onnx, cache, capsys
):
    path, native = tiny_onnx
    out = tmp / "tiny_from_onnx.pt"
    pre = native.preprocessing
    assert (
        import_main(
            [
                "--onnx",
                str(path),
                "--label-set",
                "cityscapes",
                "--ignore-id",
                "19",
                "--size",
                "128x64",
                "--channel-order",
                pre.channel_order,
                "--mean",
                *map(str, pre.mean),
                "--std",
                *map(str, pre.std),
                "--scale",
                str(pre.scale),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    imported = load_checkpoint(out)
    assert imported.arch == "onnx" and imported.arch_kwargs["output_name"] == "scores"
    assert (
        imported.output_to_class == native.output_to_class
        and imported.class_names == native.class_names
    )
    assert imported.preprocessing == native.preprocessing
    assert imported.source["weights_file"] == path.name and imported.source["sha256"]
    assert (
        bytes(imported.state_dict["graph"].numpy()) == path.read_bytes()
    )  # the user's file, unchanged
    onnx_engine = engine(out, cache=cache)
    assert onnx_engine.backend == "openvino"  # auto picks a backend that runs a graph
    assert agreement(engine(native, backend="torch"), onnx_engine, frames()) >= 0.999
    batch = onnx_engine.segment_batch(frames(3))  # a batch, through the graph's dynamic batch axis
    assert all(
        np.array_equal(r.labels, onnx_engine.segment(f).labels) for r, f in zip(batch, frames(3))
    )


def test_an_imported_graph_refuses_the_torch_backend_and_gates_precision_against_openvino_fp32(
    tmp, tiny_onnx, monkeypatch
):
    from video_seg_ros.runtime import NATIVE_BF16_ENV

    path, _ = tiny_onnx
    checkpoint = import_onnx(path, label_set="cityscapes", ignore_id=19, size=SIZE)
    with pytest.raises(
        BackendError,
        match=r"imported ONNX graph, which PyTorch cannot run: use backend "
        r"'openvino' \(CPU\), 'tensorrt' \(CUDA\) or 'auto'",
    ):
        engine(checkpoint, backend="torch")
    # auto proposes bf16 (the probe says yes); the gate compares it with the OpenVINO fp32 graph
    # (a torch reference would raise: the module holding the graph cannot run).
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    gated = SegmentationEngine(
        checkpoint, device="cpu", precision="auto", cache_dir=str(tmp / "gate_cache")
    )
    decision = gated.precision_decision
    assert (
        gated.backend == "openvino" and decision.agreement is not None and decision.agreement > 0.5
    )
    assert "of the fp32 labels on 4 calibration frames" in (decision.fallback or decision.reason)


def test_a_graph_fixed_at_batch_1_segments_batches_frame_by_frame(tmp, cache):
    path = plain_export(StridedHead(), tmp / "batch1.onnx")
    checkpoint = import_onnx(path, label_set="cityscapes")
    graph_engine = engine(checkpoint, cache=cache)
    batch = graph_engine.segment_batch(frames(3))
    assert all(
        np.array_equal(r.labels, graph_engine.segment(f).labels) for r, f in zip(batch, frames(3))
    )


#: Top-2 score gap (relative to the largest score) below which float32 rounding (torch's
#: convolution next to OpenVINO's, summed in another order, differently on another CPU) may pick
#: either class: such pixels are not compared. Rounding is ~1e-6 of the scores' size.
NEAR_TIE = 1e-4


def _reference_labels(graph_engine, images, output):
    """What the strided head means, computed in torch: scores resized bilinearly (ids: nearest) to
    the network input, then labels resized nearest to the frame, as the engine's CPU path does.
    Returns (labels, decided) per image; ``decided`` is False where the top two scores that pick
    the label are within :data:`NEAR_TIE` (for class ids: the graph's own argmax at 1/8
    resolution, where one undecided cell is a 16x16 block of the frame)."""
    from torch.nn.functional import interpolate

    def top_two_gap(scores):
        top = scores.topk(2, dim=1).values
        return (top[:, 0] - top[:, 1]) / scores.abs().max()

    head = StridedHead(output="logits").eval()
    width, height = SIZE
    results = []
    for image in images:
        with torch.no_grad():
            scores = head.conv(graph_engine.preprocess([image]))
        if output == "class_ids":
            ids = interpolate(scores.argmax(1)[:, None].float(), size=(height, width))[:, 0]
            gap = interpolate(top_two_gap(scores)[:, None], size=(height, width))[:, 0]
        else:
            scores = scores.softmax(1) if output == "probabilities" else scores
            scores = interpolate(
                scores, size=(height, width), mode="bilinear", align_corners=False
            )
            ids = scores.argmax(1).float()
            gap = top_two_gap(scores)
        full = interpolate(ids[:, None], size=image.shape[:2], mode="nearest")[0, 0]
        decided = interpolate(gap[:, None], size=image.shape[:2], mode="nearest")[0, 0] > NEAR_TIE
        results.append((full.to(torch.uint8).numpy(), decided.numpy()))
    return results


@pytest.mark.parametrize("output", ["logits", "probabilities", "class_ids"])
def test_strided_logits_probabilities_and_class_ids_give_the_labels_they_mean(tmp, cache, output):
    path = plain_export(
        StridedHead(output), tmp / f"strided_{output}.onnx", input_names=["x"], output_names=["y"]
    )
    kind = (
        "probabilities" if output == "probabilities" else None
    )  # logits and ids: recognised by themselves
    checkpoint = import_onnx(path, label_set="cityscapes", output_kind=kind, **CENTRED)
    assert checkpoint.arch_kwargs["output"] == output
    graph_engine = engine(checkpoint, cache=cache)
    images = frames(2)
    expected = _reference_labels(graph_engine, images, output)
    results = [graph_engine.segment(image, with_confidence=True) for image in images]
    for result, (want, decided) in zip(results, expected):
        assert decided.mean() > 0.99  # near-ties are rare: almost every pixel is compared
        assert np.mean(result.labels[decided] == want[decided]) >= 0.999
        assert len(np.unique(result.labels)) > 3  # the frames really have structure
    confidence = np.concatenate([r.confidence.ravel() for r in results])
    if output == "class_ids":  # no probabilities: confidence 1.0 everywhere (documented)
        assert checkpoint.output_to_class[-1] == IGNORE_ID and np.all(confidence == 1.0)
    else:  # the max probability, the same for logits and for probabilities
        assert 0.0 < confidence.min() and confidence.max() < 1.0


def test_class_ids_outside_the_class_table_are_published_unlabelled(tmp, cache):
    table = tmp / "three.yaml"
    table.write_text(
        yaml.safe_dump(
            {
                "name": "three",
                "ignore_id": 1,
                "classes": [
                    {"name": "floor", "color": [10, 20, 30]},
                    {"name": "void", "color": [0, 0, 0]},
                    {"name": "wall"},
                ],
            }
        )
    )
    path = plain_export(
        StridedHead("class_ids"), tmp / "ids19.onnx"
    )  # ids 0..18, the table knows 0..2
    checkpoint = import_onnx(path, classes=table, **CENTRED)
    assert checkpoint.label_set == "three" and checkpoint.palette[0] == [10, 20, 30]
    assert checkpoint.output_to_class == [
        0,
        IGNORE_ID,
        2,
        IGNORE_ID,
    ]  # id 1 = the table's ignore id
    labels = np.concatenate(
        [engine(checkpoint, cache=cache).segment(f).labels.ravel() for f in frames(2)]
    )
    assert set(np.unique(labels)) <= {0, 2, IGNORE_ID} and IGNORE_ID in labels


def _one_conv_graph(input_name, input_type, middle_name, output_name) -> bytes:
    """A hand-written ONNX graph: a 1x1 convolution to 19 classes (a Cast first for a float16
    input)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((19, 3, 1, 1)).astype(np.float32)
    nodes, x = [], input_name
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    nodes += [
        helper.make_node("Conv", [x, "weight"], [middle_name]),
        helper.make_node("Identity", [middle_name], [output_name]),
    ]
    inputs = [helper.make_tensor_value_info(input_name, input_type, [1, 3, 64, 128])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, 19, 64, 128])]
    graph = helper.make_graph(
        nodes, "one_conv", inputs, outputs, [numpy_helper.from_array(weight, "weight")]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]
    ).SerializeToString()


def test_float16_inputs_and_tensors_already_named_image_or_logits_are_adapted(tmp, cache):
    from onnx import TensorProto

    cases = {
        "plain": ("x", TensorProto.FLOAT, "middle", "y"),
        "float16 input called image": ("image", TensorProto.FLOAT16, "middle", "logits"),
        "input called logits, inner tensor image": ("logits", TensorProto.FLOAT, "image", "out"),
    }
    labels = {}
    for name, case in cases.items():
        path = tmp / f"one_conv_{len(labels)}.onnx"
        path.write_bytes(_one_conv_graph(*case))
        graph_engine = engine(import_onnx(path, label_set="cityscapes", **CENTRED), cache=cache)
        labels[name] = np.stack([graph_engine.segment(f).labels for f in frames(2)])
    assert len(np.unique(labels["plain"])) > 3
    for name in cases:
        assert np.mean(labels[name] == labels["plain"]) >= 0.999, name


# ---- self-describing export ---------------------------------------------------------------------
def test_export_writes_the_class_table_and_import_rebuilds_the_checkpoint_with_identical_labels(
    tmp, cache
):
    native = tiny_espnet(
        size=SIZE,
        channel_order="bgr",
        mean=(72.0, 82.0, 73.0),
        std=(45.0, 46.0, 44.0),
        scale=1 / 255,
    )
    saved = native.save(tmp / "native.pt")
    exported = tmp / "native.onnx"
    assert export_main(["--checkpoint", str(saved), "-o", str(exported)]) == 0
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(props[METADATA_PREFIX + "class_names"]) == list(CITYSCAPES.names)
    assert json.loads(props[METADATA_PREFIX + "output_to_class"]) == native.output_to_class
    back = tmp / "back.pt"
    assert (
        import_main(["--onnx", str(exported), "-o", str(back), "--quiet"]) == 0
    )  # no flags: the metadata
    imported = load_checkpoint(back)
    for field in ("label_set", "class_names", "palette", "output_to_class", "preprocessing"):
        assert getattr(imported, field) == getattr(native, field), field
    assert imported.source["exported_model"] == native.model_name
    native_engine = engine(native, backend="openvino", cache=cache)
    imported_engine = engine(back, cache=cache)
    for image in frames():
        assert np.array_equal(
            native_engine.segment(image).labels, imported_engine.segment(image).labels
        )
    # ... and the imported checkpoint exports again with the same metadata.
    again = tmp / "again.onnx"
    assert export_main(["--checkpoint", str(back), "-o", str(again)]) == 0
    assert load_checkpoint_from(again, tmp).output_to_class == native.output_to_class


def load_checkpoint_from(onnx_path, tmp):
    checkpoint = import_onnx(onnx_path)
    return load_checkpoint(checkpoint.save(tmp / (onnx_path.stem + ".pt")))


# ---- torchvision by name ------------------------------------------------------------------------
def test_torchvision_builders_return_logits_at_the_input_size_and_load_torchvision_state_dicts():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = build_model(LRASPP, num_classes=19).eval()
    original = lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=19
    ).eval()
    model.load_state_dict(original.state_dict(), strict=True)  # torchvision's key names
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 19, 64, 128)
        assert torch.equal(logits, original(x)["out"])


@pytest.mark.slow
def test_torchvision_lraspp_imports_and_runs_on_torch_and_openvino_alike(tmp, cache):
    weights = tmp / "lraspp_state_dict.pth"
    torch.save(structured_lraspp().state_dict, weights)
    out = tmp / "lraspp.pt"
    assert (
        import_main(
            [
                "--arch",
                LRASPP,
                "--label-set",
                "cityscapes",
                "--weights",
                str(weights),
                "--size",
                "128x64",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    checkpoint = load_checkpoint(out)
    assert checkpoint.arch == LRASPP and checkpoint.arch_kwargs == {"num_classes": 19}
    assert checkpoint.source["weights_file"] == weights.name
    assert checkpoint.preprocessing.mean == [123.675, 116.28, 103.53]  # torchvision's statistics
    torch_engine, openvino_engine = (
        engine(out, backend="torch"),
        engine(out, backend="openvino", cache=cache),
    )
    assert len(np.unique(torch_engine.segment(frames(1)[0]).labels)) > 3
    assert agreement(torch_engine, openvino_engine, frames()) >= 0.999


def test_torchvision_weights_that_do_not_fit_are_refused_naming_the_keys(tmp):
    weights = tmp / "wrong_classes.pth"
    torch.save(build_model(LRASPP, num_classes=21).state_dict(), weights)
    with pytest.raises(
        ModelImportError,
        match=r"does not fit torchvision:lraspp.*shapes differ: "
        r"classifier\.high_classifier\.bias .*--num-classes",
    ):
        import_torchvision(LRASPP, label_set="cityscapes", weights=weights)


def test_two_training_steps_with_a_torchvision_network(tmp):
    from test_training import tiny_config, write_config, write_moving_square_sequences

    from video_seg_ros.tools.train import main as train_main

    data = write_moving_square_sequences(tmp / "squares")
    init = import_torchvision(LRASPP, label_set="cityscapes", size=(64, 32)).save(
        tmp / "lraspp_init.pt"
    )
    config = tiny_config(data, tmp / "run")
    config["model"] = {"init": str(init)}
    config["train"].update({"max_iters": 2, "max_iters_per_epoch": None, "val_every": 0})
    config["losses"]["temporal"]["weight"] = 0.0  # no flow needed: two steps of cross-entropy
    config["data"]["val"] = []
    assert train_main(["--config", str(write_config(tmp / "lraspp.yaml", config)), "--quiet"]) == 0
    trained, start = load_checkpoint(tmp / "run" / "last.pt"), load_checkpoint(init)
    assert trained.arch == LRASPP and trained.training["iteration"] == 2
    assert any(
        not torch.equal(trained.state_dict[k], start.state_dict[k]) for k in start.state_dict
    )
    assert engine(trained, backend="torch").segment(frames(1)[0]).labels.shape == FRAME_SIZE[::-1]


def test_training_refuses_an_imported_graph_as_init_saying_why(tmp, tiny_onnx, capsys):
    from test_training import tiny_config, write_config, write_moving_square_sequences

    from video_seg_ros.tools.train import main as train_main

    path, _ = tiny_onnx
    init = import_onnx(path, label_set="cityscapes", ignore_id=19, size=SIZE).save(
        tmp / "graph_init.pt"
    )
    config = tiny_config(
        write_moving_square_sequences(tmp / "squares_for_graph"), tmp / "graph_run"
    )
    config["model"] = {"init": str(init)}
    assert train_main(["--config", str(write_config(tmp / "graph.yaml", config)), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "model.init is an imported ONNX graph, which PyTorch cannot run or train" in err


# ---- the tools that take a checkpoint -----------------------------------------------------------
def test_video_seg_eval_scores_an_imported_graph_and_names_its_file(tmp, tiny_onnx, cache):
    from test_evaluate import write_sequence_folder

    from video_seg_ros.tools.evaluate import main as evaluate_main

    path, _ = tiny_onnx
    checkpoint = import_onnx(path, label_set="cityscapes", ignore_id=19, size=SIZE).save(
        tmp / "eval_onnx.pt"
    )
    images, _ = write_sequence_folder(tmp / "eval_frames")
    report = tmp / "eval.json"
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(images),
                "-o",
                str(report),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(report.read_text())
    assert (
        summary["backend"] == "openvino"
        and summary["precision"] == "fp32"
        and summary["frames"] == 5
    )
    assert summary["model"] == "onnx:tiny_espnet" and summary["checkpoint"] == str(checkpoint)


def test_palette_of_a_yaml_class_table_colours_the_labels(tmp):
    table = tmp / "colours.yaml"
    classes = [{"name": f"c{i}", "color": [i, 2 * i, 3 * i]} for i in range(19)]
    table.write_text(yaml.safe_dump({"classes": classes}))
    checkpoint = import_onnx(plain_export(StridedHead(), tmp / "coloured.onnx"), classes=table)
    assert checkpoint.label_set == "colours"  # the file name, when the table has no name
    labels = np.array([[0, 5], [18, IGNORE_ID]], np.uint8)
    colours = colorize(labels, palette_lookup_table(checkpoint.palette))
    assert colours[0, 1].tolist() == [5, 10, 15] and colours[1, 1].tolist() == [0, 0, 0]


# ---- a real node process ------------------------------------------------------------------------
NODE_STARTUP_TIMEOUT = 300.0  # torch import and the OpenVINO conversion on a loaded 2-core machine
CAMERA_FRAME = "data/cityscapes_val/leftImg8bit/frankfurt_000001_058914_leftImg8bit.png"


def _camera_frame():
    """The real 2048x1024 Cityscapes frame when ../shared is there, else a synthetic street."""
    from shared_data import shared_dir

    shared = shared_dir()
    if shared is not None and (shared / CAMERA_FRAME).is_file():
        from video_seg_ros.frames import read_rgb

        return read_rgb(shared / CAMERA_FRAME)
    return calibration_frames(2048, 1024)[0]


@pytest.fixture(scope="module")
def byo_nodes(tmp_path_factory):
    """Three node processes started together: the torchvision LR-ASPP checkpoint (torch backend),
    the same network exported by torchvision's own module and imported from ONNX with a YAML class
    table (backend auto), and a checkpoint whose graph bytes are truncated (must refuse to
    start)."""
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from ros_support import NodeProcess, write_params_file

    tmp = tmp_path_factory.mktemp("byo_nodes")
    native = structured_lraspp()
    native_path = native.save(tmp / "lraspp.pt")
    original = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)
    original.load_state_dict(native.state_dict)
    exported = plain_export(
        original, tmp / "lraspp_torchvision.onnx", input_names=["input"], output_names=["out"]
    )
    table = tmp / "street.yaml"
    table.write_text(
        yaml.safe_dump(
            {
                "name": "street",
                "classes": [
                    {"name": f"class {i}", "color": [10 * i, 255 - 10 * i, 7 * i]}
                    for i in range(19)
                ],
            }
        )
    )
    pre = native.preprocessing
    imported = import_onnx(exported, classes=table, mean=pre.mean, std=pre.std, scale=pre.scale)
    imported_path = imported.save(tmp / "lraspp_onnx.pt")
    damaged = import_onnx(exported, classes=table)
    graph = damaged.state_dict["graph"]
    damaged.state_dict = {"graph": graph[: len(graph) // 3].clone()}
    damaged_path = damaged.save(tmp / "damaged.pt")
    # Fusion on: the package's temporal layer sits on the user's network (a camera's first frame
    # has
    # no history, so its fused labels are the per-frame ones compared below).
    common = {
        "device": "cpu",
        "precision": "fp32",
        "input_qos": "reliable",
        "frame_queue_size": 2,
        "consistency_metric": False,
        "cpu_threads": 1,
        "temporal_mode": "fuse",
    }
    nodes = {}
    starts = (
        ("byo_torchvision", native_path, "torch"),
        ("byo_onnx", imported_path, "auto"),
        ("byo_damaged", damaged_path, "auto"),
    )
    for name, checkpoint, backend in starts:
        params = write_params_file(
            tmp / f"{name}.yaml", {**common, "checkpoint": str(checkpoint), "backend": backend}
        )
        nodes[name] = NodeProcess(
            params, tmp / f"{name}.log", remaps={"image": f"/{name}/image"}, name=name
        )
    try:
        yield {
            "nodes": nodes,
            "checkpoints": {"byo_torchvision": native, "byo_onnx": imported},
            "frame": _camera_frame(),
            "tmp": tmp,
        }
    finally:
        codes = {name: node.stop(timeout=60.0) for name, node in nodes.items()}
        assert codes["byo_torchvision"] == 0 and codes["byo_onnx"] == 0, codes


def _node_outputs(session, name):
    """Labels, colour and label info of one node for the camera frame."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ros_support import RosProbe, image_message

    node = session["nodes"][name]
    frame = session["frame"]
    with RosProbe(f"{name}_probe") as probe:
        labels = probe.collect(Image, node.topic("labels"))
        colour = probe.collect(Image, node.topic("color"))
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        info = probe.collect(String, node.topic("label_info"), latched)
        publisher = probe.publisher(Image, f"/{name}/image", 2)
        assert (
            probe.wait_for(
                lambda: publisher.get_subscription_count() > 0 or not node.alive(),
                NODE_STARTUP_TIMEOUT,
            )
            and node.alive()
        ), node.output()[-3000:]
        for attempt in range(10):  # frames are skipped until the node sees our subscriptions
            publisher.publish(image_message(frame, "rgb8", 2.0 + attempt, frame_id="byo"))
            if probe.wait_for(lambda: labels and colour, 30.0):
                break
        assert labels and colour, node.output()[-3000:]
        assert probe.wait_for(lambda: info, 10.0), "no ~/label_info"
        height, width = frame.shape[:2]
        assert (labels[0].width, labels[0].height, labels[0].header.frame_id) == (
            width,
            height,
            "byo",
        )
        return (
            np.frombuffer(labels[0].data, np.uint8).reshape(height, width),
            np.frombuffer(colour[0].data, np.uint8).reshape(height, width, 3),
            json.loads(info[0].data),
        )


@pytest.mark.ros
@pytest.mark.parametrize("name, backend", [("byo_torchvision", "torch"), ("byo_onnx", "openvino")])
def test_node_publishes_the_engine_labels_colours_and_class_map_of_a_byo_model(
    byo_nodes, name, backend
):
    checkpoint = byo_nodes["checkpoints"][name]
    published, colour, info = _node_outputs(byo_nodes, name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node (cpu_threads: 1): the same kernels, the same labels
    try:
        in_process = engine(checkpoint, backend=backend, cache=byo_nodes["tmp"] / "cache")
        expected = in_process.segment(byo_nodes["frame"])
    finally:
        torch.set_num_threads(threads)
    differ = np.mean(published != expected.labels)
    assert differ <= 0.001, f"{differ:.3%} of the pixels differ"
    assert len(np.unique(published)) > 3
    assert np.array_equal(colour, colorize(published, palette_lookup_table(checkpoint.palette)))
    assert info["label_set"] == checkpoint.label_set and info["ignore_id"] == IGNORE_ID
    assert [c["name"] for c in info["classes"]] == checkpoint.class_names
    assert [c["color"] for c in info["classes"]] == checkpoint.palette
    byo_nodes.setdefault("published", {})[name] = published


@pytest.mark.ros
def test_the_onnx_export_of_torchvision_lraspp_labels_like_the_torchvision_checkpoint(byo_nodes):
    published = byo_nodes.get("published", {})
    if len(published) < 2:
        pytest.skip("needs both node tests above")
    assert np.mean(published["byo_torchvision"] == published["byo_onnx"]) >= 0.999


@pytest.mark.ros
def test_node_refuses_to_start_on_a_damaged_graph_with_one_line_that_says_what_to_do(byo_nodes):
    node = byo_nodes["nodes"]["byo_damaged"]
    code = node.wait_exit(NODE_STARTUP_TIMEOUT)
    output = node.output()
    lines = [line for line in output.splitlines() if line.startswith("video_seg_node: error:")]
    assert code == 1 and len(lines) == 1, output[-3000:]
    assert "not a readable ONNX graph" in lines[0] and "video-seg-import --onnx" in lines[0]
    assert "Traceback" not in output
