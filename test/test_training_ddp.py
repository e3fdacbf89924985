"""The DDP path: torchrun with 2 gloo processes on the CPU trains exactly like one process.

With BatchNorm frozen (train.freeze_bn), per-sample losses are independent of how the batch is
split, so 2 processes x batch 1 must log the same loss, step after step, as 1 process x batch 2:
DistributedSampler hands out the same samples, DDP averages the gradients, the optimiser steps
agree.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import tiny_config, write_config, write_moving_square_sequences

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "steps.csv") as stream:
        return [float(row["total"]) for row in csv.DictReader(stream)]


def test_two_process_gloo_ddp_matches_a_single_process_on_the_same_data(tmp_path):
    data = write_moving_square_sequences(tmp_path / "frames")
    common = dict(train__freeze_bn=True, train__epochs=1, train__optimizer="sgd", train__lr=0.05)
    single = tiny_config(data, tmp_path / "single", **common)
    single["data"].update(
        {"val": [], "scale_range": [1.0, 1.2]}
    )  # no crop padding: equal pixel counts
    single["train"]["batch_size"] = 2
    ddp = tiny_config(data, tmp_path / "ddp", **common)
    ddp["data"].update({"val": [], "scale_range": [1.0, 1.2]})
    ddp["train"]["batch_size"] = 1  # per process: 2 processes x 1 = the single run's batch of 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))

    subprocess.run(
        [
            sys.executable,
            "-m",
            "video_seg_ros.tools.train",
            "--quiet",
            "--config",
            str(write_config(tmp_path / "single.yaml", single)),
        ],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "video_seg_ros.tools.train",
            "--quiet",
            "--config",
            str(write_config(tmp_path / "ddp.yaml", ddp)),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    single_losses, ddp_losses = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single_losses) == len(ddp_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-6)
    assert single_losses[0] != pytest.approx(single_losses[-1], rel=1e-3)  # it did train
    checkpoint_dir = tmp_path / "ddp"
    assert (checkpoint_dir / "last.pt").is_file()  # rank 0 saved
