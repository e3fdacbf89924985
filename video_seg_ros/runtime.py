"""CPU/GPU numeric settings shared by inference and training: denormal flush and precision.

Published weights drive some activations into denormal floats, which x86 CPUs compute one to
two orders of magnitude slower than normal floats; flushing them to zero does not change a label
on the shared Cityscapes frames (see docs/models.md) and is switched on wherever the project runs
a model on a CPU. No ROS here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import threading
import time
from pathlib import Path

import torch

#: The precisions PyTorch itself runs (autocast): what training and the torch backend take.
TORCH_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: What a user may ask of inference. ``auto``: fp16 on CUDA, bf16 on a CPU that computes bf16
#: natively (AMX-BF16 or AVX512-BF16), fp32 elsewhere -- a reduced precision only where it keeps
#: the fp32 labels (:mod:`video_seg_ros.precision`). ``fp32`` is always the exact path. ``int8``:
#: the OpenVINO backend's post-training quantisation (:mod:`video_seg_ros.backends.int8`), only
#: when asked for and refused below the accuracy gate (``auto`` never proposes it).
PRECISIONS = (*TORCH_PRECISIONS, "int8")

#: Precisions that are lossy by construction: below the accuracy gate they are refused, not
#: merely warned about.
GATED_PRECISIONS = ("int8",)

#: The one precision rule of every figure the package reports (``video-seg-eval``, the demo's
#: scoring, ``Trainer.validate``): fp32, the same labels on every CPU; ``--precision`` scores
#: what a node would run instead.
EVALUATION_PRECISION = "fp32"

#: Overrides the native-bf16 probe where set to 0 or 1: tests run both answers of ``auto`` on any
#: CPU (child processes inherit it), and a user can keep ``auto`` off bf16 on a CPU that has it.
NATIVE_BF16_ENV = "VIDEO_SEG_ROS_NATIVE_BF16"


class PrecisionError(ValueError):
    """The requested precision cannot run (well) on the chosen device."""


_flushed_threads = threading.local()


def flush_denormals(enabled: bool = True) -> bool:
    """Treat denormal floats as zero in this thread's CPU math and in its OpenMP team.

    Returns True where the CPU supports it (x86 with DAZ). The flag is per thread (MXCSR):
    ``torch.set_flush_denormal`` sets it for the calling thread only, and threads inherit it only
    when they are created afterwards, so an OpenMP team that already ran a parallel op would go
    on computing half of every tensor with denormals. The calling thread's team is therefore
    given the same floating-point environment here (one tiny parallel region). Cheap when
    repeated in the same thread: :class:`~video_seg_ros.engine.SegmentationEngine` calls it in
    every thread that runs a model.
    """
    if getattr(_flushed_threads, "enabled", None) is enabled:
        return bool(_flushed_threads.supported)
    supported = bool(torch.set_flush_denormal(enabled))
    if supported:
        _copy_float_environment_to_openmp_team(torch.get_num_threads())
    _flushed_threads.enabled, _flushed_threads.supported = enabled, supported
    return supported


def _copy_float_environment_to_openmp_team(num_threads: int) -> bool:
    """Run ``fesetenv(<this thread's environment>)`` on every thread of the calling thread's
    OpenMP team (the one PyTorch's CPU ops use); False where no OpenMP runtime is loaded."""
    openmp = _openmp_library()
    libm = _libm()
    if openmp is None or libm is None or num_threads < 1:
        return False
    environment = ctypes.create_string_buffer(512)  # >= sizeof(fenv_t) on every libc
    if libm.fegetenv(environment) != 0:
        return False
    # GOMP_parallel(fn, data, num_threads, flags) runs fn(data) on each thread of the team; every
    # OpenMP runtime PyTorch ships with (GNU, LLVM, Intel) exports this GNU entry point.
    openmp.GOMP_parallel(
        ctypes.cast(libm.fesetenv, ctypes.c_void_p),
        environment,
        ctypes.c_uint(num_threads),
        ctypes.c_uint(0),
    )
    return True


@functools.lru_cache(maxsize=1)
def _openmp_library():
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if ".so" in line})
    except OSError:
        return None
    for path in paths:
        name = Path(path).name
        if name.startswith(("libgomp", "libiomp", "libomp")):
            try:
                library = ctypes.CDLL(path)
                library.GOMP_parallel.restype = None
                return library
            except (OSError, AttributeError):
                continue
    return None


