"""The ETC training loop: per-frame student + temporal loss + distillation, single process or DDP.

One :class:`Trainer` runs a config (see :mod:`video_seg_ros.training.config`): it builds the
student (optionally wrapped with local memory attention), the teacher, the datasets, the optimiser
with a poly learning-rate schedule, and then for every epoch trains, validates (mIoU and TC with
:mod:`video_seg_ros.metrics`), writes ``metrics.csv`` + ``metrics.png`` and saves checkpoints in
the
project format (``last.pt``, ``best.pt``; the optimiser state for ``--resume`` goes to
``trainer_state.pt`` beside them).

Under ``torchrun`` every process runs the same code; gradients are averaged by
DistributedDataParallel, the data is split by DistributedSampler (``train.batch_size`` is per
process), BatchNorm becomes SyncBatchNorm on CUDA, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from video_seg_ros.checkpoint import Checkpoint, CheckpointCache, load_checkpoint
from video_seg_ros.engine import resolve_device
from video_seg_ros.runtime import (
    EVALUATION_PRECISION,
    autocast_dtype,
    flush_denormals,
    resolve_precision,
)
from video_seg_ros.training import losses as L
from video_seg_ros.training.config import ConfigError
from video_seg_ros.training.datasets import build_training_dataset, build_validation_sequences
from video_seg_ros.training.distributed import (
    DistributedContext,
    init_distributed,
    shutdown_distributed,
)
from video_seg_ros.training.flow_cache import build_flow_cache
from video_seg_ros.training.modeling import (
    SegmenterWithFeatures,
    build_student,
    build_teacher,
    set_batchnorm_eval,
)
from video_seg_ros.training.profiling import StepProfiler

LOSS_NAMES = (
    "ce",
    "temporal",
    "distill_pixel",
    "distill_pairwise",
    "distill_cross_frame",
    "distill_temporal",
    "pseudo_label",
)


def _plain(value):
    """Config -> JSON-safe plain types (checkpoints are read with weights_only=True)."""
    return json.loads(json.dumps(value, default=str))


def resolve_training_precision(train_cfg: dict, device: torch.device) -> str:
    """``train.precision`` (or, when it is null, the older ``train.amp`` switch) -> fp32|bf16|fp16.

    null keeps the behaviour from before the key existed: fp16 autocast on CUDA when ``train.amp``,
    fp32 everywhere else. Raises runtime.PrecisionError (a ValueError) for a precision the device
    cannot run well, e.g. bf16 on a CPU without native bf16.
    """
    if train_cfg.get("precision") is None:
        return "fp16" if train_cfg.get("amp", True) and device.type == "cuda" else "fp32"
    return resolve_precision(str(train_cfg["precision"]), device)


def poly_factor(iteration: int, total: int, power: float) -> float:
    """Poly learning-rate schedule: (1 - it / total) ** power."""
    return max(0.0, 1.0 - iteration / max(1, total)) ** power


class Trainer:
    def __init__(
        self,
        config: dict,
        resume: bool = False,
        progress: bool = True,
        checkpoints: CheckpointCache | None = None,
    ):
        """``checkpoints``: the reader of the run's input checkpoints (``model.init``,
        ``teacher.checkpoint``), each file read once; pass the caller's to share what it read."""
        # train.epochs: null is replaced by the derived count below, in the trainer's copy only.
        self.config = {**config, "train": dict(config["train"])}
        self.checkpoints = checkpoints or CheckpointCache()
        self.run_dir = Path(config["run_dir"]).expanduser()
        train_cfg = self.config["train"]
        # Published weights drive activations into denormal floats, which the CPU computes 10x
        # slower (about 5x on a whole native-scale step); every process flushes them to zero.
        flush_denormals()
        device = resolve_device(train_cfg["device"])
        self.precision = resolve_training_precision(train_cfg, device)
        self.ctx: DistributedContext = init_distributed(device.type)
        if self.ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", self.ctx.local_rank)
        self.device = device
        self.progress = progress and self.ctx.is_main
        torch.manual_seed(int(config["seed"]))
        np.random.seed(int(config["seed"]))
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()

        weights = {name: float(config["losses"][name]["weight"]) for name in LOSS_NAMES}
        self.weights = weights
        clip_mode = config["data"]["mode"] == "clip"
        self.clip_mode = clip_mode
        self.needs_teacher = any(
            weights[n] for n in LOSS_NAMES if n.startswith("distill_") or n == "pseudo_label"
        )
        self.needs_features = any(
            weights[n] for n in ("distill_pairwise", "distill_cross_frame", "distill_temporal")
        )
        losses_cfg = config["losses"]
        # Some dataset entry scales its own samples' losses (``loss_scale``): losses are then
        # reduced per sample, and the teacher runs only on the samples it is asked about.
        self.scaled_losses = any(entry.get("loss_scale") for entry in config["data"]["train"])
        # With a detached neighbour and no distillation on it, the neighbour's forward needs no
        # autograd graph: the backward pass then covers frame t alone (about half the step).
        self.neighbour_without_grad = bool(
            weights["temporal"]
            and losses_cfg["temporal"]["detach_neighbour"]
            and not self.needs_features
            and not (weights["distill_pixel"] and losses_cfg["distill_pixel"]["neighbour_weight"])
            and not (weights["pseudo_label"] and losses_cfg["pseudo_label"]["neighbour_weight"])
        )
        self.teacher_needs_neighbour = bool(
            weights["distill_cross_frame"]
            or weights["distill_temporal"]
            or (weights["distill_pixel"] and losses_cfg["distill_pixel"]["neighbour_weight"])
            or (weights["distill_pairwise"] and losses_cfg["distill_pairwise"]["neighbour_weight"])
            or (weights["pseudo_label"] and losses_cfg["pseudo_label"]["neighbour_weight"])
        )
        self.needs_neighbour = not clip_mode and bool(
            weights["temporal"] or self.teacher_needs_neighbour
        )

        student, self.meta = build_student(config, self.checkpoints)
        self.net = SegmenterWithFeatures(student, self.meta["preprocessing"]).to(device)
        if self.ctx.enabled and device.type == "cuda":
            self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.teacher = None
        teacher_size = (config.get("teacher") or {}).get("input_size")
        self.teacher_size = (int(teacher_size[1]), int(teacher_size[0])) if teacher_size else None
        if self.needs_teacher:
            teacher, teacher_pre, self.student_channels, self.teacher_channels = build_teacher(
                config, self.meta, self.checkpoints
            )
            self.teacher = SegmenterWithFeatures(teacher, teacher_pre).to(device).eval()
            self.pseudo_label_channels = torch.tensor(
                self.student_channels, dtype=torch.long, device=device
            )
        self.temporal_distill = L.TemporalDistillationLoss(
            losses_cfg["distill_temporal"]["grid"],
            losses_cfg["distill_temporal"]["hidden"],
            losses_cfg["distill_temporal"]["seed"],
        ).to(device)

        self.dataset = build_training_dataset(
            config,
            self.run_dir,
            needs_neighbour=self.needs_neighbour,
            needs_flow=bool(weights["temporal"]),
        )
        self.ce_class_weights = self._ce_class_weights() if weights["ce"] else None
        self.sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=int(config["seed"]),
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=int(train_cfg["batch_size"]),
            sampler=self.sampler,
            num_workers=int(config["data"]["workers"]),
            drop_last=False,
            pin_memory=device.type == "cuda",
        )
        # No persistent workers: each epoch's workers get a fresh copy of the dataset carrying the
        # new epoch number, which seeds that epoch's augmentation and neighbour choice.
        cap = train_cfg.get("max_iters_per_epoch")
        self.iters_per_epoch = min(len(self.loader), int(cap)) if cap else len(self.loader)
        budgets = [int(train_cfg["max_iters"])] if train_cfg.get("max_iters") else []
        if train_cfg["epochs"] is not None:
            budgets.append(self.iters_per_epoch * int(train_cfg["epochs"]))
        self.total_iters = min(budgets)  # the config check asks for at least one of the two
        self.profiler = StepProfiler(bool(train_cfg.get("profile")), device)
        if self.profiler.enabled and int(config["data"]["workers"]) == 0:
            for part in self.dataset.datasets:
                part.profiler = self.profiler

        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "the student has no trainable parameters (memory.freeze_base on a model "
                "without memory parameters?)"
            )
        lr, wd = float(train_cfg["lr"]), float(train_cfg["weight_decay"])
        if train_cfg["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=lr, momentum=float(train_cfg["momentum"]), weight_decay=wd
            )
        elif train_cfg["optimizer"] == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=wd)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        power = float(train_cfg["poly_power"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: poly_factor(it, self.total_iters, power)
        )
        # use_amp: autocast on (fp16 on CUDA, bf16 on CUDA or a CPU with native bf16); only fp16
        # needs the gradient scaler (bf16 has fp32's exponent range).
        self.amp_dtype = autocast_dtype(self.precision)
        self.use_amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.precision == "fp16" and device.type == "cuda"
        )
        self.model = self.net
        if self.ctx.enabled:
            self.model = DistributedDataParallel(
                self.net,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(train_cfg.get("find_unused_parameters", False)),
            )

        self.epoch = 0
        self.iteration = 0
        self.best_miou = -1.0
        self.history: list[dict] = []
        self.step_log: list[dict] = []
        self.val_sequences = build_validation_sequences(config) if config["data"]["val"] else {}
        self.val_flow = build_flow_cache(config["data"]["flow"], self.run_dir)
        if resume:
            self._resume()
        if train_cfg["epochs"] is None:
            # As many epochs as the step budget needs from where the run stands: the number the
            # progress bar shows and the checkpoints' config records.
            train_cfg["epochs"] = self.epoch + math.ceil(
                (self.total_iters - self.iteration) / max(1, self.iters_per_epoch)
            )

    def _ce_class_weights(self) -> torch.Tensor | None:
        """``losses.ce.class_weights`` as a (C,) tensor, or None; ``enet`` counts the training
        labels once here and writes the weights to ``class_weights.json`` in the run folder."""
        setting = self.config["losses"]["ce"]["class_weights"]
        if setting is None:
            return None
        channels = len(self.meta["output_to_class"])
        if setting == "enet":
            histogram = self.dataset.label_histogram()[:channels].astype(np.float64)
            values = L.enet_class_weights(histogram / max(histogram.sum(), 1.0))
            if self.ctx.is_main:
                (self.run_dir / "class_weights.json").write_text(
                    json.dumps(
                        {"pixels": histogram.astype(np.int64).tolist(), "weights": values},
                        indent=1,
                    )
                )
        else:
            values = [float(v) for v in setting]
            if len(values) != channels:
                raise ConfigError(
                    f"losses.ce.class_weights has {len(values)} numbers; the model has "
                    f"{channels} output channels"
                )
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self, metrics: dict | None) -> Checkpoint:
        meta = self.meta
        return Checkpoint(
            arch=meta["arch"],
            arch_kwargs=dict(meta["arch_kwargs"]),
            state_dict=self.net.model.state_dict(),
            label_set=meta["label_set"],
            class_names=meta["class_names"],
            palette=meta["palette"],
            output_to_class=meta["output_to_class"],
            preprocessing=meta["preprocessing"],
            memory=meta["memory"],
            source={"tool": "video-seg-train", "run_dir": str(self.run_dir), "init": meta["init"]},
            training=_plain(
                {
                    "config": self.config,
                    "epoch": self.epoch,
                    "iteration": self.iteration,
                    "world_size": self.ctx.world_size,
                    "metrics": metrics,
                }
            ),
        )

    def save(self, metrics: dict | None, best: bool) -> None:
        if not self.ctx.is_main:
            return
        checkpoint = self._checkpoint(metrics)
        checkpoint.save(self.run_dir / "last.pt")
        if best:
            checkpoint.save(self.run_dir / "best.pt")
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "history": _plain(self.history),
        }
        tmp = self.run_dir / "trainer_state.pt.partial"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / "trainer_state.pt")

    def _resume(self) -> None:
        last, state_file = self.run_dir / "last.pt", self.run_dir / "trainer_state.pt"
        if not last.is_file() or not state_file.is_file():
            raise FileNotFoundError(
                f"--resume: no last.pt and trainer_state.pt in {self.run_dir}; "
                "start without --resume or point run_dir at an earlier run"
            )
        checkpoint = load_checkpoint(last)
        self.net.model.load_state_dict(checkpoint.state_dict)
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.history = list(state.get("history") or [])
        steps_file = self.run_dir / "steps.csv"
        if steps_file.is_file():  # keep the per-step log of the steps before the resume
            with open(steps_file, newline="") as stream:
                self.step_log = [
                    {
                        k: int(v) if k == "iteration" else float(v)
                        for k, v in row.items()
                        if v != ""
                    }
                    for row in csv.DictReader(stream)
                    if int(row["iteration"]) <= self.iteration
                ]

    # ---- one training step ---------------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        if self.config["train"]["freeze_bn"]:
            set_batchnorm_eval(self.net)

    def autocast(self):
        """The autocast context of this run's precision (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Weighted losses of one batch (already on the device); keys of enabled losses only."""
        w, cfg = self.weights, self.config["losses"]
        phase = self.profiler.phase
        label = batch["label"]
        out: dict[str, torch.Tensor] = {}
        if self.clip_mode:
            with phase("student"), self.autocast():
                logits, _ = self.model(batch["clip"])
            with phase("loss.ce"):
                out["ce"] = w["ce"] * L.cross_entropy_loss(
                    logits, label, class_weights=self.ce_class_weights
                )
            return out
        image = batch["image"]
        batched = self.needs_neighbour and not self.neighbour_without_grad
        inputs = torch.cat([image, batch["neighbour"]]) if batched else image
        with phase("student"), self.autocast():
            all_logits, all_features = self.model(inputs, with_features=self.needs_features)
            if self.needs_neighbour and not batched:
                with torch.no_grad():
                    neighbour_logits, _ = self.model(batch["neighbour"])
                all_logits = torch.cat([all_logits, neighbour_logits])
        n = image.shape[0]
        logits, logits_n = all_logits[:n], all_logits[n:]
        features = all_features[:n] if all_features is not None else None
        features_n = all_features[n:] if all_features is not None else None
        scaled = self.scaled_losses
        scale = batch["loss_scale"] if scaled else None

        def reduce(name: str, values: torch.Tensor, rows=None) -> torch.Tensor:
            """Per-sample values (of ``rows`` of the batch) -> the batch's scaled mean."""
            factors = scale[:, L.PER_SAMPLE_LOSSES.index(name)]
            if rows is not None:
                factors = factors[rows]
            return (factors * values).sum() / n

        if w["ce"]:
            with phase("loss.ce"):
                ce = L.cross_entropy_loss(
                    logits, label, per_sample=scaled, class_weights=self.ce_class_weights
                )
                out["ce"] = w["ce"] * (reduce("ce", ce) if scaled else ce)
        if w["temporal"]:
            with phase("loss.temporal"):
                temporal = L.temporal_loss(
                    logits,
                    logits_n,
                    image,
                    batch["neighbour"],
                    batch["flow"],
                    batch["valid"],
                    detach_neighbour=bool(cfg["temporal"]["detach_neighbour"]),
                    per_sample=scaled,
                )
                out["temporal"] = w["temporal"] * (
                    reduce("temporal", temporal) if scaled else temporal
                )
        # Rows the teacher is asked about: all, or (scaled losses) those whose distillation counts.
        teacher_rows = scale[:, L.PER_SAMPLE_LOSSES.index("distill_pixel")] > 0 if scaled else None
        if self.teacher is not None and teacher_rows is not None and not teacher_rows.any():
            out["distill_pixel"] = logits.new_zeros(())
        elif self.teacher is not None:
            # The neighbours go through the teacher only when a loss compares them.
            teacher_inputs = inputs if self.teacher_needs_neighbour else inputs[:n]
            if teacher_rows is not None:
                rows = teacher_rows.repeat(teacher_inputs.shape[0] // n)
                teacher_inputs = teacher_inputs[rows]
                logits, logits_n = logits[teacher_rows], logits_n[teacher_rows[: len(logits_n)]]
            m = int(teacher_rows.sum()) if teacher_rows is not None else n
            if self.teacher_size is not None and tuple(inputs.shape[-2:]) != self.teacher_size:
                # A teacher trained at a higher resolution is far better there; its logits are then
                # compared at its resolution and its features pooled to the same affinity grid.
                teacher_inputs = torch.nn.functional.interpolate(
                    teacher_inputs, size=self.teacher_size, mode="bilinear", align_corners=False
                )
            with phase("teacher"), torch.no_grad(), self.autocast():
                t_logits_all, t_features_all = self.teacher(
                    teacher_inputs, with_features=self.needs_features
                )
            t_logits_all = t_logits_all[:, self.teacher_channels].float()
            t_logits, t_logits_n = t_logits_all[:m], t_logits_all[m:]
            t_feat = t_features_all[:m] if t_features_all is not None else None
            t_feat_n = t_features_all[m:] if t_features_all is not None else None
            if w["pseudo_label"]:
                with phase("loss.pseudo_label"):
                    c = cfg["pseudo_label"]
                    valid = batch["valid"]
                    loss = L.pseudo_label_loss(
                        logits, t_logits, float(c["confidence"]), self.pseudo_label_channels, valid
                    )
                    if self.needs_neighbour and c["neighbour_weight"]:
                        loss = loss + c["neighbour_weight"] * L.pseudo_label_loss(
                            logits_n,
                            t_logits_n,
                            float(c["confidence"]),
                            self.pseudo_label_channels,
                            valid,
                        )
                    out["pseudo_label"] = w["pseudo_label"] * loss
            if w["distill_pixel"]:
                with phase("loss.distill_pixel"):
                    c = cfg["distill_pixel"]
                    shared = self.student_channels
                    loss = L.pixel_distillation_loss(
                        logits[:, shared], t_logits, c["temperature"], per_sample=scaled
                    )
                    if self.needs_neighbour and c["neighbour_weight"]:
                        loss = loss + c["neighbour_weight"] * L.pixel_distillation_loss(
                            logits_n[:, shared], t_logits_n, c["temperature"], per_sample=scaled
                        )
                    if scaled:
                        loss = reduce("distill_pixel", loss, teacher_rows)
                    out["distill_pixel"] = w["distill_pixel"] * loss
            if w["distill_pairwise"]:
                with phase("loss.distill_pairwise"):
                    c = cfg["distill_pairwise"]
                    loss = L.pairwise_distillation_loss(features, t_feat, c["grid"])
                    if self.needs_neighbour and c["neighbour_weight"]:
                        loss = loss + c["neighbour_weight"] * L.pairwise_distillation_loss(
                            features_n, t_feat_n, c["grid"]
                        )
                    out["distill_pairwise"] = w["distill_pairwise"] * loss
            if w["distill_cross_frame"]:
                with phase("loss.distill_cross_frame"):
                    out["distill_cross_frame"] = w[
                        "distill_cross_frame"
                    ] * L.cross_frame_distillation_loss(
                        features, features_n, t_feat, t_feat_n, cfg["distill_cross_frame"]["grid"]
                    )
            if w["distill_temporal"]:
                with phase("loss.distill_temporal"):
                    out["distill_temporal"] = w["distill_temporal"] * self.temporal_distill(
                        [features, features_n], [t_feat, t_feat_n]
                    )
        return out

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_epoch(self) -> dict:
        self._train_mode()
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)
        sums: dict[str, float] = {}
        frames = 0
        start = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm import tqdm

        # train.max_iters may end the run inside an epoch.
        steps_now = max(0, min(self.iters_per_epoch, self.total_iters - self.iteration))
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_now,
                desc=f"epoch {self.epoch + 1}/{self.config['train']['epochs']}",
                leave=False,
                dynamic_ncols=True,
            )
        log_every = int(self.config["train"]["log_every"])
        phase = self.profiler.phase
        batches = iter(self.loader)
        step = -1
        for step in range(steps_now):
            step_start = time.perf_counter()
            batch = next(batches, None)
            data_s = time.perf_counter() - step_start
            if batch is None:
                break
            self.profiler.add("data", data_s)
            with phase("to_device"):
                batch = self._to_device(batch)
            parts = self.compute_losses(batch)
            total = sum(parts.values())
            with phase("backward"):
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
            with phase("optimizer"):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
            self.iteration += 1
            frames += batch["label"].shape[0] * self.ctx.world_size
            values = torch.stack(
                [total.detach().float()] + [v.detach().float() for v in parts.values()]
            )
            values = self.ctx.mean(values).cpu().tolist()
            record = dict(zip(["total"] + list(parts), values))
            for key, value in record.items():
                sums[key] = sums.get(key, 0.0) + value
            timings = {"step_s": time.perf_counter() - step_start, "data_s": data_s}
            phases = self.profiler.end_step(timings["step_s"])
            if step % log_every == 0 or step == steps_now - 1:
                self.step_log.append(
                    {
                        "iteration": self.iteration,
                        **record,
                        **timings,
                        **{f"s_{k}": v for k, v in phases.items() if k != "step"},
                    }
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['total']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}"
                )
            if not math.isfinite(record["total"]):
                raise FloatingPointError(
                    f"loss became {record['total']} at iteration {self.iteration}; "
                    "lower train.lr or check the data"
                )
        if bar is not None:
            bar.close()
        steps = max(1, step + 1)
        seconds = time.perf_counter() - start
        result = {f"loss_{k}": v / steps for k, v in sums.items()}
        result.update(
            {
                "seconds": seconds,
                "frames_per_s": frames / max(seconds, 1e-9),
                "lr": self.scheduler.get_last_lr()[0],
            }
        )
        return result

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """mIoU over labelled validation frames and TC over consecutive predictions (rank 0).

        The model runs through :class:`~video_seg_ros.engine.SegmentationEngine` (the checkpoint's
        own preprocessing, as the node and video-seg-eval run it) on the frames as they are on
        disk, and :func:`video_seg_ros.evaluation.evaluate` scores them: the figures equal what
        ``video-seg-eval`` reports for the saved checkpoint on the same frames. Fractions 0..1.
        """
        from video_seg_ros.engine import SegmentationEngine
        from video_seg_ros.evaluation import evaluate
        from video_seg_ros.streams import FolderEntry, read_folder_frame

        limit = self.config["train"].get("val_max_frames")

        def frames():
            for name, items in self.val_sequences.items():
                for item in items[: int(limit) if limit else None]:
                    frame = read_folder_frame(
                        FolderEntry(item.record, item.label_path), item.label_format
                    )
                    # The entry-prefixed name keeps equal sequence names of two entries apart.
                    yield dataclasses.replace(frame, sequence=name)

        self.net.eval()
        try:
            # Figures follow the package's one precision rule (fp32), whatever precision trains.
            engine = SegmentationEngine(
                self._checkpoint(None),
                device=str(self.device),
                backend="torch",
                precision=EVALUATION_PRECISION,
                model=self.net.model,
            )
            evaluator = evaluate(engine, frames())
        finally:
            self._train_mode()
        return {"val_miou": evaluator.miou, "val_tc": evaluator.tc}

    # ---- logs ---------------------------------------------------------------------------------
    def write_logs(self) -> None:
        if not self.ctx.is_main or not self.history:
            return
        columns = ["epoch", "iteration", "lr", "seconds", "frames_per_s"]
        columns += sorted({k for row in self.history for k in row if k.startswith("loss_")})
        columns += ["val_miou", "val_tc"]
        with open(self.run_dir / "metrics.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        with open(self.run_dir / "steps.csv", "w", newline="") as stream:
            keys = ["iteration"] + sorted(
                {k for row in self.step_log for k in row if k != "iteration"}
            )
            writer = csv.DictWriter(stream, keys)
            writer.writeheader()
            writer.writerows(self.step_log)
        plot_history(self.history, self.run_dir / "metrics.png")

    # ---- the whole run -------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        train_cfg = self.config["train"]
        epochs = int(train_cfg["epochs"])
        val_every, save_every = int(train_cfg["val_every"]), int(train_cfg["save_every"])
        try:
            while self.epoch < epochs and self.iteration < self.total_iters:
                result = self.train_epoch()
                self.epoch += 1
                final = self.epoch == epochs or self.iteration >= self.total_iters
                row = {"epoch": self.epoch, "iteration": self.iteration, **result}
                # val_every 0: never validate here (figures then come from video-seg-eval).
                validate_now = (
                    bool(self.val_sequences)
                    and val_every > 0
                    and (self.epoch % val_every == 0 or final)
                )
                if validate_now and self.ctx.is_main:
                    row.update(self.validate())
                self.ctx.barrier()
                self.history.append(row)
                best = row.get("val_miou") is not None and row["val_miou"] > self.best_miou
                if best:
                    self.best_miou = row["val_miou"]
                # Without any validated mIoU there is nothing to rank by: best.pt is the last
                # model.
                never_validated = not any(r.get("val_miou") is not None for r in self.history)
                if (save_every and self.epoch % save_every == 0) or final or best:
                    self.save(
                        {k: row.get(k) for k in ("val_miou", "val_tc")}, best or never_validated
                    )
                self.write_logs()
                if self.ctx.is_main:
                    shown = ", ".join(
                        f"{k}={v:.4g}"
                        for k, v in row.items()
                        if isinstance(v, float)
                        and (k.startswith(("loss_", "val_")) or k == "frames_per_s")
                    )
                    print(f"epoch {self.epoch}/{epochs}: {shown}", flush=True)
                self.ctx.barrier()
        finally:
            shutdown_distributed(self.ctx)
        return self.history


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for row in history for k in row if k.startswith("loss_")}):
        ax_loss.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key[5:])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("weighted loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    plotted = False
    for key, name in (("val_miou", "mIoU"), ("val_tc", "TC")):
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        if points:
            ax_val.plot(*zip(*points), marker="o", label=name)
            plotted = True
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation (fraction 0..1)")
    if plotted:
        ax_val.legend(fontsize=8)
    else:
        ax_val.set_title("no validation yet", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
