"""Per-phase wall time of training steps: where a step's seconds go (data, flow, student, teacher,
losses, backward, optimiser).

Cheap enough to leave on (two ``perf_counter`` calls per phase; on CUDA a synchronize around each
phase, which is why it is off by default). ``train.profile: true`` adds ``s_<phase>`` columns to
``steps.csv``; ``video-seg-train --profile N`` runs N steps and prints :meth:`StepProfiler.table`.

Data phases (``data.read``, ``data.flow``, ``data.augment``) are measured inside the dataset, so
they are only seen with ``data.workers: 0``; with workers the main process sees only the time it
waited for a batch (``data``).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext

import torch

#: Display order and meaning of the phases (others are listed after these, alphabetically).
PHASES = {
    "data": "waiting for the batch (with workers: 0, everything below under data.*)",
    "data.read": "decode + resize the frames and labels",
    "data.flow": "optical flow t -> t+k read from the disk cache",
    "data.flow_compute": "optical flow t -> t+k computed (cache miss; once per pair and size)",
    "data.augment": "aligned scale / crop / flip",
    "to_device": "batch to the device",
    "student": "student forward (t and t+k in one batch when a loss needs the neighbour)",
    "teacher": "teacher forward (no gradient)",
    "backward": "backward of the summed losses",
    "optimizer": "optimiser + LR schedule step",
}


class StepProfiler:
    """Accumulates seconds per named phase for the current step; :meth:`end_step` closes it."""

    def __init__(self, enabled: bool, device: torch.device | None = None):
        self.enabled = bool(enabled)
        self._sync = self.enabled and device is not None and device.type == "cuda"
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.counters: dict[str, int] = {}

    def phase(self, name: str):
        """Context manager timing one phase (a shared no-op when profiling is off)."""
        return self._timed(name) if self.enabled else nullcontext()

    @contextmanager
    def _timed(self, name: str):
        if self._sync:
            torch.cuda.synchronize()  # CUDA is asynchronous: time the work, not its launch
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            self.current[name] = self.current.get(name, 0.0) + seconds

    def count(self, name: str, value: int = 1) -> None:
        if self.enabled:
            self.counters[name] = self.counters.get(name, 0) + value

    def end_step(self, step_seconds: float) -> dict[str, float]:
        """Close the current step (its total wall time given) and return its phases."""
        if not self.enabled:
            return {}
        phases = dict(self.current, step=step_seconds)
        self.steps.append(phases)
        self.current = {}
        return phases

    def table(self, skip_first: int = 1) -> str:
        """Markdown table: median and mean seconds per phase and the share of the median step.

        The first ``skip_first`` steps are left out (one-off costs: oneDNN primitive creation,
        flow computed on cache misses) and shown in their own column.
        """
        if not self.steps:
            return "no profiled steps\n"
        timed = self.steps[skip_first:] or self.steps
        first = self.steps[0]
        names = [n for n in PHASES if any(n in s for s in self.steps)]
        names += sorted({n for s in self.steps for n in s} - set(PHASES) - {"step"})
        step_median = statistics.median(s["step"] for s in timed)
        lines = [
            f"Per-phase wall seconds over {len(timed)} step(s)"
            + (
                f" (the first {skip_first} left out, shown apart)"
                if len(self.steps) > skip_first
                else ""
            ),
            "",
            "| phase | median s | mean s | share of step | first step s | what |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name in names + ["step"]:
            values = [s.get(name, 0.0) for s in timed]
            median = statistics.median(values)
            share = (
                "100 %" if name == "step" else f"{100.0 * median / max(step_median, 1e-12):.1f} %"
            )
            meaning = (
                "the whole step"
                if name == "step"
                else PHASES.get(name, "loss forward" if name.startswith("loss.") else "")
            )
            lines.append(
                f"| {name} | {median:.4f} | {statistics.fmean(values):.4f} | {share} | "
                f"{first.get(name, 0.0):.4f} | {meaning} |"
            )
        if self.counters:
            lines += ["", ", ".join(f"{k}: {v}" for k, v in sorted(self.counters.items()))]
        return "\n".join(lines) + "\n"
