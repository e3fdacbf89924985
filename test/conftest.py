"""Shared fixtures: the ../shared verification data (skipped with a reason when absent) and the
one tiny ESPNet checkpoint every test that needs "some model" uses."""

from __future__ import annotations

import os

import pytest

from checkpoints import make_tiny_espnet_checkpoint
from shared_data import shared_dir


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


@pytest.fixture(scope="session")
def tiny_espnet_checkpoint(tmp_path_factory):
    """Path of a saved random-init ESPNet (p=2, q=3, 20 outputs, Cityscapes classes, input 64x32).

    Built once per session; tests that need other settings call
    ``checkpoints.make_tiny_espnet_checkpoint(path, size=..., ...)``.
    """
    return make_tiny_espnet_checkpoint(tmp_path_factory.mktemp("tiny_espnet") / "tiny_espnet.pt")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models: one thread is fastest and immune to a busy machine's scheduling. Modules use
    it with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def private_conversion_cache(tmp_path_factory):
    """Engines built without ``cache_dir`` (also in node processes, which inherit the variable)
    cache conversions and precision decisions in a session folder, never in the user's ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
