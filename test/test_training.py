"""ETC training pipeline: config, aligned augmentation, flow cache, datasets and the CLI end to
end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from training_helpers import (
    HEIGHT,
    WIDTH,
    tiny_config,
    write_config,
    write_moving_square_sequences,
)
from video_seg_ros.checkpoint import load_checkpoint
from video_seg_ros.engine import SegmentationEngine
from video_seg_ros.flow import warp_image
from video_seg_ros.tools.train import main as train_main
from video_seg_ros.training.augment import AlignedSample, crop_sample, flip_sample, resize_sample
from video_seg_ros.training.config import ConfigError, config_from_dict, load_config
from video_seg_ros.training.datasets import SequenceSampleDataset, load_sequences
from video_seg_ros.training.flow_cache import DisFlowEstimator, FlowCache


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    return write_moving_square_sequences(tmp_path_factory.mktemp("frames"))


# ---- config -------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_with_the_known_ones_listed(tmp_path, sequences):
    config = tiny_config(sequences, tmp_path / "run")
    config["train"]["epochs_total"] = 3
    with pytest.raises(ConfigError, match="unknown config key 'train.epochs_total'.*epochs"):
        load_config(write_config(tmp_path / "c.yaml", config))


def test_config_overrides_parse_yaml_values(tmp_path, sequences):
    path = write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run"))
    config = load_config(
        path, ["train.epochs=3", "data.crop=[32, 16]", "losses.temporal.weight=0.4"]
    )
    assert config["train"]["epochs"] == 3 and config["data"]["crop"] == [32, 16]
    assert config["losses"]["temporal"]["weight"] == 0.4
    assert config["losses"]["ce"]["weight"] == 1.0  # defaults stay


def test_config_requires_a_teacher_for_distillation(tmp_path, sequences):
    path = write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run"))
    with pytest.raises(ConfigError, match="need a teacher"):
        load_config(path, ["losses.distill_pixel.weight=1.0"])


# ---- aligned augmentation -----------------------------------------------------------------------
def _warp_error(sample: AlignedSample) -> float:
    """Mean abs difference between the anchor and the neighbour warped back with the sample's
    flow."""
    warped = warp_image(sample.frames[1].astype(np.float32), sample.flows[0])
    inner = (slice(2, -2), slice(2, -2))
    return float(np.abs(warped[inner] - sample.frames[0].astype(np.float32)[inner]).mean())


def test_flow_stays_aligned_with_the_frames_through_scale_crop_and_flip(sequences):
    frames = load_sequences({"images": str(sequences / "images")})["seqa"]
    anchor = cv2.cvtColor(cv2.imread(str(frames[0].record.path)), cv2.COLOR_BGR2RGB)
    neighbour = cv2.cvtColor(cv2.imread(str(frames[2].record.path)), cv2.COLOR_BGR2RGB)
    flow = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    flow[..., 0] = 6.0  # the square moves 6 px right in two frames; background is uniform per row
    valid = np.ones((HEIGHT, WIDTH), np.uint8)
    sample = AlignedSample([anchor, neighbour], None, [flow], valid)
    assert _warp_error(sample) < 1.0
    wrong = AlignedSample([anchor, neighbour], None, [np.zeros_like(flow)], valid)
    assert _warp_error(wrong) > 5.0
    transformed = flip_sample(crop_sample(resize_sample(sample, 128, 64), 10, 4, 96, 56))
    assert transformed.frames[0].shape == (56, 96, 3) and transformed.flows[0].shape == (56, 96, 2)
    assert np.allclose(transformed.flows[0][..., 0], -12.0)  # doubled and mirrored
    assert _warp_error(transformed) < 2.0


def test_crop_larger_than_the_frame_pads_labels_with_ignore_and_marks_padding_invalid():
    sample = AlignedSample(
        [np.full((4, 6, 3), 9, np.uint8)],
        np.zeros((4, 6), np.uint8),
        [],
        np.ones((4, 6), np.uint8),
    )
    cropped = crop_sample(sample, 0, 0, 8, 5)
    assert (
        cropped.label.shape == (5, 8) and cropped.label[4, 7] == 255 and cropped.label[0, 0] == 0
    )
    assert cropped.valid.sum() == 24 and cropped.frames[0][4, 7].tolist() == [0, 0, 0]


# ---- datasets and flow cache --------------------------------------------------------------------
def test_flow_cache_computes_once_then_reads_from_disk(tmp_path, sequences):
    frames = sorted((sequences / "images").glob("seqa_*.png"))
    image_a = cv2.imread(str(frames[0]))
    image_b = cv2.imread(str(frames[1]))
    cache = FlowCache(DisFlowEstimator("ultrafast"), tmp_path / "cache")
    first = cache.get(frames[0], frames[1], image_a, image_b)
    again = FlowCache(DisFlowEstimator("ultrafast"), tmp_path / "cache")
    second = again.get(frames[0], frames[1], image_a, image_b)
    assert (cache.misses, again.hits, again.misses) == (1, 1, 0)
    assert np.allclose(first, second, atol=0.05)  # stored as float16
    other_settings = FlowCache(DisFlowEstimator("fast"), tmp_path / "cache")
    other_settings.get(frames[0], frames[1], image_a, image_b)
    assert other_settings.misses == 1  # settings are part of the key


#: Pair-mode sample settings with random crops, scales and flips (the dataset tests').
PAIR_DATA = {
    "resize": None,
    "crop": [48, 32],
    "scale_range": [0.8, 1.2],
    "hflip": True,
    "mode": "pair",
    "max_gap": 2,
    "direction": "both",
    "clip_length": 3,
    "clip_stride": 1,
}


def test_pair_samples_are_reproducible_and_labelled(tmp_path, sequences):
    data = dict(PAIR_DATA)
    cache = FlowCache(DisFlowEstimator("ultrafast"), tmp_path / "cache")
    entry = {
        "images": str(sequences / "images"),
        "labels": str(sequences / "labels"),
        "label_format": "trainids",
    }
    dataset = SequenceSampleDataset(entry, data, cache, seed=1)
    assert len(dataset) == 12  # every frame of both sequences is labelled
    a, b = dataset[3], dataset[3]
    for key in ("image", "neighbour", "flow", "label", "valid"):
        assert torch.equal(a[key], b[key])
    assert a["image"].shape == (3, 32, 48) and a["flow"].shape == (2, 32, 48)
    assert set(a["label"].unique().tolist()) <= {0, 8, 13, 255}
    assert torch.equal(a["label"] == 255, a["valid"][0] == 0)  # only crop padding is unlabelled
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3]["image"], a["image"])


def test_repeat_lists_an_entrys_anchors_again_with_their_own_augmentation(sequences):
    from video_seg_ros.training.datasets import DatasetError

    data = dict(PAIR_DATA)
    entry = {
        "images": str(sequences / "images"),
        "labels": str(sequences / "labels"),
        "label_format": "trainids",
    }
    once = SequenceSampleDataset(entry, data, None, seed=1, needs_neighbour=False)
    thrice = SequenceSampleDataset(
        dict(entry, repeat=3), data, None, seed=1, needs_neighbour=False
    )
    assert len(thrice) == 3 * len(once) == 36
    assert thrice.anchors[3] == thrice.anchors[3 + 12] == once.anchors[3]
    # The copy of an anchor is another sample: its crop, scale and flip are drawn again.
    assert not torch.equal(thrice[3]["image"], thrice[3 + 12]["image"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DatasetError, match="repeat must be an integer >= 1"):
            SequenceSampleDataset(dict(entry, repeat=bad), data, None)


def test_clip_samples_end_at_the_labelled_frame(sequences):
    data = {
        "resize": None,
        "crop": None,
        "scale_range": [1.0, 1.0],
        "hflip": False,
        "mode": "clip",
        "max_gap": 1,
        "direction": "forward",
        "clip_length": 3,
        "clip_stride": 1,
    }
    entry = {
        "images": str(sequences / "images"),
        "labels": str(sequences / "labels"),
        "label_format": "trainids",
    }
    dataset = SequenceSampleDataset(entry, data, None)
    sample = dataset[4]  # seqa frame 4: frames 2, 3, 4
    assert sample["clip"].shape == (3, 3, HEIGHT, WIDTH)
    last = torch.from_numpy(
        cv2.imread(str(sequences / "images" / "seqa_000004.png"))[..., ::-1].copy()
    )
    assert torch.allclose(sample["clip"][-1].permute(1, 2, 0) * 255, last.float(), atol=0.5)


def test_missing_image_folder_is_reported_with_its_path(tmp_path):
    from video_seg_ros.training.datasets import DatasetError

    with pytest.raises(DatasetError, match="image folder not found"):
        load_sequences({"images": str(tmp_path / "nowhere")})


# ---- the CLI end to end -------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def test_train_cli_writes_a_loadable_checkpoint_and_resume_continues(tmp_path, sequences, capsys):
    run_dir = tmp_path / "run"
    config_path = write_config(tmp_path / "tiny.yaml", tiny_config(sequences, run_dir))
    assert train_main(["--config", str(config_path), "--quiet"]) == 0
    for name in (
        "last.pt",
        "best.pt",
        "trainer_state.pt",
        "metrics.csv",
        "steps.csv",
        "metrics.png",
    ):
        assert (run_dir / name).is_file(), name
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint.arch == "espnet" and checkpoint.training["config"]["train"]["epochs"] == 1
    assert checkpoint.training["epoch"] == 1 and checkpoint.label_set == "cityscapes"
    engine = SegmentationEngine(checkpoint, device="cpu", precision="fp32")
    frame = cv2.imread(str(sequences / "images" / "seqb_000000.png"))[..., ::-1]
    assert engine.segment(frame).labels.shape == (HEIGHT, WIDTH)
    first = _read_csv(run_dir / "metrics.csv")
    assert len(first) == 1 and float(first[0]["loss_temporal"]) > 0 and first[0]["val_miou"] != ""

    assert train_main(["--config", str(config_path), "--quiet", "--resume", "train.epochs=2"]) == 0
    rows = _read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert int(rows[1]["iteration"]) == 2 * int(rows[0]["iteration"])
    resumed = load_checkpoint(run_dir / "last.pt")
    assert resumed.training["epoch"] == 2
    assert any(
        not torch.equal(resumed.state_dict[k], checkpoint.state_dict[k])
        for k in checkpoint.state_dict
    )


def test_train_cli_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "missing.yaml")]) == 1  # run-time failure
    assert "config file not found" in capsys.readouterr().err


def test_resume_without_an_earlier_run_says_what_to_do(tmp_path, sequences, capsys):
    config_path = write_config(tmp_path / "tiny.yaml", tiny_config(sequences, tmp_path / "fresh"))
    assert train_main(["--config", str(config_path), "--quiet", "--resume"]) == 1
    assert "start without --resume" in capsys.readouterr().err


def test_memory_training_on_clips_keeps_a_frozen_base_unchanged(tmp_path, sequences):
    base_run = tmp_path / "base"
    base_config = tiny_config(sequences, base_run)
    base_config["losses"]["temporal"]["weight"] = 0.0
    base_config["data"]["val"] = []
    assert (
        train_main(["--config", str(write_config(tmp_path / "base.yaml", base_config)), "--quiet"])
        == 0
    )
    memory_config = tiny_config(sequences, tmp_path / "memory")
    memory_config["model"] = {"init": str(base_run / "last.pt")}
    memory_config["memory"] = {"freeze_base": True, "memory_length": 2, "window": 5}
    memory_config["data"].update({"mode": "clip", "clip_length": 3, "val": []})
    memory_config["losses"]["temporal"]["weight"] = 0.0
    memory_config["train"]["optimizer"] = "adam"
    assert (
        train_main(
            [
                "--config",
                str(write_config(tmp_path / "memory.yaml", memory_config)),
                "--quiet",
            ]
        )
        == 0
    )
    base = load_checkpoint(base_run / "last.pt")
    trained = load_checkpoint(tmp_path / "memory" / "last.pt")
    assert trained.memory["memory_length"] == 2 and trained.model_name.endswith("+memory")
    assert all(
        torch.equal(base.state_dict[k], trained.state_dict["base." + k]) for k in base.state_dict
    )
    fresh = {k: v for k, v in trained.state_dict.items() if k.startswith("fusion.")}
    assert fresh  # the memory layers were saved (and trained: the gates start at zero)
    assert any(v.abs().sum() > 0 for k, v in fresh.items() if "gate" in k or "proj" in k)


def test_full_etc_run_distils_from_a_20_output_teacher_at_its_own_input_size(tmp_path, sequences):
    from video_seg_ros.checkpoint import Checkpoint, Preprocessing
    from video_seg_ros.models import build_model

    torch.manual_seed(1)
    teacher = build_model("espnet", num_classes=20, p=1, q=1)
    teacher_path = Checkpoint.for_label_set(
        "espnet",
        {"num_classes": 20, "p": 1, "q": 1},
        teacher.state_dict(),
        "cityscapes",
        Preprocessing(64, 128, "bgr", [72.0, 82.0, 73.0], [45.0, 46.0, 44.0]),
    ).save(tmp_path / "teacher.pt")
    config = tiny_config(sequences, tmp_path / "etc")
    config["teacher"] = {"checkpoint": str(teacher_path), "input_size": [96, 48]}
    config["data"]["val"] = []
    config["losses"].update(
        {
            "distill_pixel": {"weight": 1.0},
            "distill_pairwise": {"weight": 1.0, "grid": [4, 6]},
            "distill_cross_frame": {"weight": 1.0, "grid": [4, 6]},
            "distill_temporal": {"weight": 1.0, "grid": [4, 6]},
        }
    )
    assert (
        train_main(["--config", str(write_config(tmp_path / "etc.yaml", config)), "--quiet"]) == 0
    )
    row = _read_csv(tmp_path / "etc" / "metrics.csv")[0]
    for name in (
        "ce",
        "temporal",
        "distill_pixel",
        "distill_pairwise",
        "distill_cross_frame",
        "distill_temporal",
    ):
        assert float(row[f"loss_{name}"]) > 0, name
    assert (
        load_checkpoint(tmp_path / "etc" / "last.pt").num_outputs == 19
    )  # the student keeps its head


def test_unknown_teacher_setting_is_rejected_by_name(tmp_path, sequences, capsys):
    config = tiny_config(sequences, tmp_path / "run")
    config["teacher"] = {"checkpoint": "x.pt", "size": [1, 2]}
    config["losses"]["distill_pixel"] = {"weight": 1.0}
    # A config the trainer cannot use is a run-time failure (exit 1); 2 is for command-line usage.
    assert train_main(["--config", str(write_config(tmp_path / "c.yaml", config)), "--quiet"]) == 1
    assert "unknown teacher setting(s) ['size']" in capsys.readouterr().err


def _saved_espnet(path: Path, num_classes: int, label_set: str = "cityscapes") -> Path:
    from video_seg_ros.checkpoint import Checkpoint, Preprocessing
    from video_seg_ros.models import build_model

    model = build_model("espnet", num_classes=num_classes, p=1, q=1)
    return Checkpoint.for_label_set(
        "espnet",
        {"num_classes": num_classes, "p": 1, "q": 1},
        model.state_dict(),
        label_set,
        Preprocessing(64, 128),
    ).save(path)


def test_teacher_without_the_students_background_channel_distils_the_shared_classes(tmp_path):
    from video_seg_ros.checkpoint import output_to_class_for
    from video_seg_ros.training.modeling import build_teacher

    teacher = _saved_espnet(tmp_path / "teacher19.pt", 19)
    student_meta = {
        "label_set": "cityscapes",
        "output_to_class": output_to_class_for("cityscapes", 20),
    }
    _, _, student_channels, teacher_channels = build_teacher(
        {"teacher": {"checkpoint": str(teacher)}}, student_meta
    )
    assert student_channels == list(
        range(19)
    )  # channel 19 (background, published 255) is left out
    assert teacher_channels == list(range(19))


def test_teacher_of_another_label_set_is_rejected_naming_the_missing_class(tmp_path):
    from video_seg_ros.checkpoint import output_to_class_for
    from video_seg_ros.training.modeling import build_teacher

    teacher = _saved_espnet(tmp_path / "camvid.pt", 11, label_set="camvid")
    student_meta = {
        "label_set": "cityscapes",
        "output_to_class": output_to_class_for("cityscapes", 19),
    }
    with pytest.raises(ValueError, match="no output for class id 11"):
        build_teacher({"teacher": {"checkpoint": str(teacher)}}, student_meta)


# ---- config values, precision, flow-cache reuse, profiling --------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.val_every=-1",
            r"train.val_every must be an integer >= 0 \(epochs between validations; 0 = never",
        ),
        ("train.save_every=-2", r"train.save_every must be an integer >= 0"),
        ("train.epochs=0", r"train.epochs must be an integer >= 1"),
        ("train.batch_size=true", r"train.batch_size must be an integer >= 1 .*got True"),
        ("train.log_every=0", r"train.log_every must be an integer >= 1"),
        (
            "train.max_iters_per_epoch=0",
            r"train.max_iters_per_epoch must be an integer >= 1 or null",
        ),
        ("train.max_iters=2.5", r"train.max_iters must be an integer >= 1 or null"),
        ("train.precision=fp8", r"train.precision must be null or one of auto, fp32, bf16, fp16"),
        ("train.epochs=null", r"train.epochs is null.*set train.max_iters"),
    ],
)
def test_bad_integer_and_precision_values_are_refused_when_the_config_is_read(
    tmp_path, sequences, override, message
):
    path = write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run"))
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_val_every_0_never_validates_and_best_is_the_last_checkpoint(tmp_path, sequences):
    run_dir = tmp_path / "run"
    config = tiny_config(sequences, run_dir)
    config["train"].update(
        {"epochs": 2, "val_every": 0, "save_every": 0, "max_iters_per_epoch": 1}
    )
    assert train_main(["--config", str(write_config(tmp_path / "c.yaml", config)), "--quiet"]) == 0
    rows = _read_csv(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_miou"] == "" for r in rows)
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    assert last.training["epoch"] == best.training["epoch"] == 2
    assert all(torch.equal(last.state_dict[k], best.state_dict[k]) for k in last.state_dict)


def test_max_iters_ends_the_run_inside_an_epoch(tmp_path, sequences):
    from video_seg_ros.training.trainer import Trainer

    config = load_config(
        write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run")),
        ["train.epochs=5", "train.max_iters=2", "train.val_every=0"],
    )
    trainer = Trainer(config, progress=False)
    assert trainer.iters_per_epoch == 3 and trainer.total_iters == 2
    trainer.fit()
    assert trainer.iteration == 2 and trainer.epoch == 1


def test_a_detached_neighbour_runs_without_a_graph_and_gives_the_batched_losses_and_gradients(
    tmp_path, sequences
):
    from video_seg_ros.training.trainer import Trainer

    overrides = [
        "train.freeze_bn=true",
        "losses.temporal.detach_neighbour=true",
        "losses.ce.weight=1",
    ]
    config = load_config(
        write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run")), overrides
    )
    fast = Trainer(config, progress=False)
    assert fast.neighbour_without_grad
    batch = fast._to_device(next(iter(fast.loader)))
    fast._train_mode()  # BatchNorm frozen: its statistics do not depend on the batch's makeup
    results = []
    for without_grad in (True, False):  # False: t and t+k in one batch, as without the detach
        fast.neighbour_without_grad = without_grad
        fast.model.zero_grad()
        losses = fast.compute_losses(batch)
        sum(losses.values()).backward()
        grads = [p.grad.clone() for p in fast.model.parameters() if p.grad is not None]
        results.append(({k: v.item() for k, v in losses.items()}, grads))
    (losses_fast, grads_fast), (losses_batched, grads_batched) = results
    assert losses_fast.keys() == losses_batched.keys() == {"ce", "temporal"}
    for key in losses_fast:
        assert losses_fast[key] == pytest.approx(losses_batched[key], rel=1e-5, abs=1e-7)
    assert len(grads_fast) == len(grads_batched)
    for grad_fast, grad_batched in zip(grads_fast, grads_batched):
        assert torch.allclose(grad_fast, grad_batched, rtol=1e-4, atol=1e-6)
    # Distillation on the neighbour needs its graph: then the batched forward stays.
    distilling = tiny_config(sequences, tmp_path / "run_d")
    distilling["teacher"] = {"arch": "espnet", "kwargs": {"p": 1, "q": 1, "num_classes": 19}}
    with_distillation = load_config(
        write_config(tmp_path / "d.yaml", distilling),
        [*overrides, "losses.distill_pixel.weight=1"],
    )
    assert not Trainer(with_distillation, progress=False).neighbour_without_grad


def _scaled_losses_config(sequences, run_dir, scales):
    """The tiny config with a teacher, one train entry per ``scales`` item (its ``loss_scale``),
    no crop padding and no scaling, so every sample has the same labelled pixels."""
    config = tiny_config(sequences, run_dir)
    entry = config["data"]["train"][0]
    config["data"]["train"] = [
        dict(entry, loss_scale=scale) if scale else dict(entry) for scale in scales
    ]
    config["data"].update({"crop": None, "scale_range": [1.0, 1.0], "val": []})
    config["teacher"] = {"arch": "espnet", "kwargs": {"p": 1, "q": 1, "num_classes": 19}}
    config["losses"].update({"ce": {"weight": 1.0}, "distill_pixel": {"weight": 1.0}})
    config["train"].update({"freeze_bn": True, "batch_size": 4})
    return config_from_dict(config)


def test_loss_scales_of_1_give_the_batch_losses_and_the_teacher_sees_only_distilling_samples(
    tmp_path, sequences
):
    from video_seg_ros.training.trainer import Trainer

    plain = Trainer(_scaled_losses_config(sequences, tmp_path / "a", [None]), progress=False)
    ones = Trainer(
        _scaled_losses_config(sequences, tmp_path / "b", [{"ce": 1, "distill_pixel": 1}]),
        progress=False,
    )
    assert ones.scaled_losses and not plain.scaled_losses
    ones.model.load_state_dict(plain.model.state_dict())
    ones.teacher.load_state_dict(plain.teacher.state_dict())
    batch = plain._to_device(next(iter(plain.loader)))
    plain._train_mode(), ones._train_mode()
    expected = {k: v.item() for k, v in plain.compute_losses(batch).items()}
    got = {k: v.item() for k, v in ones.compute_losses(batch).items()}
    assert got.keys() == expected.keys() == {"ce", "temporal", "distill_pixel"}
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key

    # Entry 0: labels only; entry 1 (the same frames): the teacher only.
    mixed = Trainer(
        _scaled_losses_config(
            sequences, tmp_path / "c", [{"distill_pixel": 0}, {"ce": 0, "temporal": 0}]
        ),
        progress=False,
    )
    mixed._train_mode()
    rows_seen = []
    mixed.teacher.register_forward_hook(lambda module, args, out: rows_seen.append(len(args[0])))
    for batch in mixed.loader:
        batch = mixed._to_device(batch)
        distilling = int((batch["loss_scale"][:, 2] > 0).sum())
        rows_seen.clear()
        losses = mixed.compute_losses(batch)
        # The neighbour is distilled too (neighbour_weight 0.4): two rows per sample.
        assert rows_seen == ([2 * distilling] if distilling else [])
        assert (losses["distill_pixel"].item() > 0) == (distilling > 0)
        assert (losses["ce"].item() > 0) == (distilling < len(batch["label"]))


def test_loss_scale_is_refused_with_losses_it_cannot_scale_and_with_bad_factors(
    tmp_path, sequences
):
    from video_seg_ros.training.datasets import DatasetError, entry_loss_scale

    config = tiny_config(sequences, tmp_path / "run")
    config["data"]["train"][0]["loss_scale"] = {"ce": 0.5}
    config["teacher"] = {"arch": "espnet", "kwargs": {"p": 1, "q": 1, "num_classes": 19}}
    config["losses"]["distill_pairwise"] = {"weight": 1.0}
    with pytest.raises(ConfigError, match="loss_scale works .* also on: distill_pairwise"):
        config_from_dict(config)
    with pytest.raises(DatasetError, match="loss_scale.ce must be a number >= 0"):
        entry_loss_scale({"loss_scale": {"ce": -1}})
    with pytest.raises(DatasetError, match="loss_scale may name ce, temporal, distill_pixel"):
        entry_loss_scale({"loss_scale": {"distill_pairwise": 1}})
    assert entry_loss_scale({}) == [1.0, 1.0, 1.0]


def test_enet_class_weights_come_from_the_training_labels_and_weigh_rare_classes_up(
    tmp_path, sequences
):
    import json

    from video_seg_ros.training import losses as L
    from video_seg_ros.training.trainer import Trainer

    config = tiny_config(sequences, tmp_path / "run")
    config["losses"]["ce"] = {"weight": 1.0, "class_weights": "enet"}
    trainer = Trainer(config_from_dict(config), progress=False)
    written = json.loads((tmp_path / "run" / "class_weights.json").read_text())
    pixels = np.array(written["pixels"])
    # seqa's 6 labels: rows 24.. road (0), a 12x12 car (13) square, vegetation (8) elsewhere.
    assert pixels.sum() == 6 * WIDTH * HEIGHT and pixels[13] == 6 * 144
    assert pixels[0] == 6 * 8 * WIDTH and len(pixels) == 19
    weights = trainer.ce_class_weights
    assert weights[13] > weights[0] > weights[8]  # car is the rarest class, vegetation the most
    assert weights[5] == pytest.approx(1 / math.log(1.02))  # absent: the largest weight
    # A labelled pixel of a class weighs as its weight; the mean stays a mean.
    logits = torch.zeros(1, 19, 2, 2)
    logits[0, 13, 0, 0] = 5.0
    label = torch.tensor([[[13, 0], [0, 255]]])
    per_pixel = torch.nn.functional.cross_entropy(
        logits, label, ignore_index=255, reduction="none"
    )
    w = torch.tensor([float(weights[13]), float(weights[0]), float(weights[0])])
    expected = (w * per_pixel.flatten()[:3]).sum() / w.sum()
    assert L.cross_entropy_loss(logits, label, class_weights=weights).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    config["losses"]["ce"]["class_weights"] = [1.0, 2.0]
    with pytest.raises(ConfigError, match="has 2 numbers; the model has 19 output channels"):
        Trainer(config_from_dict(config), progress=False)
    config["losses"]["ce"]["class_weights"] = "inverse"
    with pytest.raises(ConfigError, match="class_weights must be null, enet or a list"):
        config_from_dict(config)


def test_epochs_null_runs_the_epochs_max_iters_needs_and_records_their_number(tmp_path, sequences):
    from video_seg_ros.training.trainer import Trainer

    run_dir = tmp_path / "run"
    config = load_config(
        write_config(tmp_path / "c.yaml", tiny_config(sequences, run_dir)),
        ["train.epochs=null", "train.max_iters=4", "train.val_every=0"],
    )
    trainer = Trainer(config, progress=False)
    # 3 steps per epoch: 4 steps take 2 epochs, the second one cut short by the budget.
    assert trainer.total_iters == 4 and trainer.config["train"]["epochs"] == 2
    assert config["train"]["epochs"] is None  # the caller's config is left as it was
    trainer.fit()
    assert trainer.iteration == 4 and trainer.epoch == 2
    assert load_checkpoint(run_dir / "last.pt").training["config"]["train"]["epochs"] == 2


def test_a_checkpoint_that_is_init_and_teacher_is_read_once_and_copied_into_each(
    tmp_path, sequences
):
    from video_seg_ros.checkpoint import CheckpointCache
    from video_seg_ros.training.trainer import Trainer

    path = _saved_espnet(tmp_path / "model.pt", 19)
    config = tiny_config(sequences, tmp_path / "run")
    config["model"] = {"init": str(path)}
    # Another spelling of the same file.
    config["teacher"] = {"checkpoint": f"{tmp_path}/../{tmp_path.name}/model.pt"}
    config["losses"]["distill_pixel"] = {"weight": 1.0}
    config["data"]["val"] = []
    checkpoints = CheckpointCache()
    trainer = Trainer(config_from_dict(config), progress=False, checkpoints=checkpoints)
    assert checkpoints.files == [path.resolve()]
    student, teacher = trainer.net.model.state_dict(), trainer.teacher.model.state_dict()
    assert student.keys() == teacher.keys()
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    # Shared reading, not shared tensors: training the student leaves the teacher as it was.
    assert all(
        student[k].data_ptr() != teacher[k].data_ptr() for k in student if student[k].numel()
    )


def test_trainer_flushes_denormals_and_refuses_emulated_bf16_naming_the_cpu(tmp_path, sequences):
    from video_seg_ros.runtime import PrecisionError, cpu_has_native_bf16, flush_denormals
    from video_seg_ros.training.trainer import Trainer

    path = write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run"))
    if not flush_denormals(False):
        pytest.skip("this CPU cannot flush denormals (no DAZ/FTZ)")
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0
    try:
        trainer = Trainer(load_config(path, ["train.precision=fp32"]), progress=False)
    finally:
        denormal_after = torch.tensor([1e-40]).mul(1.0).item()
        flush_denormals(True)
    assert (
        denormal_after == 0.0
    )  # a denormal float32 reads as zero: the trainer switched the flush on
    assert trainer.precision == "fp32" and not trainer.use_amp
    if cpu_has_native_bf16():
        assert (
            Trainer(load_config(path, ["train.precision=bf16"]), progress=False).amp_dtype
            == torch.bfloat16
        )
    else:
        with pytest.raises(
            PrecisionError, match="needs a CPU with native bf16.*Use 'fp32' or 'auto'"
        ):
            Trainer(load_config(path, ["train.precision=bf16"]), progress=False)
    old_style = Trainer(load_config(path, ["train.amp=true"]), progress=False)  # amp is CUDA-only
    assert old_style.precision == "fp32"


def test_a_second_dataset_over_the_same_frames_reads_the_flow_cache_instead_of_computing(
    tmp_path, sequences
):
    from video_seg_ros.training.datasets import build_training_dataset
    from video_seg_ros.training.flow_cache import bytes_per_pair

    config = load_config(
        write_config(tmp_path / "c.yaml", tiny_config(sequences, tmp_path / "run")),
        [f"data.flow.cache_dir={tmp_path / 'flow'}", "data.max_gap=1", "data.direction=forward"],
    )
    first = build_training_dataset(config, tmp_path / "run")
    for index in range(len(first)):
        first[index]
    cache = first.datasets[0].flow_cache
    assert (
        cache.misses == 6 and cache.hits == 0
    )  # seqa: 6 anchors, each with its (forward) neighbour
    files, size = cache.disk_usage()
    assert files == 6 and size == 6 * bytes_per_pair(
        WIDTH, HEIGHT
    )  # one float16 file per (t, t+k) pair
    second = build_training_dataset(config, tmp_path / "other_run")  # another run, same cache_dir
    for index in range(len(second)):
        second[index]
    again = second.datasets[0].flow_cache
    assert (again.misses, again.hits) == (0, 6)
    assert again.disk_usage() == (files, size)


def test_profile_flag_prints_where_the_step_time_goes_without_touching_the_run(
    tmp_path, sequences, capsys
):
    run_dir = tmp_path / "run"
    config = tiny_config(sequences, run_dir)
    config["data"]["flow"] = {"cache_dir": str(tmp_path / "flow")}
    assert (
        train_main(
            [
                "--config",
                str(write_config(tmp_path / "c.yaml", config)),
                "--quiet",
                "--profile",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for phase in (
        "| data |",
        "| data.read |",
        "| data.flow_compute |",
        "| student |",
        "| loss.temporal |",
        "| backward |",
        "| optimizer |",
        "| step |",
    ):
        assert phase in out, phase
    assert "flow cache" in out and (run_dir / "profile" / "profile.md").read_text() in out
    assert not (run_dir / "last.pt").exists()  # profiling writes into run_dir/profile only
    steps = _read_csv(run_dir / "profile" / "steps.csv")
    assert len(steps) == 3
    for step in steps:  # the student's forward pass is timed inside the step it belongs to
        assert 0 < float(step["s_student"]) <= float(step["step_s"])


# ---- every recipe in config/train loads and trains two steps ------------------------------------
REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "config" / "train").glob("*.yaml"))

#: Checkpoints the recipes name that ``video-seg-import`` makes from ../shared/weights (the
#: recipes'
#: comments and docs/training.md give the commands): file name -> (arch, weights inside ../shared).
IMPORTED_FROM_SHARED = {
    "espnet_p2_q3_cityscapes.pt": ("espnet", "weights/espnet/espnet_p_2_q_3.pth"),
    "espnet_p2_q8_cityscapes.pt": ("espnet", "weights/espnet/espnet_p_2_q_8.pth"),
    "dicenet_s1.75_cityscapes.pt": ("dicenet", "weights/dicenet/dicenet_s_1.75_city_1024x512.pth"),
}


def _recipe_run_dirs() -> dict[Path, Path]:
    """run_dir -> recipe, to recognise a recipe that starts from another recipe's output."""
    run_dirs = {}
    for recipe in RECIPES:
        run_dir = (yaml.safe_load(recipe.read_text()) or {}).get("run_dir")
        if run_dir:
            run_dirs[(REPO / run_dir).resolve()] = recipe
    return run_dirs


