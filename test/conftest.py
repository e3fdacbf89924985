"""Shared fixtures and the test markers.

Markers (registered in setup.cfg, ``--strict-markers``): ``ros`` (real rclpy: node processes or
rclpy nodes spun in the test), ``slow`` (tens of seconds or more on a 2-core CPU), ``openvino``
(needs the OpenVINO runtime), ``shared`` (needs the ../shared verification data; a test that takes
the ``shared`` fixture is marked by :func:`pytest_collection_modifyitems`). ``make test`` runs them
all; ``pytest -m "not slow and not ros"`` is the quick loop. The session ends with the number of
collected tests per marker.
"""

from __future__ import annotations

import os

import pytest

from checkpoints import make_tiny_espnet_checkpoint, random_memory_checkpoint, tiny_espnet
from shared_data import shared_dir

MARKERS = ("ros", "slow", "openvino", "shared")


@pytest.fixture(scope="session")
def shared():
    """Path of ../shared (or $VIDEO_SEG_SHARED); skips the test when it is not there."""
    path = shared_dir()
    if path is None:
        pytest.skip(
            "verification data not found: set VIDEO_SEG_SHARED or place ../shared beside the repo"
        )
    return path


@pytest.fixture(scope="session")
def tiny_espnet_checkpoint(tmp_path_factory):
    """Path of a saved random-init ESPNet (p=2, q=3, 20 outputs, Cityscapes classes, input 64x32).

    Built once per session; tests that need other settings call
    ``checkpoints.make_tiny_espnet_checkpoint(path, size=..., ...)``.
    """
    return make_tiny_espnet_checkpoint(tmp_path_factory.mktemp("tiny_espnet") / "tiny_espnet.pt")


@pytest.fixture(scope="module")
def confident():
    """A tiny ESPNet (input 64x32) whose classifier is scaled 300x: mean max softmax ~0.7 instead
    of ~0.05, peaked as a trained model's (temporal fusion tests)."""
    checkpoint = tiny_espnet(size=(64, 32))
    checkpoint.state_dict["classifier.weight"] = checkpoint.state_dict["classifier.weight"] * 300.0
    return checkpoint


@pytest.fixture(scope="module")
def memory_checkpoint():
    """The tiny ESPNet with a random LMANet memory (``checkpoints.random_memory_checkpoint``);
    test modules that need another one define their own."""
    return random_memory_checkpoint()


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


@pytest.fixture(scope="session", autouse=True)
def no_stale_dds_segments():
    """Node processes a test had to kill (SIGKILL) leave their Fast DDS segment (64 MB) in
    /dev/shm: remove those at the end, so that repeated runs do not fill the machine's memory."""
    from video_seg_ros.ros.dds import remove_stale_shared_memory

    yield
    remove_stale_shared_memory()


def pytest_collection_modifyitems(config, items):
    """Mark every test that takes the ``shared`` fixture (nothing to forget), and keep the
    collected tests for the per-marker counts of the closing summary."""
    for item in items:
        if "shared" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
    config.stash[_COLLECTED] = list(items)


_COLLECTED = pytest.StashKey[list]()


def marker_counts(items) -> dict[str, int]:
    """Collected tests per registered marker, and how many carry none of them."""
    counts = dict.fromkeys((*MARKERS, "unmarked"), 0)
    for item in items:
        names = {mark.name for mark in item.iter_markers()} & set(MARKERS)
        for name in names:
            counts[name] += 1
        if not names:
            counts["unmarked"] += 1
    return counts


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    items = config.stash.get(_COLLECTED, [])
    if not items:
        return
    counts = marker_counts(items)
    terminalreporter.write_sep("-", "collected tests per marker")
    terminalreporter.write_line(
        ", ".join(f"{name} {count}" for name, count in counts.items())
        + f" (of {len(items)} collected; a test may carry several)"
    )
