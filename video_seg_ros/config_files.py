"""Where the package's ``config/`` files are: the installed share folder or this source
checkout."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "video_seg_ros"


def config_candidates(name: str) -> list[Path]:
    """Where ``config/<name>`` may be, in search order: the installed package (ament share dir),
    this source checkout, then ``sys.prefix``/share (a pip-installed copy)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / name)
    except Exception:  # no ament_index, no AMENT_PREFIX_PATH (plain venv) or package not installed
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "config" / name)
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "config" / name)
    return candidates


def config_path(name: str) -> Path | None:
    """The first existing file of :func:`config_candidates`, or None."""
    return next((path for path in config_candidates(name) if path.is_file()), None)


def config_file(name: str) -> Path:
    """Like :func:`config_path`, but raises FileNotFoundError listing where it looked."""
    path = config_path(name)
    if path is None:
        raise FileNotFoundError(
            f"config/{name} not found (looked in "
            f"{', '.join(map(str, config_candidates(name)))}); reinstall the package"
        )
    return path
