"""Label-free adaptation of a segmenter to a user's own drive (video self-training).

What UDA-VSS calls video self-training, with the losses of ETC that need no labels: the input
checkpoint is the frozen **teacher**, the **student** starts as a copy of it and trains on the
drive's frames with

- ETC's flow-warped temporal loss between frame t and a neighbour t+k,
- pixel-wise distillation (KL to the teacher's class distribution, on t and t+k),
- cross-entropy on the teacher's *confident* pixels (max softmax >= ``confidence``).

With ``targets="fused"`` the teacher's targets are its **fused** predictions instead
(:mod:`video_seg_ros.temporal`, mode ``fuse``: consistent over time by construction), computed once
over the training frames in drive order and written as label files
(:func:`write_fused_targets`): cross-entropy on their confident pixels replaces the per-frame
confident-pixel loss; the temporal loss and the per-frame KL stay (``distill_weight``; without the
KL the classes the fused map is rarely confident about fade). The aim is ETC's promise:
consistency learned, per-frame cost at run time.

The training is the project's :class:`~video_seg_ros.training.trainer.Trainer`, configured in code
(:func:`adaptation_config`): the drive's frames are written once as PNG files into the work folder,
so the trainer's folder dataset, flow cache and ``--resume`` apply unchanged. The last
``holdout`` fraction of the drive (a contiguous tail) goes to another folder and is never trained
on; on it the report compares the input and the adapted model: temporal consistency (TC, measured
as video-seg-eval does: DIS ``ultrafast`` flow at width <= 1024, nearest label warp, dataset-level
mIoU of each prediction against the next one warped back; :mod:`video_seg_ros.evaluation`) and
agreement with the teacher (pixel agreement and mIoU of the student's labels against the
teacher's: without labels, the proxy for "no accuracy lost").

Sources (read by :mod:`video_seg_ros.streams`): a rosbag2 folder (mcap or sqlite3; one
``sensor_msgs/msg/Image`` or ``CompressedImage`` topic, picked automatically when it is the only
one) or a folder of frames (:mod:`video_seg_ros.frames` order and sequences). No ROS here.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from video_seg_ros.adaptation_report import write_report
from video_seg_ros.checkpoint import Checkpoint, load_checkpoint
from video_seg_ros.frames import parse_frame_name
from video_seg_ros.streams import BagStream, FolderStream, FrameStream, StreamError, open_stream

#: Written frame files: ``<sequence>_<drive index>.png`` (frames.py groups them by the prefix).
FRAME_NAME = "{sequence}_{index:06d}.png"
MANIFEST = "manifest.json"
#: Where the student's targets come from: the teacher's per-frame outputs (computed in each step)
#: or its fused labels (computed once over the drive, see :func:`write_fused_targets`).
TARGETS = ("teacher", "fused")


class AdaptationError(ValueError):
    """The drive, checkpoint or settings cannot be adapted on; the message says what to do."""


@dataclass
class AdaptationSettings:
    """Every knob of one adaptation run (the CLI's options; defaults are the CLI's)."""

    steps: int = 200
    batch_size: int = 2
    lr: float = 5e-5
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    confidence: float = 0.9
    holdout: float = 0.2
    limit: int | None = None
    size: tuple[int, int] | None = None  # (W, H); None = the checkpoint's input size
    crop: tuple[int, int] | None = None  # (W, H) random training crops; None = whole frames
    topic: str | None = None
    label_set: str | None = None
    temporal_weight: float = 0.4
    distill_weight: float = 1.0
    pseudo_label_weight: float = 1.0
    max_gap: int = 3
    freeze_bn: bool = True
    targets: str = "teacher"  # one of TARGETS

    def check(self) -> None:
        if self.steps < 1:
            raise AdaptationError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise AdaptationError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise AdaptationError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.confidence <= 1.0:
            raise AdaptationError(
                f"--confidence must be a probability in [0, 1], got {self.confidence}"
            )
        if not 0.0 < self.holdout < 1.0:
            raise AdaptationError(
                f"--holdout must be a fraction between 0 and 1 (e.g. 0.2), got {self.holdout}"
            )
        if self.limit is not None and self.limit < 1:
            raise AdaptationError(f"--limit must be at least 1, got {self.limit}")
        if self.max_gap < 1:
            raise AdaptationError(f"max_gap must be at least 1, got {self.max_gap}")
        if not (self.temporal_weight or self.distill_weight or self.pseudo_label_weight):
            raise AdaptationError("all loss weights are 0: nothing to train")
        if self.targets not in TARGETS:
            raise AdaptationError(
                f"--targets must be one of {', '.join(TARGETS)}, got {self.targets!r}"
            )


# ---- the drive --------------------------------------------------------------------------------
def open_drive(source: str | Path, topic: str | None = None) -> FrameStream:
    """A rosbag2 folder (has metadata.yaml) or a folder of frames, as a frame stream."""
    source = Path(source)
    if source.exists() and not source.is_dir():
        if (source.parent / "metadata.yaml").is_file():
            raise AdaptationError(
                f"{source} is a file inside a bag; pass the bag folder {source.parent}"
            )
        raise AdaptationError(
            f"{source} is neither a rosbag2 folder (with metadata.yaml) nor a folder of frames"
        )
    if not source.exists():
        raise AdaptationError(
            f"{source} is neither a rosbag2 folder (with metadata.yaml) nor a folder of frames"
        )
    if topic is not None and not (source / "metadata.yaml").is_file():
        raise AdaptationError(
            f"--topic is for bags; {source} is a folder of frames (no metadata.yaml)"
        )
    try:
        return open_stream(
            source, topic, several_topics_hint="name the camera to adapt to with --topic"
        )
    except StreamError as error:
        if "no images" in str(error):
            raise AdaptationError(
                f"no frames (.png/.jpg/...) under {source}; pass a folder of one "
                "camera's frames or a rosbag2 folder"
            ) from error
        raise


def _frame_names(drive: FrameStream) -> list[str] | None:
    """The frames' own names (file stems, make_bag keys), kept for the written files so that
    video-seg-eval --labels still finds their label files; None = numbered names."""
    if isinstance(drive, FolderStream):
        return _usable_names([record.path.stem for record in drive.records])
    if isinstance(drive, BagStream):
        return _usable_names(drive.keys)
    return None


def _usable_names(names: list[str] | None) -> list[str] | None:
    """``names`` when they are unique, plain and list back (frames.py) in the drive's order."""
    if (
        not names
        or len(set(names)) != len(names)
        or not all(
            n and n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names
        )
    ):
        return None
    records = [parse_frame_name(Path(f"{name}.png")) for name in names]
    ordered = sorted(
        range(len(records)), key=lambda i: (records[i].sequence, records[i].frame, names[i])
    )
    return names if ordered == list(range(len(records))) else None