def _recipe_checkpoint(reference: str, imports: Path) -> Path:
    """The checkpoint a recipe names, or what stands in for it when it has not been made yet."""
    path = Path(reference) if Path(reference).is_absolute() else REPO / reference
    if path.is_file():
        return path
    if path.name in IMPORTED_FROM_SHARED:
        from shared_data import shared_dir
        from video_seg_ros.tools.import_weights import main as import_main

        arch, weights = IMPORTED_FROM_SHARED[path.name]
        shared = shared_dir()
        if shared is None or not (shared / weights).is_file():
            pytest.skip(
                f"{reference} is absent and is video-seg-import's output of ../shared/{weights}, "
                "which is not here (a fresh clone has no ../shared)"
            )
        out = imports / path.name
        if not out.is_file():
            assert (
                import_main(
                    [
                        "--arch",
                        arch,
                        "--preset",
                        "cityscapes",
                        "--weights",
                        str(shared / weights),
                        "-o",
                        str(out),
                    ]
                )
                == 0
            )
        return out
    producer = _recipe_run_dirs().get(path.parent.resolve())
    if producer is not None and path.name in ("last.pt", "best.pt"):
        # A training output of another recipe (e.g. the memory template's frozen ETC model): its
        # starting checkpoint has the same architecture and stands in for it here.
        init = (yaml.safe_load(producer.read_text())["model"] or {}).get("init")
        assert init, f"{producer.name} makes {reference} but starts from no checkpoint"
        return _recipe_checkpoint(init, imports)
    pytest.fail(f"{reference} does not exist, and neither ../shared nor another recipe makes it")


