"""``video-seg-train``: train a temporally consistent segmenter (ETC) from a YAML config.

Examples::

    video-seg-train --config config/train/cityscapes_sequences_etc.yaml
    video-seg-train --config config/train/cityscapes_sequences_etc.yaml --resume train.epochs=20
    video-seg-train --config config/train/native_etc.yaml --profile 11  # where a step's time goes
    torchrun --nproc_per_node=4 -m video_seg_ros.tools.train --config config/train/X.yaml
"""

from __future__ import annotations

import argparse
import sys

from video_seg_ros.checkpoint import CheckpointError
from video_seg_ros.tools.arguments import add_deprecated_alias, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-seg-train",
        description="Train a per-frame segmenter with ETC's temporal loss and teacher "
        "distillation (or the local-memory-attention wrapper) from a YAML config. Writes "
        "last.pt/best.pt (project checkpoint format), trainer_state.pt, metrics.csv, steps.csv "
        "and metrics.png into the config's run_dir. Under torchrun it trains with "
        "DistributedDataParallel (gloo on CPU, NCCL on GPU).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: dotted keys, YAML values, e.g.  train.epochs=3  "
        "losses.temporal.weight=0.4  data.crop=[512,256]  teacher=null",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="YAML training config (see config/train/*.yaml and docs/training.md)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from run_dir/last.pt and run_dir/trainer_state.pt (model, "
        "optimiser, LR schedule, epoch and metrics history)",
    )
    parser.add_argument(
        "-o",
        "--output",
        dest="run_dir",
        default=None,
        metavar="DIR",
        help="output folder (checkpoints, logs); overrides the config's run_dir",
    )
    add_deprecated_alias(parser, "--run-dir", "-o/--output", "run_dir", metavar="DIR")
    parser.add_argument(
        "--device",
        default=None,
        help="auto, cpu or cuda[:N]; overrides train.device (under torchrun each "
        "process takes cuda:LOCAL_RANK)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest="no_progress",
        action="store_true",
        help="no tqdm progress bar (log files)",
    )
    add_deprecated_alias(parser, "--no-progress", "--quiet", "no_progress", flag=True)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the merged config (defaults + file + overrides) and exit",
    )
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="no training: validate the initial (model.init) or, with --resume, the "
        "last model on data.val and print mIoU/TC as JSON",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="N",
        help="run N training steps with per-phase timing (data, flow, student, "
        "teacher, each loss, backward, optimiser), no validation, and print a "
        "table (also RUN_DIR/profile.md); checkpoints go to <run_dir>/profile "
        "unless -o/--output is given. The first step is shown apart (warm-up, "
        "flow-cache misses); N >= 2",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides with dotted keys, values parsed as YAML",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from video_seg_ros.training.config import dump_config, load_config
    from video_seg_ros.training.datasets import DatasetError

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.profile is not None:
        if args.profile < 2:
            print(
                "video-seg-train: error: --profile needs N >= 2 steps (the first is warm-up)",
                file=sys.stderr,
            )
            return 2
        overrides += [
            "train.profile=true",
            f"train.max_iters={args.profile}",
            "train.val_every=0",
            "train.log_every=1",
        ]
    try:
        config = load_config(args.config, overrides)
        if args.profile is not None and not args.run_dir:
            from pathlib import Path

            config["run_dir"] = str(
                Path(config["run_dir"]) / "profile"
            )  # never overwrite a real run
        if args.print_config:
            print(dump_config(config))
            return 0
        from video_seg_ros.training.trainer import Trainer

        trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        # ValueError covers ConfigError, DatasetError and bad settings found while building models.
        return fail("video-seg-train", error)
    if args.validate_only:
        if not trainer.val_sequences:
            return fail("video-seg-train", "--validate-only needs data.val datasets in the config")
        import json

        print(json.dumps(trainer.validate()))
        return 0
    try:
        history = trainer.fit()
    except (DatasetError, FileNotFoundError) as error:
        return fail("video-seg-train", error)
    if trainer.ctx.is_main and args.profile is not None:
        table = trainer.profiler.table(skip_first=1)
        cache = next(
            (part.flow_cache for part in trainer.dataset.datasets if part.flow_cache), None
        )
        if cache is not None:
            files, size = cache.disk_usage()
            table += (
                f"\nflow cache {cache.cache_dir}: {files} files, {size / 2**20:.1f} MiB; "
                f"this run read {cache.hits} and computed {cache.misses} flows\n"
            )
        print(table, end="")
        (trainer.run_dir / "profile.md").write_text(table)
    if trainer.ctx.is_main and history:
        print(f"done: {len(history)} epochs in total; checkpoints and logs in {trainer.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