def split_holdout(count: int, fraction: float) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices): the held-out part is the last round(count * fraction)
    frames, a contiguous tail; each part needs 2 frames at least (one pair)."""
    held = int(math.floor(count * fraction + 0.5))
    if held < 2 or count - held < 2:
        raise AdaptationError(
            f"{count} frame(s) are too few for a hold-out of {fraction:g}: it would keep {held} "
            f"frame(s) out and train on {count - held}; both parts need at least 2 frames (one "
            "consecutive pair). "
            "Use a longer drive, another --holdout, or a larger --limit"
        )
    return list(range(count - held)), list(range(count - held, count))


def extract_frames(
    drive: FrameStream,
    folder: Path,
    size: tuple[int, int] | None,
    limit: int | None,
    holdout: float,
    progress: bool = True,
    reuse_only: bool = False,
) -> dict:
    """Write the drive's frames (resized to ``size``) into ``folder/train`` and ``folder/holdout``.

    Reuses an earlier extraction with the same source and settings (the files keep their
    timestamps, so the flow cache stays valid); ``reuse_only`` (a resumed run) refuses to write
    other frames than the earlier run trained on. Writes into a temporary folder first: a drive
    refused half-way (frames of mixed sizes) leaves nothing behind. Returns the manifest.
    """
    count = min(len(drive), limit) if limit else len(drive)
    train, held = split_holdout(count, holdout)
    wanted = {
        "source": drive.describe(),
        "count": count,
        "size": list(size) if size else None,
        "train": train,
        "holdout": held,
    }
    manifest_file = folder / MANIFEST
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError):
            manifest = {}
        if {k: manifest.get(k) for k in wanted} == wanted:
            return manifest
    if reuse_only:
        raise AdaptationError(
            f"--resume: {folder} holds no frames of this drive with these settings "
            "(source, --limit, --size, --holdout); resume with the earlier settings or "
            "start without --resume"
        )
    from tqdm import tqdm

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        (staging / "train").mkdir()
        (staging / "holdout").mkdir()
        first_size, source_size = None, None
        names = _frame_names(drive)
        bar = tqdm(total=count, desc="reading frames", unit="frame", disable=not progress)
        for index, frame in enumerate(drive):
            if index >= count:
                break
            rgb = frame.rgb
            frame_size = (rgb.shape[1], rgb.shape[0])
            if source_size is None:
                source_size = frame_size
            elif frame_size != source_size:
                raise AdaptationError(
                    f"frames of mixed sizes in {drive.path}: frame 0 is "
                    f"{source_size[0]}x{source_size[1]}, frame {index} is "
                    f"{frame_size[0]}x{frame_size[1]}. "
                    "A drive must come from one camera: pass one camera's --topic or folder"
                )
            if size and frame_size != tuple(size):
                rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
            first_size = first_size or (rgb.shape[1], rgb.shape[0])
            part = "train" if index < len(train) else "holdout"
            name = (
                f"{names[index]}.png"
                if names
                else FRAME_NAME.format(sequence=_safe(frame.sequence), index=index)
            )
            cv2.imwrite(
                str(staging / part / name),
                np.ascontiguousarray(rgb[..., ::-1]),
                [cv2.IMWRITE_PNG_COMPRESSION, 1],
            )
            bar.update(1)
        bar.close()
        manifest = dict(wanted, source_size=list(source_size), frame_size=list(first_size))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _safe(name: str) -> str:
    """A sequence name usable as a file-name prefix that frames.py parses back (no trailing
    digits)."""
    cleaned = "".join(c if c.isalnum() else "-" for c in name).strip("-") or "drive"
    return cleaned + "-seq" if cleaned[-1].isdigit() else cleaned


# ---- training ---------------------------------------------------------------------------------
def adaptation_config(
    checkpoint: str | Path,
    train_frames: Path,
    run_dir: Path,
    frame_size: tuple[int, int],
    settings: AdaptationSettings,
    target_labels: Path | None = None,
) -> dict:
    """The Trainer config of one adaptation run (input checkpoint = student init and frozen
    teacher). ``target_labels``: the fused targets' label folder (``settings.targets ==
    "fused"``); cross-entropy on them replaces the confident-pixel loss."""
    from video_seg_ros.training.config import config_from_dict

    fused = target_labels is not None

    user = {
        "run_dir": str(run_dir),
        "seed": settings.seed,
        "model": {"init": str(checkpoint)},
        # With fused targets the teacher runs in training only for the per-frame KL, if asked.
        "teacher": (
            {"checkpoint": str(checkpoint)} if not fused or settings.distill_weight else None
        ),
        "data": {
            "train": [
                {
                    "type": "folder",
                    "images": str(train_frames),
                    "labels": str(target_labels) if fused else None,
                    "label_format": "trainids" if fused else "auto",
                }
            ],
            "val": [],  # the held-out tail is scored after training, never used to pick a model
            "resize": list(frame_size),
            "crop": list(settings.crop) if settings.crop else None,
            "scale_range": [1.0, 1.0],
            "hflip": True,
            "mode": "pair",
            "max_gap": settings.max_gap,
            "direction": "both",
            "flow": {
                "method": "dis",
                "preset": "ultrafast",
                "cache_dir": str(run_dir.parent / "flow_cache"),
            },
            "workers": 0,
        },
        "train": {
            # max_iters is the budget; null = as many epochs as it needs (the Trainer derives them,
            # also for a resumed run whose earlier epoch was cut short).
            "epochs": None,
            "max_iters": settings.steps,
            "batch_size": settings.batch_size,
            "optimizer": "adam",
            "lr": settings.lr,
            "weight_decay": 0.0,
            "poly_power": 0.9,
            "precision": settings.precision,
            "freeze_bn": settings.freeze_bn,
            "val_every": 0,
            "save_every": 1,
            "log_every": 1,
            "device": settings.device,
        },
        "losses": {
            # No labels: with fused targets, the fused labels' confident pixels stand in for them.
            "ce": {"weight": settings.pseudo_label_weight if fused else 0.0},
            "temporal": {"weight": settings.temporal_weight},
            "distill_pixel": {
                "weight": settings.distill_weight,
                "temperature": 1.0,
                "neighbour_weight": 0.4,
            },
            "pseudo_label": {
                "weight": 0.0 if fused else settings.pseudo_label_weight,
                "confidence": settings.confidence,
                "neighbour_weight": 0.4,
            },
        },
    }
    return config_from_dict(user)


def write_fused_targets(
    checkpoint: Checkpoint,
    frames_folder: Path,
    labels_folder: Path,
    confidence: float,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict:
    """The teacher's fused labels for every frame of ``frames_folder``, as trainId PNG files of
    the same names in ``labels_folder``; pixels whose fused probability is below ``confidence``
    are 255 (ignored by the cross-entropy).

    The teacher runs on the torch backend with temporal fusion (mode ``fuse``, the engine's
    default settings) over the frames in drive order, its state reset at a sequence change.
    Returns ``{"frames", "confident_share"}``.
    """
    from tqdm import tqdm

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.labels import IGNORE_ID

    frames = FolderStream(frames_folder)
    labels_folder.mkdir(parents=True, exist_ok=True)
    engine = SegmentationEngine(
        checkpoint, device=device, precision=precision, backend="torch", temporal="fuse"
    )
    confident, pixels, sequence = 0, 0, None
    try:
        for frame in tqdm(frames, desc="fused targets", unit="frame", disable=not progress):
            if frame.sequence != sequence:
                engine.reset()
                sequence = frame.sequence
            result = engine.segment(frame.rgb, channel_order="rgb", with_confidence=True)
            keep = result.confidence >= confidence
            labels = np.where(keep, result.labels, IGNORE_ID).astype(np.uint8)
            cv2.imwrite(str(labels_folder / f"{frame.key}.png"), labels)
            confident += int(keep.sum())
            pixels += keep.size
    finally:
        engine.release()
    return {"frames": len(frames), "confident_share": confident / max(pixels, 1)}


# ---- scoring on the held-out tail -------------------------------------------------------------
def score_holdout(
    teacher: Checkpoint,
    student: Checkpoint,
    folder: Path,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict:
    """TC of the teacher (= input model) and of the student on the held-out frames, and their
    agreement.

    Everything goes through the project's one evaluator (:mod:`video_seg_ros.evaluation`, what
    video-seg-eval uses, with its default TC settings: DIS ultrafast at <= 1024 px, nearest label
    warp, consecutive frames, dataset-level). Agreement: the student's labels scored against the
    teacher's as if these were ground truth (pixel agreement and mIoU). Both models run on the
    torch backend, the exact model that was trained.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from video_seg_ros.engine import SegmentationEngine
    from video_seg_ros.evaluation import EvaluationOptions, evaluate

    frames = FolderStream(folder)
    options = EvaluationOptions()
    teacher_labels: dict[str, np.ndarray] = {}
    consistency, rows = {}, {}
    # The teacher first: its labels are the student's "ground truth" for the agreement, so the
    # student's accuracy figures are its agreement with the teacher (its TC ignores labels).
    for key, checkpoint in (("before", teacher), ("after", student)):
        engine = SegmentationEngine(
            checkpoint, device=device, precision=precision, backend="torch"
        )
        rows[key] = []
        bar = tqdm(
            total=len(frames),
            desc=f"scoring held-out frames ({key})",
            unit="frame",
            disable=not progress,
        )

        def on_frame(frame, result, row, key=key, bar=bar):
            if key == "before":
                teacher_labels[frame.key] = result.labels
            rows[key].append(row)
            bar.update(1)

        stream = (
            frames
            if key == "before"
            else (
                replace(frame, label=teacher_labels[frame.key], label_path=None)
                for frame in frames
            )
        )
        try:
            consistency[key] = evaluate(engine, stream, options, on_frame)
        finally:
            bar.close()
            engine.release()
    per_pair = [
        {
            "frame": before["frame"],
            "tc_before": before["tc_from_previous"],
            "tc_after": after["tc_from_previous"],
        }
        for before, after in zip(rows["before"], rows["after"])
        if "tc_from_previous" in before
    ]

    summary = {}
    for key, evaluator in consistency.items():
        figures = evaluator.summary()
        summary[key] = {"tc": figures["tc"], "tc_pixel_agreement": figures["tc_pixel_agreement"]}
    # The teacher is the input model: "before" agrees with it by definition.
    summary["before"].update(teacher_pixel_agreement=1.0, teacher_miou=1.0)
    agreed = consistency["after"].summary()
    summary["after"].update(
        teacher_pixel_agreement=agreed["pixel_accuracy"], teacher_miou=agreed["miou"]
    )
    summary["tc_pairs"] = consistency["before"].tc_pairs
    summary["per_pair"] = per_pair
    summary["tc_settings"] = options.tc_settings()
    return summary


