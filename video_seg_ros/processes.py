"""Child processes with their output in a log file: the demo's pipeline and the ROS tests use it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


class LoggedProcess:
    """``command`` started in the background; stdout and stderr go to ``log_path``."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None):
        self.command = list(command)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=None if cwd is None else str(cwd))

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send ``sig``, wait for the exit (kill after ``timeout``), return the exit code."""
        if self.alive():
            self.process.send_signal(sig)
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def _interrupt(*_):
    raise KeyboardInterrupt


def install_stop_handlers() -> dict[int, object]:
    """Make Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt in the main thread.

    Python's own SIGINT handler is set explicitly: a process started in the background by a shell
    inherits SIGINT as ignored. Returns the previous handlers for :func:`restore_handlers`.
    """
    return {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}


def restore_handlers(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`install_stop_handlers` returned."""
    for signum, handler in previous.items():
        if handler is not None:  # None: the handler was not set from Python; nothing to restore
            signal.signal(signum, handler)