@functools.lru_cache(maxsize=1)
def _libm():
    name = ctypes.util.find_library("m")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (AMX-BF16 or AVX512-BF16); elsewhere bf16 is
    emulated.

    ``$VIDEO_SEG_ROS_NATIVE_BF16`` (0 or 1), when set, is the answer instead.
    """
    override = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    flags = cpu_flags()
    if flags:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    mkldnn_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(mkldnn_check()) if mkldnn_check is not None else False
    except RuntimeError:
        return False


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:  # virtual machines often say just "AMD EPYC"
        name += f", family {fields['cpu family']} model {fields['model']}"
    return name


def cpu_description() -> str:
    """A short description of the CPU for logs and reports (model name and bf16 support)."""
    return f"{cpu_name()} ({'native' if cpu_has_native_bf16() else 'no native'} bf16)"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` -> the precision to try on ``device`` (for ``auto``, the
    candidate: the engine keeps a reduced precision only where it passes the accuracy gate).

    Raises :class:`PrecisionError` with what to do instead when the request cannot run well.
    """
    return precision_candidate(precision, device)[0]


def precision_candidate(precision: str, device: torch.device) -> tuple[str, str]:
    """:func:`resolve_precision` and why, in a few words (for logs, diagnostics and reports)."""
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise PrecisionError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}."
        )
    if precision != "auto":
        _check_explicit_precision(precision, device)
        return precision, f"{precision} asked for"
    if device.type == "cuda":
        return "fp16", "auto: fp16 on CUDA"
    if cpu_has_native_bf16():
        return "bf16", f"auto: bf16 candidate on {cpu_description()}"
    return "fp32", f"auto: fp32 on {cpu_description()}"


def _check_explicit_precision(precision: str, device: torch.device) -> None:
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(
            f"precision 'int8' runs on the CPU with the OpenVINO backend; device is {device}. "
            "Use 'fp16' or 'auto' on CUDA."
        )
    if device.type == "cuda":
        return
    if precision == "fp16":
        raise PrecisionError(
            "precision 'fp16' runs on CUDA only; on the CPU use 'fp32', or 'bf16' "
            "on a CPU with AMX-BF16/AVX512-BF16."
        )
    if precision == "bf16" and not cpu_has_native_bf16():
        raise PrecisionError(
            f"precision 'bf16' needs a CPU with native bf16 (AMX-BF16 or "
            f"AVX512-BF16); this one is {cpu_description()}, where bf16 would be "
            "emulated and slower than fp32. Use 'fp32' or 'auto'."
        )


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None = plain fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


#: How often a long-running process hands the C heap's free pages back (see :class:`HeapTrimmer`).
HEAP_TRIM_PERIOD_S = 10.0


#: glibc malloc arenas of a node process (see :func:`limit_malloc_arenas`).
NODE_MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt() parameter number


@functools.lru_cache(maxsize=None)
def _glibc_function(name: str, argtypes: tuple):
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS, Windows): nothing to call
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def limit_malloc_arenas(arenas: int = NODE_MALLOC_ARENAS, environ=os.environ) -> bool:
    """Cap glibc's malloc arenas for a process that runs for hours (the node executables).

    glibc gives threads their own arenas, up to 8 per core; the node has dozens of threads
    (DDS, OpenVINO, the worker of each configuration, the executor), and freed memory stays in
    the arena that made it, where the other threads cannot reuse it. With the default the live
    heap after each lifecycle cleanup stayed flat (heaptrack, 14 cycles: 176 MB) while RSS grew
    about 6 MB a cycle (docs/soak.md). Call before the threads start. False where the C library
    is not glibc or the user set the arena count (``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES``
    ``glibc.malloc.arena_max``): theirs wins."""
    mallopt = _glibc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    user_set = "MALLOC_ARENA_MAX" in environ or "glibc.malloc.arena_max" in environ.get(
        "GLIBC_TUNABLES", ""
    )
    if mallopt is None or user_set:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``, every arena).

    glibc keeps freed memory inside its heaps; when large temporaries (fused probabilities, flow
    buffers) are freed between smaller live blocks, the pages stay resident although nothing
    leaks. Measured (docs/soak.md): an engine switching 4 streams off -> fuse -> off 10 times
    grew RssAnon 634 -> 890 MB, and stayed at 565 MB with a trim after each switch. True when
    pages were released; False when none were or the C library has no ``malloc_trim``."""
    trim = _glibc_function("malloc_trim", (ctypes.c_size_t,))
    return bool(trim(0)) if trim is not None else False


class HeapTrimmer:
    """Calls :func:`release_free_heap` at most once per ``period_s`` (5-21 ms a call with a
    600 MB heap, measured on a 2-core EPYC: 0.2 % of a core at most). ``clock``: seconds."""

    def __init__(self, period_s: float = HEAP_TRIM_PERIOD_S, clock=time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._last = clock()
        self.calls = 0

    def maybe_release(self) -> bool:
        """Trim when the period has passed since the last trim; True when it trimmed."""
        now = self._clock()
        if now - self._last < self.period_s:
            return False
        self._last = now
        self.calls += 1
        release_free_heap()
        return True
