"""Shared fixtures: the ../shared verification data (skipped with a reason when absent)."""

from __future__ import annotations

import pytest

from video_seg_ros.shared_data import shared_dir


@pytest.fixture(scope="session")
def shared():
    """Path of ../shared (or $VIDEO_SEG_SHARED); skips the test when it is not there."""
    path = shared_dir()
    if path is None:
        pytest.skip("verification data not found: set VIDEO_SEG_SHARED or place ../shared beside the repo")
    return path


def require_shared_file(shared, relative: str):
    """Path of a file inside ../shared, skipping the test when that file is missing."""
    path = shared / relative
    if not path.exists():
        pytest.skip(f"{relative} is not in the shared data folder")
    return path
