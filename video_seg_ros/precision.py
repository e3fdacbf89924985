"""The precision an engine runs, decided once at construction: a reduced precision is earned.

``auto`` proposes bf16 on a CPU with native bf16 (fp16 on CUDA); the engine keeps it only where it
gives the fp32 labels: the share of equal argmax labels on a few calibration frames must reach
:data:`AGREEMENT_THRESHOLD` (one gate for every reduced precision). A model that cannot run in
the candidate at all (an operator without a bf16 kernel) runs fp32 instead. An explicitly asked
reduced precision still runs below the gate (with a warning), and is refused at start-up when it
cannot run. The outcome is cached beside the conversions, keyed by the weights, backend,
precision, input size, CPU and library versions, so a node starts fast the second time.

:func:`settle` is what the engine calls at construction (with the ``auto`` backend's fallback to
torch when a converted model cannot run). Calibration frames are the package's own synthetic
street (no data needed) unless the caller gives frames. No ROS here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LOG = logging.getLogger(__name__)

#: Share of calibration pixels whose label must equal the fp32 label for ``auto`` to keep a
#: reduced precision (the same gate serves every reduced precision).
AGREEMENT_THRESHOLD = 0.99

#: Synthetic street frames used when the caller gives none (seeds never used for training).
CALIBRATION_SEEDS = (9101, 9102, 9103, 9104)

#: Bumped when the calibration frames or the measurement change, so cached decisions are redone.
GATE_VERSION = 1


@dataclass(frozen=True)
class PrecisionDecision:
    """What runs and why.

    Attributes:
        requested: what was asked for (``auto``, ``fp32``, ``bf16``, ``fp16``).
        precision: what runs.
        reason: one line for logs, diagnostics and reports.
        agreement: share of calibration labels equal to fp32 (None: not measured, e.g. fp32).
        fallback: why the candidate precision was not kept (None when it was, or was fp32).
    """

    requested: str
    precision: str
    reason: str
    agreement: float | None = None
    fallback: str | None = None


def label_agreement(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> float:
    """Share of pixels whose argmax class is equal; each item (N, C, h, w) logits."""
    equal = total = 0
    for want, got in zip(reference, candidate, strict=True):
        same = want.float().argmax(1) == got.float().argmax(1)
        equal += int(same.sum())
        total += same.numel()
    return equal / total if total else 1.0


@functools.lru_cache(maxsize=4)
def _synthetic_frames(width: int, height: int) -> tuple[np.ndarray, ...]:
    """Generated once per size and kept in the cache folder: generating them took about 2 s of
    every node start at 1024x512."""
    from video_seg_ros import synthetic
    from video_seg_ros.backends import default_cache_dir

    width, height = max(width, 32), max(height, 16)
    digest = hashlib.sha256(repr((GATE_VERSION, CALIBRATION_SEEDS, width, height)).encode())
    for source in sorted(Path(synthetic.__file__).parent.glob("*.py")):  # a changed generator
        digest.update(source.read_bytes())
    path = default_cache_dir() / "calibration" / f"synthetic-{digest.hexdigest()[:24]}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            frames = tuple(stored[f"frame{i}"] for i in range(len(CALIBRATION_SEEDS)))
        if all(f.shape == (height, width, 3) and f.dtype == np.uint8 for f in frames):
            return frames
    except (OSError, ValueError, KeyError, EOFError):
        pass  # missing or damaged: made again
    from video_seg_ros.synthetic.generator import generate_sequence

    frames = tuple(
        next(iter(generate_sequence(seed, 1, width, height, with_flow=False))).rgb
        for seed in CALIBRATION_SEEDS
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **{f"frame{i}": frame for i, frame in enumerate(frames)})
        os.replace(tmp.name, path)
    except OSError as error:  # a read-only cache costs time, not correctness
        LOG.debug("calibration frames not cached in %s: %s", path.parent, error)
    return frames


def calibration_frames(width: int, height: int) -> list[np.ndarray]:
    """The default calibration set: (H, W, 3) uint8 RGB synthetic street frames at ``width`` x
    ``height``."""
    return list(_synthetic_frames(int(width), int(height)))


class CalibrationSet:
    """The frames a reduced precision is gated on, and int8 calibrated on, made once.

    ``frames``: (H, W, 3) uint8 RGB frames, or None for :func:`calibration_frames` at
    ``input_size`` (W, H); ``preprocess(frames, "rgb")`` makes the network input (1, 3, h, w) of
    each (the engine's codec). Each is computed once, on first use (the engine's warm-up pass
    uses the first frame in every precision).
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray] | None,
        input_size: tuple[int, int],
        preprocess: Callable[[list[np.ndarray], str], torch.Tensor],
    ):
        self._given = None if frames is None else list(frames)
        self._input_size = input_size
        self._preprocess = preprocess

    @functools.cached_property
    def frames(self) -> list[np.ndarray]:
        from video_seg_ros.engine_io import check_frame

        frames = self._given if self._given is not None else calibration_frames(*self._input_size)
        if not frames:
            raise ValueError("calibration needs at least one frame")
        for frame in frames:
            check_frame(frame)
        return frames

    @functools.cached_property
    def batches(self) -> list[torch.Tensor]:
        """(1, 3, h, w) network inputs on the engine's device, one per frame."""
        return [self._preprocess([frame], "rgb") for frame in self.frames]

    @functools.cached_property
    def fingerprint(self) -> str:
        return frames_fingerprint(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def load_calibration(path: str | os.PathLike, count: int) -> list[np.ndarray]:
    """Up to ``count`` (H, W, 3) uint8 RGB frames spread evenly over a folder of images, a video
    or a bag (:func:`video_seg_ros.streams.open_stream`); ValueError saying what went wrong."""
    from video_seg_ros.streams import StreamError, open_stream

    if count < 1:
        raise ValueError(f"calibration frames must be at least 1, got {count}")
    try:
        stream = open_stream(str(path))
        step = max(1, len(stream) // count)
        # Only the chosen frames are kept: a long bag never sits in memory whole.
        frames = [frame.rgb for i, frame in enumerate(stream) if i % step == 0][:count]
    except (StreamError, OSError) as error:
        raise ValueError(
            f"cannot read calibration frames from {path}: {error}; give a folder of images, a "
            "video or a bag from the camera the model will see"
        ) from error
    if not frames:
        raise ValueError(f"no frames in {path}: calibration needs frames from the camera")
    return frames


def frames_fingerprint(frames: Sequence[np.ndarray]) -> str:
    """A short hash of calibration frames (part of the cached decision's key)."""
    digest = hashlib.sha256(str(GATE_VERSION).encode())
    for frame in frames:
        digest.update(repr(frame.shape).encode())
        digest.update(np.ascontiguousarray(frame).tobytes())
    return digest.hexdigest()[:16]


class GateCache:
    """One JSON file per decision key under ``<cache_dir>/precision/`` (unwritable: only
    logged)."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.path = Path(root) / "precision" / f"{key}.json"

    def load(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return (
            record
            if isinstance(record, dict) and ("agreement" in record or "error" in record)
            else None
        )

    def store(self, record: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, suffix=".tmp", delete=False
            ) as f:
                json.dump(record, f)
            os.replace(f.name, self.path)
        except OSError as error:
            LOG.warning("could not cache the precision decision in %s (%s)", self.path, error)


def run_sequence(runner, batches: Sequence[torch.Tensor], temporal: bool) -> list[torch.Tensor]:
    """Logits of each (1, 3, h, w) batch; a memory model reads a throwaway memory of its own, so
    no stream's state is touched."""
    if not temporal:
        return [runner.run(batch).float() for batch in batches]
    memory = runner.new_memory()
    return [runner.run(batch, [memory]).float() for batch in batches]


def decide(
    requested: str,
    candidate: str,
    candidate_reason: str,
    runner,
    rebuild: Callable[[str], object],
    reference: Callable[[], object],
    batches: Sequence[torch.Tensor],
    temporal: bool,
    threshold: float = AGREEMENT_THRESHOLD,
    cache: GateCache | None = None,
) -> tuple[object, PrecisionDecision]:
    """Settle the precision of ``runner`` (built in ``candidate``); returns the runner that runs
    and the decision.

    ``rebuild(precision)`` makes the same backend's runner in another precision; ``reference()``
    the fp32 torch runner the candidate is compared with. Every path ends with one warm-up pass
    in what was chosen, so an fp32 runner that cannot run raises here (at start-up), not at the
    first frame. Raises :class:`~video_seg_ros.runtime.PrecisionError` when an explicitly asked
    precision cannot run the model.
    """
    from video_seg_ros.runtime import GATED_PRECISIONS, PrecisionError

    if candidate == "fp32":
        run_sequence(runner, batches[:1], temporal)
        return runner, PrecisionDecision(requested, "fp32", candidate_reason)
    record = cache.load() if cache is not None else None
    if record is None:
        try:
            got = run_sequence(runner, batches, temporal)
        except Exception as error:  # a missing kernel shows as NotImplementedError/RuntimeError
            record = {"error": f"{type(error).__name__}: {str(error).strip()[:200]}"}
        else:
            want = run_sequence(reference(), batches, temporal)
            record = {"agreement": label_agreement(want, got)}
        if cache is not None:
            cache.store({**record, "precision": candidate, "frames": len(batches)})
    if "error" in record:
        if requested != "auto":
            raise PrecisionError(
                f"precision {candidate!r} cannot run this model here ({record['error']}); "
                "use precision 'fp32' or 'auto'."
            )
        fallback = f"{candidate} cannot run this model ({record['error']}); running fp32"
        return _fall_back_to_fp32(requested, rebuild, batches, temporal, fallback)
    agreement = float(record["agreement"])
    calibration = f"{len(batches)} calibration frames"
    measured = f"{candidate} keeps {agreement:.2%} of the fp32 labels on {calibration}"
    if agreement < threshold:
        if requested == "auto":
            fallback = f"{measured}, below the {threshold:.1%} gate; running fp32"
            return _fall_back_to_fp32(requested, rebuild, batches, temporal, fallback, agreement)
        if candidate in GATED_PRECISIONS:
            raise PrecisionError(
                f"precision {candidate!r} refused: {measured}, below the {threshold:.1%} gate "
                "(precision_min_agreement). Calibrate on frames from your camera (calibration), "
                "or use 'fp32'/'auto'."
            )
        LOG.warning(
            "precision %s asked for: %s, below the %.1f%% gate (auto would run fp32)",
            candidate,
            measured,
            100 * threshold,
        )
        reason = f"{candidate} asked for; {measured}, below the {threshold:.1%} gate"
    else:
        asked = "auto" if requested == "auto" else f"{candidate} asked for"
        reason = f"{asked}: {measured} (gate {threshold:.1%})"
    try:
        run_sequence(runner, batches[:1], temporal)
    except Exception as error:  # a cached verdict from an older build, say
        if requested != "auto":
            raise PrecisionError(
                f"precision {candidate!r} cannot run this model here "
                f"({type(error).__name__}: {error}); use 'fp32' or 'auto'."
            ) from error
        why = f"{type(error).__name__}: {str(error)[:200]}"
        fallback = f"{candidate} cannot run this model ({why}); running fp32"
        return _fall_back_to_fp32(requested, rebuild, batches, temporal, fallback, agreement)
    return runner, PrecisionDecision(requested, candidate, reason, agreement)


def _fall_back_to_fp32(requested, rebuild, batches, temporal, fallback, agreement=None):
    LOG.warning("precision %s: %s", requested, fallback)
    runner = rebuild("fp32")
    run_sequence(runner, batches[:1], temporal)
    return runner, PrecisionDecision(requested, "fp32", fallback, agreement, fallback)


def settle(
    runners,
    runner,
    asked_backend: str,
    requested: str,
    candidate: str,
    candidate_reason: str,
    calibration: CalibrationSet,
    temporal: bool,
    threshold: float,
    owned: bool,
    on_backend_fallback: Callable[[str], None],
) -> tuple[object, PrecisionDecision]:
    """An engine's precision at construction: :func:`decide` on the calibration frames for
    ``runner``, built by ``runners`` (a
    :class:`~video_seg_ros.backends.selection.RunnerFactory`) in ``candidate``, with its decision
    cached beside the conversions. Under ``asked_backend='auto'`` a converted model that cannot
    run falls back to torch, as a failed conversion does (``on_backend_fallback(reason)`` is told
    first); returns the runner that runs (its ``name`` is the backend) and the decision."""
    from video_seg_ros import runtime
    from video_seg_ros.backends import BackendError, default_cache_dir, model_fingerprint
    from video_seg_ros.backends.selection import backend_version
    from video_seg_ros.runtime import PrecisionError

    batches = calibration.batches
    backend = runner.name
    while True:
        cache = None
        if candidate != "fp32":
            key = model_fingerprint(
                runners.model,
                backend,
                candidate,
                runners.input_size,
                runtime.cpu_name(),
                torch.__version__,
                backend_version(backend),
                calibration.fingerprint,
                getattr(runner, "conversion_key", ""),
                *runners.fingerprint_extra,
            )[:32]
            cache = GateCache(runners.cache_dir or default_cache_dir(), key)
        try:
            return decide(
                requested,
                candidate,
                candidate_reason,
                runner,
                lambda precision: runners.runner(backend, precision, owned),
                lambda: runners.reference(owned),
                batches,
                temporal,
                threshold,
                cache,
            )
        except PrecisionError:
            raise
        except Exception as error:
            if backend == "torch":
                raise  # the reference path itself cannot run the model
            message = f"{type(error).__name__}: {str(error).strip()[:300]}"
            if asked_backend != "auto" or runners.is_graph:
                raise BackendError(
                    f"{backend} could not run the converted model: {message}"
                ) from error
            on_backend_fallback(f"{backend} could not run the model: {message}")
            runner = runners.runner("torch", candidate, owned)
            backend = runner.name