@pytest.fixture(scope="module")
def imported_weights(tmp_path_factory):
    return tmp_path_factory.mktemp("imported")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_config_loads_and_trains_two_steps_on_tiny_frames(
    recipe, tmp_path, sequences, imported_weights
):
    from video_seg_ros.training.config import config_from_dict
    from video_seg_ros.training.trainer import Trainer

    config = load_config(recipe)  # the recipe as written: keys and values valid
    if config["model"].get("init"):
        config["model"]["init"] = str(
            _recipe_checkpoint(config["model"]["init"], imported_weights)
        )
    if (config.get("teacher") or {}).get("checkpoint"):
        config["teacher"]["checkpoint"] = str(
            _recipe_checkpoint(config["teacher"]["checkpoint"], imported_weights)
        )
    if (config.get("teacher") or {}).get("input_size"):
        config["teacher"]["input_size"] = [2 * WIDTH, 2 * HEIGHT]
    # Only the data and the budget shrink; model, teacher, memory, losses and precision stay.
    config["run_dir"] = str(tmp_path / "run")
    config["data"].update(
        {
            # One tiny entry per recipe entry, keeping the entry's loss_scale.
            "train": [
                {
                    "type": "folder",
                    "images": str(sequences / "images"),
                    "labels": str(sequences / "labels"),
                    "label_format": "trainids",
                    **({"loss_scale": e["loss_scale"]} if e.get("loss_scale") else {}),
                }
                for e in config["data"]["train"]
            ],
            "val": [],
            "resize": [WIDTH, HEIGHT],
            "val_resize": None,
            "workers": 0,
            "crop": [48, 32] if config["data"]["crop"] else None,
            "flow": dict(config["data"]["flow"], cache_dir=str(tmp_path / "flow")),
        }
    )
    config["train"].update(
        {
            "max_iters": 2,
            "max_iters_per_epoch": None,
            "batch_size": 2,
            "val_every": 0,
            "device": "cpu",
            "log_every": 1,
        }
    )
    trainer = Trainer(config_from_dict(config), progress=False)
    trainer.fit()
    assert trainer.iteration == 2 and (tmp_path / "run" / "last.pt").is_file()
    enabled = {name for name, spec in config["losses"].items() if spec["weight"]}
    assert {row["iteration"] for row in trainer.step_log} == {1, 2}
    assert enabled <= set(trainer.step_log[-1]) and all(
        math.isfinite(row["total"]) for row in trainer.step_log
    )


