"""Child processes with their output in a log file, and a small supervisor for several of them.

The demo's pipeline (node, recorder, player) and the ROS tests use it. No ROS import here.

- :class:`LoggedProcess`: one command in the background, stdout+stderr in a log file, a ready line
  waited for with a timeout, and a stop that escalates SIGINT -> SIGTERM -> SIGKILL.
- :class:`Supervisor`: named processes started in order, logs in one folder, a ready wait that
  fails fast when any of them dies, stopped in reverse order with every exit code reported.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

#: The stop escalation: each signal is sent only if the previous one did not end the process.
ESCALATION = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


class ProcessFailed(RuntimeError):
    """A supervised process exited when it should still be running (or with a non-zero code)."""

    def __init__(self, name: str, code: int | None, log_path: Path, tail: str, when: str = ""):
        self.name, self.code, self.log_path, self.tail = name, code, Path(log_path), tail
        when = f" {when}" if when else ""
        super().__init__(f"{name} exited with code {code}{when}; its log ({log_path}):\n{tail}")


class LoggedProcess:
    """``command`` started in the background; stdout and stderr go to ``log_path``."""

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str | None = None,
    ):
        self.command = list(command)
        self.log_path = Path(log_path)
        self.name = name or self.log_path.stem
        #: every signal :meth:`stop` sent, in order (the escalation actually taken)
        self.signals_sent: list[int] = []
        self._log = open(self.log_path, "wb")
        self._scanned = 0  # bytes of the log already searched by wait_for_line
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=None if cwd is None else str(cwd),
        )

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def find_line(self, pattern: str | re.Pattern) -> str | None:
        """The first complete line printed since the last match that contains ``pattern`` (a
        regular expression), or None. Later calls look only at lines after the one returned."""
        regex = re.compile(pattern)
        data = self.log_path.read_bytes()
        end = data.rfind(b"\n") + 1  # a line still being written is looked at next time
        for raw in data[self._scanned : end].splitlines(keepends=True):
            self._scanned += len(raw)
            line = raw.decode(errors="replace").rstrip("\r\n")
            if regex.search(line):
                return line
        return None

    def wait_for_line(
        self, pattern: str | re.Pattern, timeout: float, interval: float = 0.05
    ) -> str | None:
        """Wait until the process prints a line matching ``pattern``: the line, or None after
        ``timeout`` s. Raises :class:`ProcessFailed` if the process exits without printing it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()  # checked before reading, so the last output is seen
            line = self.find_line(pattern)
            if line is not None:
                return line
            if exited:
                raise ProcessFailed(
                    self.name, self.returncode, self.log_path, self.tail(), "before it was ready"
                )
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send ``sig``, wait up to ``timeout`` s, then escalate along SIGINT -> SIGTERM ->
        SIGKILL (waiting at most 5 s after each later signal); return the exit code."""
        steps = ESCALATION[ESCALATION.index(sig) :] if sig in ESCALATION else (sig, signal.SIGKILL)
        for number, step in enumerate(steps):
            if not self.alive():
                break
            self.signals_sent.append(step)
            self.process.send_signal(step)
            self.wait(timeout if number == 0 else min(timeout, 5.0))
        self._log.close()
        return self.process.returncode


class Supervisor:
    """Named processes with their logs in ``log_dir/<name>.log``, all sharing ``env`` and ``cwd``.

    A context manager: leaving it stops whatever still runs (reverse start order), so an error
    or Ctrl-C in the caller leaves no child behind. :attr:`exit_codes`: each ended one's code.
    """

    def __init__(
        self, log_dir: Path, env: dict[str, str] | None = None, cwd: str | Path | None = None
    ):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env, self.cwd = env, cwd
        self.processes: dict[str, LoggedProcess] = {}
        self.exit_codes: dict[str, int] = {}

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all(signal.SIGTERM, timeout=5.0)

    def start(self, name: str, command: list[str]) -> LoggedProcess:
        if name in self.processes:
            raise ValueError(f"a process named {name!r} was started already")
        process = LoggedProcess(
            command, self.log_dir / f"{name}.log", self.env, self.cwd, name=name
        )
        self.processes[name] = process
        return process

    def check_running(self, when: str = "") -> None:
        """Raise :class:`ProcessFailed` for the first process that is no longer running."""
        for name, process in self.processes.items():
            if name not in self.exit_codes and not process.alive():
                raise ProcessFailed(
                    name, process.returncode, process.log_path, process.tail(), when
                )

    def wait_for_line(
        self, name: str, pattern: str | re.Pattern, timeout: float, interval: float = 0.1
    ) -> str | None:
        """Wait for ``name`` to print a line matching ``pattern``: the line, or None after
        ``timeout`` s. Raises :class:`ProcessFailed` as soon as any supervised process exits."""
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while True:
            self.check_running("during start-up")
            line = process.find_line(pattern)
            if line is not None:
                return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def wait(self, name: str, timeout: float) -> int | None:
        """``name``'s exit code once it exited by itself (kept), or None after ``timeout`` s."""
        code = self.processes[name].wait(timeout)
        if code is not None:
            self.exit_codes[name] = self.processes[name].stop()  # closes its log
        return code

    def stop(self, name: str, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        if name not in self.exit_codes:
            self.exit_codes[name] = self.processes[name].stop(sig, timeout)
        return self.exit_codes[name]

    def stop_all(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> dict[str, int]:
        """Stop every process still running, the last started first; every exit code by name."""
        for name in reversed(list(self.processes)):
            self.stop(name, sig, timeout)
        return dict(self.exit_codes)


def _interrupt(*_):
    raise KeyboardInterrupt


def install_stop_handlers() -> dict[int, object]:
    """Make Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt in the main thread.

    Python's own SIGINT handler is set explicitly: a process started in the background by a shell
    inherits SIGINT as ignored. Returns the previous handlers for :func:`restore_handlers`.
    """
    return {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt),
    }


def restore_handlers(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`install_stop_handlers` returned."""
    for signum, handler in previous.items():
        if handler is not None:  # None: the handler was not set from Python; nothing to restore
            signal.signal(signum, handler)
