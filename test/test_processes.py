"""video_seg_ros.processes with real child processes (small Python scripts): ready lines, timeouts,
the SIGINT -> SIGTERM -> SIGKILL escalation and exit codes."""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import pytest

from video_seg_ros.processes import LoggedProcess, ProcessFailed, Supervisor


def _script(body: str) -> list[str]:
    """A Python child that runs ``body``; ``say(text)`` prints a line at once. SIGINT raises
    KeyboardInterrupt even where the test runner was started with SIGINT ignored (a background
    job of a non-interactive shell), which Python would otherwise inherit."""
    prelude = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def say(text):\n    print(text, flush=True)\n"
    )
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


def test_wait_for_line_returns_the_ready_line_once_it_is_complete(tmp_path):
    process = LoggedProcess(
        _script("""
        say("loading")
        sys.stdout.write("rea"); sys.stdout.flush(); time.sleep(0.3)
        say("dy: listening on 3 topics")
        time.sleep(60)
    """),
        tmp_path / "child.log",
    )
    try:
        assert process.wait_for_line(r"^ready:", timeout=20) == "ready: listening on 3 topics"
        assert process.alive()
        # A later wait looks only after the line already returned.
        assert process.wait_for_line(r"^ready:", timeout=0.3) is None
    finally:
        assert process.stop(timeout=10) == -signal.SIGINT  # uncaught KeyboardInterrupt
    assert "loading" in process.output()


def test_wait_for_line_times_out_with_the_process_still_running(tmp_path):
    process = LoggedProcess(_script('say("starting"); time.sleep(60)'), tmp_path / "slow.log")
    try:
        started = time.monotonic()
        assert process.wait_for_line("ready", timeout=0.5) is None
        assert time.monotonic() - started >= 0.5
        assert process.alive()
    finally:
        process.stop(timeout=10)


def test_a_process_that_exits_before_its_ready_line_raises_with_its_code_and_log(tmp_path):
    process = LoggedProcess(
        _script('say("cannot load the model"); sys.exit(3)'), tmp_path / "node.log"
    )
    with pytest.raises(ProcessFailed) as raised:
        process.wait_for_line("ready", timeout=30)
    assert raised.value.code == 3 and raised.value.name == "node"
    assert "cannot load the model" in str(raised.value)
    process.stop()


def test_stop_ends_a_process_that_handles_sigint_with_sigint_alone(tmp_path):
    process = LoggedProcess(
        _script("""
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
        say("ready"); time.sleep(60)
    """),
        tmp_path / "polite.log",
    )
    assert process.wait_for_line("ready", 20)
    assert process.stop(timeout=10) == 0
    assert process.signals_sent == [signal.SIGINT]


def test_stop_escalates_to_sigterm_then_sigkill(tmp_path):
    ignores_sigint = LoggedProcess(
        _script("""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("ready"); time.sleep(60)
    """),
        tmp_path / "deaf.log",
    )
    ignores_both = LoggedProcess(
        _script("""
        signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("ready"); time.sleep(60)
    """),
        tmp_path / "stubborn.log",
    )
    for process in (ignores_sigint, ignores_both):
        assert process.wait_for_line("ready", 20)
    assert ignores_sigint.stop(timeout=0.5) == -signal.SIGTERM
    assert ignores_sigint.signals_sent == [signal.SIGINT, signal.SIGTERM]
    assert ignores_both.stop(timeout=0.5) == -signal.SIGKILL
    assert ignores_both.signals_sent == [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
    # Starting lower in the chain skips the gentler signals.
    killed = LoggedProcess(_script("time.sleep(60)"), tmp_path / "killed.log")
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL and killed.signals_sent == [
        signal.SIGKILL
    ]


def test_supervisor_fails_fast_when_another_process_dies_during_start_up(tmp_path):
    with Supervisor(tmp_path / "logs") as supervisor:
        supervisor.start("recorder", _script('say("waiting for the node"); time.sleep(60)'))
        supervisor.start("node", _script('say("bad checkpoint"); sys.exit(1)'))
        started = time.monotonic()
        with pytest.raises(ProcessFailed) as raised:
            supervisor.wait_for_line("recorder", "^ready", timeout=30)
        assert time.monotonic() - started < 20  # did not sit out the timeout
        assert raised.value.name == "node" and raised.value.code == 1
        assert "bad checkpoint" in raised.value.tail
        assert (tmp_path / "logs" / "node.log").is_file()
    # Leaving the block stopped the recorder (SIGTERM) and kept both codes.
    assert supervisor.exit_codes == {"recorder": -signal.SIGTERM, "node": 1}
    assert not supervisor.processes["recorder"].alive()


def test_supervisor_reports_every_exit_code_and_stops_in_reverse_order(tmp_path):
    with Supervisor(tmp_path / "logs") as supervisor:
        order = tmp_path / "order.txt"
        for name in ("first", "second"):
            supervisor.start(
                name,
                _script(f"""
                def stop(*_):
                    open({str(order)!r}, "a").write("{name}\\n"); sys.exit(0)
                signal.signal(signal.SIGINT, stop)
                say("ready"); time.sleep(60)
            """),
            )
        supervisor.start("worker", _script('say("ready"); sys.exit(5)'))
        assert supervisor.wait("worker", 30) == 5
        for name in ("first", "second"):
            assert supervisor.processes[name].wait_for_line("ready", 20)
        codes = supervisor.stop_all(timeout=10)
    assert codes == {"worker": 5, "second": 0, "first": 0}
    assert order.read_text().split() == ["second", "first"]
    with pytest.raises(ValueError):
        supervisor.start("first", _script("pass"))
