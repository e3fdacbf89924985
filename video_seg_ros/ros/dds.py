"""The Fast DDS large-image profile: where it is and how a process opts into it (no rclpy import).

Fast DDS's default shared-memory segment (0.5 MB) loses most full-resolution frames between
processes. config/fastdds_large_images.xml enlarges it; every process of the pipeline must load
it, through the ``FASTDDS_DEFAULT_PROFILES_FILE`` environment variable read when the first ROS
participant is created. The node, the bag tools and the benchmarks call
:func:`use_large_image_profile` before ``rclpy.init``; a profile the user set already wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILE_FILE_NAME = "fastdds_large_images.xml"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
_LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"


def config_candidates(name: str) -> list[Path]:
    """Where ``config/<name>`` may be, in search order: the installed package (ament share dir),
    this source checkout, then ``sys.prefix``/share (a pip-installed copy)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("video_seg_ros")) / "config" / name)
    except Exception:  # no ament_index, no AMENT_PREFIX_PATH (plain venv) or package not installed
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "config" / name)
    candidates.append(Path(sys.prefix) / "share" / "video_seg_ros" / "config" / name)
    return candidates


def config_path(name: str) -> Path | None:
    """The first existing file of :func:`config_candidates`, or None."""
    return next((path for path in config_candidates(name) if path.is_file()), None)


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
    """Environment for a child ROS process: a private domain, Fast DDS with the profile, unbuffered
    output, and this package importable (a source checkout as well as an installed copy)."""
    env = large_image_environment(env)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["PYTHONUNBUFFERED"] = "1"
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; the domain id isolates the processes
    return env