# ---- weight interpolation (video-seg-interpolate) -----------------------------------------------
def test_interpolation_mixes_float_tensors_keeps_counters_and_records_its_inputs(tmp_path, capsys):
    from checkpoints import make_tiny_espnet_checkpoint
    from video_seg_ros.tools.interpolate import main as interpolate_main

    start = make_tiny_espnet_checkpoint(tmp_path / "start.pt", seed=0)
    finetuned_checkpoint = load_checkpoint(make_tiny_espnet_checkpoint(tmp_path / "f.pt", seed=1))
    counter = next(k for k in finetuned_checkpoint.state_dict if "num_batches_tracked" in k)
    finetuned_checkpoint.state_dict[counter] = torch.tensor(1234)
    finetuned = finetuned_checkpoint.save(tmp_path / "finetuned.pt")
    outputs = {}
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"mix_{alpha}.pt"
        argv = ["--finetuned", str(finetuned), "--start", str(start), "--alpha", str(alpha)]
        assert interpolate_main([*argv, "-o", str(out)]) == 0
        outputs[alpha] = load_checkpoint(out)
    a, b = load_checkpoint(finetuned).state_dict, load_checkpoint(start).state_dict
    weight = next(k for k, v in a.items() if v.is_floating_point() and v.numel() > 8)
    assert torch.equal(outputs[1.0].state_dict[weight], a[weight])
    assert torch.equal(outputs[0.0].state_dict[weight], b[weight])
    assert torch.allclose(outputs[0.25].state_dict[weight], 0.25 * a[weight] + 0.75 * b[weight])
    assert all(int(m.state_dict[counter]) == 1234 for m in outputs.values())
    record = outputs[0.25].training["interpolation"]
    assert record["alpha"] == 0.25 and record["start"] == "start.pt"
    assert len(record["finetuned_sha256"]) == 64
    # The mixed checkpoint is a working model: the engine segments with it.
    frame = np.random.default_rng(0).integers(0, 255, (32, 64, 3), np.uint8)
    engine = SegmentationEngine(tmp_path / "mix_0.25.pt", device="cpu", precision="fp32")
    assert engine.segment(frame).labels.shape == (32, 64)

    # Another network, or alpha outside 0..1, is refused with what is wrong.
    other = make_tiny_espnet_checkpoint(tmp_path / "other.pt", q=2)
    capsys.readouterr()
    argv = ["--finetuned", str(finetuned), "--start", str(other), "-o", str(tmp_path / "x.pt")]
    assert interpolate_main(argv) == 1
    assert "different networks: espnet(p=2,q=3) and espnet(p=2,q=2)" in capsys.readouterr().err
    assert interpolate_main([*argv[:2], "--start", str(start), "--alpha", "1.5", *argv[4:]]) == 2
    assert "--alpha must be in 0..1" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