# ---- the whole run ----------------------------------------------------------------------------
@dataclass
class OutputPaths:
    checkpoint: Path
    report_json: Path
    report_markdown: Path
    plot: Path
    work: Path

    @classmethod
    def from_output(cls, output: str | Path) -> OutputPaths:
        """``-o run/adapted.pt``: files beside it (adapted.report.json ..., adapted.work/);
        ``-o run/``: run/adapted.pt, run/report.json, run/report.md, run/report.png, run/work/."""
        output = Path(output)
        if output.suffix == ".pt":
            stem = output.with_suffix("")
            return cls(
                output,
                Path(f"{stem}.report.json"),
                Path(f"{stem}.report.md"),
                Path(f"{stem}.report.png"),
                Path(f"{stem}.work"),
            )
        return cls(
            output / "adapted.pt",
            output / "report.json",
            output / "report.md",
            output / "report.png",
            output / "work",
        )


def check_checkpoint(checkpoint: Checkpoint, label_set: str | None, origin: str) -> None:
    if label_set is not None and checkpoint.label_set != label_set:
        raise AdaptationError(
            f"checkpoint {origin} predicts the {checkpoint.label_set!r} label set, not "
            f"{label_set!r}; pass a {label_set} checkpoint or drop --label-set"
        )
    if checkpoint.memory:
        raise AdaptationError(
            f"checkpoint {origin} has a memory module; adaptation trains per-frame "
            "models: pass its per-frame base (video_seg_ros.checkpoint."
            "strip_memory_from_checkpoint) and add the memory afterwards"
        )


