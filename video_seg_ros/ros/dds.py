"""The Fast DDS large-image profile: where it is and how a process opts into it (no rclpy import).

Fast DDS's default shared-memory segment (0.5 MB) loses most full-resolution frames between
processes. config/fastdds_large_images.xml enlarges it; every process of the pipeline must load
it, through the ``FASTDDS_DEFAULT_PROFILES_FILE`` environment variable read when the first ROS
participant is created. The node, the bag tools and the benchmarks call
:func:`use_large_image_profile` before ``rclpy.init``; a profile the user set already wins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from video_seg_ros.config_files import config_candidates, config_path  # noqa: F401 (re-exported)

PROFILE_FILE_NAME = "fastdds_large_images.xml"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
_LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"


def fastdds_profile_path() -> Path | None:
    """The installed profile (ament share dir), else the one in this source checkout."""
    return config_path(PROFILE_FILE_NAME)


def large_image_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default os.environ) that loads the profile, unless one is set already."""
    env = dict(os.environ if env is None else env)
    if not env.get(PROFILE_ENV) and not env.get(_LEGACY_PROFILE_ENV):
        profile = fastdds_profile_path()
        if profile is not None:
            env[PROFILE_ENV] = str(profile)
    return env


def use_large_image_profile() -> str | None:
    """Apply :func:`large_image_environment` to this process; returns the profile in effect."""
    os.environ.update(large_image_environment())
    return os.environ.get(PROFILE_ENV) or os.environ.get(_LEGACY_PROFILE_ENV)


def ros_process_environment(domain_id: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child ROS process: a private domain, Fast DDS with the profile and
    unbuffered output. The package must be importable by the child as it is installed (a colcon
    workspace's setup script, or ``pip install -e .`` in a checkout); nothing is added to
    PYTHONPATH here."""
    env = large_image_environment(env)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; the domain id isolates the processes
    return env


#: Where Fast DDS keeps its shared-memory segments and port files (Linux).
SHARED_MEMORY_DIR = Path("/dev/shm")
_SEGMENT = re.compile(r"fastdds_(?:[0-9a-f]{16}|port\d+)")


def stale_shared_memory(directory: Path = SHARED_MEMORY_DIR) -> list[str]:
    """Names of the Fast DDS segments in ``directory`` that no process holds any more.

    A live participant keeps a lock on ``<segment>_el``; a process killed (SIGKILL, a crash)
    never removes its segment, 64 MB each with the large-image profile, and tmpfs fills up."""
    import fcntl  # POSIX only, as /dev/shm is

    stale = []
    for lock_path in sorted(directory.glob("fastdds_*_el")):
        name = lock_path.name[: -len("_el")]
        if not _SEGMENT.fullmatch(name):
            continue
        try:
            with open(lock_path, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while an owner lives
                fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError:
            continue
        stale.append(name)
    return stale


def remove_stale_shared_memory(directory: Path = SHARED_MEMORY_DIR) -> int:
    """Delete what :func:`stale_shared_memory` finds (segment, lock and port mutex files, as
    ``fastdds shm clean`` does, without its psutil); returns how many segments went."""
    removed = 0
    for name in stale_shared_memory(directory):
        for path in (directory / name, directory / f"{name}_el", directory / f"sem.{name}_mutex"):
            path.unlink(missing_ok=True)
        removed += 1
    return removed
