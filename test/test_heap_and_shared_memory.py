"""Long-running processes give memory back: glibc's free heap pages (RSS must not ratchet over
hours of changing temporaries) and Fast DDS segments of processes that died (tmpfs in /dev/shm)."""

from __future__ import annotations

import fcntl
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from video_seg_ros.ros.dds import remove_stale_shared_memory, stale_shared_memory
from video_seg_ros.runtime import NODE_MALLOC_ARENAS, HeapTrimmer, limit_malloc_arenas

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")

# Fills the heap with 8 KB blocks (below the mmap threshold), frees all but every 64th (which pin
# the heap, so free() alone cannot shrink it), then reports RssAnon before and after the release.
FRAGMENTED_HEAP = textwrap.dedent(
    """
    from video_seg_ros.runtime import release_free_heap

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                return int(line.split()[1])

    blocks = [b"\\x01" * 8192 for _ in range(25000)]
    kept = blocks[::64]
    del blocks
    before = anon_kb()
    released = release_free_heap()
    print(before, anon_kb(), released)
    """
)


@glibc_only
def test_release_free_heap_returns_the_pages_that_free_keeps():
    result = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    before_kb, after_kb, released = result.stdout.split()
    freed_mb = (int(before_kb) - int(after_kb)) / 1024
    # ~195 MB were freed between the kept blocks; free() returned none of it
    assert released == "True" and freed_mb > 100, result.stdout


# Six threads each allocate while all are alive, then the process counts glibc's heaps (one per
# arena) in malloc_info(): each new thread gets an arena of its own unless the count is capped.
ARENAS_OF_SIX_THREADS = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from video_seg_ros.runtime import limit_malloc_arenas

    applied = limit_malloc_arenas() if sys.argv[1] == "limited" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    all_allocated = threading.Barrier(7)

    def allocate():
        libc.malloc(4096)
        all_allocated.wait()
        all_allocated.wait()  # alive until the count is taken

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for thread in threads:
        thread.start()
    all_allocated.wait()
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        heaps = open(report.name).read().count("<heap nr=")
    all_allocated.wait()
    print(applied, heaps)
    """
)


@glibc_only
@pytest.mark.parametrize("mode", ["default", "limited"])
def test_the_node_caps_glibc_arenas_that_threads_would_each_get(mode):
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environment.pop("GLIBC_TUNABLES", None)
    result = subprocess.run(
        [sys.executable, "-c", ARENAS_OF_SIX_THREADS, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    applied, heaps = result.stdout.split()
    if mode == "limited":
        assert applied == "True" and int(heaps) <= NODE_MALLOC_ARENAS, result.stdout
    else:
        assert int(heaps) > NODE_MALLOC_ARENAS, result.stdout  # the main arena and one a thread


@glibc_only
def test_a_user_set_arena_count_wins():
    assert limit_malloc_arenas(environ={"MALLOC_ARENA_MAX": "8"}) is False
    assert limit_malloc_arenas(environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False


def test_the_heap_trimmer_releases_at_most_once_a_period():
    now = [0.0]
    trimmer = HeapTrimmer(period_s=30.0, clock=lambda: now[0])
    outcomes = []
    for now[0] in (1.0, 29.9, 30.0, 45.0, 59.9, 60.1, 200.0):
        outcomes.append(trimmer.maybe_release())
    assert outcomes == [False, False, True, False, False, True, True]
    assert trimmer.calls == 3


def _segment(directory: Path, name: str) -> None:
    (directory / name).write_bytes(b"\0" * 64)
    (directory / f"{name}_el").touch()


def test_only_segments_without_a_live_owner_are_stale(tmp_path):
    _segment(tmp_path, "fastdds_0123456789abcdef")  # its owner died
    _segment(tmp_path, "fastdds_port7411")
    (tmp_path / "sem.fastdds_port7411_mutex").touch()
    _segment(tmp_path, "fastdds_fedcba9876543210")  # alive: its lock is held
    (tmp_path / "unrelated_el").touch()
    with open(tmp_path / "fastdds_fedcba9876543210_el", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        assert stale_shared_memory(tmp_path) == ["fastdds_0123456789abcdef", "fastdds_port7411"]
        assert remove_stale_shared_memory(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fastdds_fedcba9876543210",
        "fastdds_fedcba9876543210_el",
        "unrelated_el",
    ]