def adapt(
    checkpoint: str | Path,
    source: str | Path,
    output: str | Path,
    settings: AdaptationSettings | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Adapt ``checkpoint`` to the drive in ``source``; writes the checkpoint and the report.

    Returns the report (also written as JSON and Markdown, with the plot, see
    :class:`OutputPaths`).
    Raises AdaptationError (and CheckpointError, BagError, PrecisionError...) with what to do.
    """
    settings = settings or AdaptationSettings()
    settings.check()
    checkpoint = Path(checkpoint)
    teacher = load_checkpoint(checkpoint)
    check_checkpoint(teacher, settings.label_set, str(checkpoint))
    paths = OutputPaths.from_output(output)
    size = (
        tuple(settings.size)
        if settings.size
        else (teacher.preprocessing.input_width, teacher.preprocessing.input_height)
    )
    drive = open_drive(source, settings.topic)
    run_dir = paths.work / "run"
    if resume and not (run_dir / "last.pt").is_file():
        raise AdaptationError(f"--resume: no earlier run in {run_dir}; start without --resume")
    manifest = extract_frames(
        drive,
        paths.work / "frames",
        size,
        settings.limit,
        settings.holdout,
        progress,
        reuse_only=resume,
    )

    from video_seg_ros.training.trainer import Trainer

    target_labels, targets = None, None
    if settings.targets == "fused":
        target_labels = paths.work / "fused_targets"
        targets = write_fused_targets(
            teacher,
            paths.work / "frames" / "train",
            target_labels,
            settings.confidence,
            settings.device,
            settings.precision,
            progress,
        )
    config = adaptation_config(
        checkpoint.resolve(),
        paths.work / "frames" / "train",
        run_dir,
        size,
        settings,
        target_labels,
    )
    start = time.perf_counter()
    trainer = Trainer(config, resume=resume, progress=progress)
    done_before = trainer.iteration
    if trainer.iteration < trainer.total_iters:
        trainer.fit()
    seconds = time.perf_counter() - start

    adapted = load_checkpoint(run_dir / "last.pt")
    adapted.source = {
        "tool": "video-seg-adapt",
        "input": str(checkpoint),
        "drive": drive.describe(),
        "train_frames": manifest["train"],
        "holdout_frames": manifest["holdout"],
    }
    paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    adapted.save(paths.checkpoint)

    scores = score_holdout(
        teacher,
        adapted,
        paths.work / "frames" / "holdout",
        settings.device,
        settings.precision,
        progress,
    )
    from video_seg_ros.training.trainer import LOSS_NAMES

    loss_keys = {"total", *LOSS_NAMES}
    losses = [
        {k: v for k, v in row.items() if k == "iteration" or k in loss_keys}
        for row in trainer.step_log
    ]
    report = {
        "tool": "video-seg-adapt",
        "command": command,
        "input_checkpoint": str(checkpoint),
        "output_checkpoint": str(paths.checkpoint),
        "model": teacher.model_name,
        "label_set": teacher.label_set,
        "source": drive.describe(),
        "frames": manifest["count"],
        "frame_size": manifest["frame_size"],
        "source_size": manifest["source_size"],
        "train_frames": manifest["train"],
        "holdout_frames": manifest["holdout"],
        "settings": _plain_settings(settings),
        "fused_targets": targets,
        "training": {
            "steps": trainer.iteration,
            "steps_before_resume": done_before,
            "precision": trainer.precision,
            "device": str(trainer.device),
            "seconds": round(seconds, 2),
            "final_losses": {
                k: v for k, v in (losses[-1] if losses else {}).items() if k != "iteration"
            },
        },
        "before": scores["before"],
        "after": scores["after"],
        "tc_pairs": scores["tc_pairs"],
        "tc_settings": scores["tc_settings"],
        "per_pair": scores["per_pair"],
        "loss_curve": losses,
    }
    write_report(report, paths)
    return report


def _plain_settings(settings: AdaptationSettings) -> dict:
    values = asdict(settings)
    for key in ("size", "crop"):
        if values[key] is not None:
            values[key] = list(values[key])
    return values


__all__ = [
    "AdaptationError",
    "AdaptationSettings",
    "OutputPaths",
    "TARGETS",
    "adapt",
    "adaptation_config",
    "check_checkpoint",
    "extract_frames",
    "open_drive",
    "score_holdout",
    "split_holdout",
    "write_fused_targets",
]
