"""Locating the verification data folder (``../shared``) beside a developer checkout.

A developer helper for the tests and benchmarks (bench/ imports it too), not part of the package.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """``$VIDEO_SEG_SHARED`` when set, else ``../shared`` beside the repository; None if absent."""
    env = os.environ.get("VIDEO_SEG_SHARED")
    candidate = Path(env) if env else _REPO_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


def require_shared_file(shared: Path, relative: str) -> Path:
    """Path of a file inside ../shared, skipping the test when that file is missing."""
    import pytest

    path = shared / relative
    if not path.exists():
        pytest.skip(f"{relative} is not in the shared data folder")
    return path
