"""The Fast DDS large-image profile: where it is and how a process opts into it (no rclpy import).

Fast DDS's default shared-memory segment (0.5 MB) loses most full-resolution frames between
processes. config/fastdds_large_images.xml enlarges it; every process of the pipeline must load
it, through the ``FASTDDS_DEFAULT_PROFILES_FILE`` environment variable read when the first ROS
participant is created. The node, the bag tools and the benchmarks call
:func:`use_large_image_profile` before ``rclpy.init``; a profile the user set already wins.
"""

from __future__ import annotations

import os
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
