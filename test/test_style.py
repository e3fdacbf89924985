"""Style gate: ``ruff check`` (E, F, W at 99 columns, ruff.toml) and ``ruff format --check`` on the
whole repository, as ``make lint`` runs them. A failure lists every offending file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ruff", reason="ruff is not installed (requirements.txt pins it)")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_finds_nothing():
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, "ruff check (make lint):\n" + result.stdout + result.stderr


def test_every_file_is_ruff_formatted():
    result = _ruff("format", "--check", ".")
    unformatted = [
        line for line in result.stdout.splitlines() if line.startswith("Would reformat")
    ]
    assert result.returncode == 0, (
        "run `ruff format` on:\n" + "\n".join(unformatted) + "\n" + result.stderr
    )
