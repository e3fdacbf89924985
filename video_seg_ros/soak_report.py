"""The soak bench's arithmetic and report, without ROS (bench/soak.py drives the node).

- Frame accounting: per camera, every published frame must be counted by the node as exactly one
  of processed, rejected, dropped (keep-latest) or skipped (no subscriber):
  :func:`counters_from_values`, :class:`CounterTotals` (the node's counters start again at 0 after
  a lifecycle cleanup/configure), :func:`account`.
- Latency windows: :func:`run_windows` (first and last 10 % of the run), :func:`window_latency`.
- Resources: :func:`reference_time` (the 10th minute, or 10 % of a short run),
  :func:`resource_summary` (RSS first/last/max and growth, fds and threads).
- Faults: :class:`FaultEvent`, :func:`default_schedule`, :func:`worst_status`,
  :func:`counter_changes`, :class:`FaultResult`.
- :func:`failures` (why the run fails, if it does) and :func:`format_report` (the one table).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from video_seg_ros.stats import percentile

#: The bench's counter names and the node's diagnostics keys they are read from.
COUNTER_KEYS = {
    "received": "received",
    "processed": "processed",
    "rejected": "rejected",
    "dropped": "dropped",
    "skipped": "skipped_no_subscriber",
}
#: The four ways a received frame ends; each frame ends in exactly one of them.
OUTCOMES = ("processed", "rejected", "dropped", "skipped")
#: diagnostic_msgs/DiagnosticStatus levels.
LEVEL_NAMES = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}

#: Every fault the bench can inject, in the order a default schedule uses them.
FAULT_KINDS = (
    "camera_stop",  # a camera stops for longer than diagnostics_stale_s, then comes back
    "bag_loop",  # a camera's bag loops now: stamps jump backwards
    "size_change",  # a camera's frames change size for a while
    "malformed_burst",  # malformed Image messages interleaved with a camera's good frames
    "reset_camera",  # ~/<camera>/reset
    "reset_all",  # ~/reset
    "subscriber_leave",  # the camera's only output subscriber leaves, then returns
    "parameter_change",  # temporal_mode changed at run time, changed back at the end
    "lifecycle_deactivate",  # deactivate, activate
    "lifecycle_cleanup",  # deactivate, cleanup, configure, activate
)
#: Faults of the whole node (every camera), not of one camera.
NODE_FAULTS = ("reset_all", "parameter_change", "lifecycle_deactivate", "lifecycle_cleanup")
LIFECYCLE_FAULTS = ("lifecycle_deactivate", "lifecycle_cleanup")


# ---- frame accounting -----------------------------------------------------------------------
def counters_from_values(values: dict[str, str]) -> dict[str, int]:
    """The bench's counters from one camera's diagnostics key/values (text)."""
    return {name: int(float(values.get(key) or 0)) for name, key in COUNTER_KEYS.items()}


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTER_KEYS, 0)


class CounterTotals:
    """Per camera counters summed over the node's configure epochs.

    A lifecycle cleanup/configure builds the cameras again and their counters start from 0; a
    sample whose ``received`` is below the previous one's starts a new epoch, and the previous
    epoch's last counters are kept in a base added to every later sample. Feed samples in the
    node's order (the bench drops diagnostics older than the newest it has).
    """

    def __init__(self):
        self._base: dict[str, dict[str, int]] = {}
        self._last: dict[str, dict[str, int]] = {}
        self.epochs: dict[str, int] = {}

    def update(self, camera: str, counters: dict[str, int]) -> None:
        last = self._last.get(camera)
        if last is not None and counters["received"] < last["received"]:
            base = self._base.setdefault(camera, _zero())
            for name in COUNTER_KEYS:
                base[name] += last[name]
            self.epochs[camera] = self.epochs.get(camera, 1) + 1
        self.epochs.setdefault(camera, 1)
        self._last[camera] = dict(counters)

    def total(self, camera: str) -> dict[str, int]:
        base = self._base.get(camera, _zero())
        last = self._last.get(camera, _zero())
        return {name: base[name] + last[name] for name in COUNTER_KEYS}

    def cameras(self) -> list[str]:
        return list(self._last)


def account(published: int, counters: dict[str, int]) -> dict[str, int]:
    """``lost``: published frames no outcome counter accounts for (must be 0 once the node is
    idle); ``in_node``: received but not yet counted as an outcome (0 once idle: the node's own
    received == processed + rejected + dropped + skipped); ``undelivered``: published but not
    received."""
    accounted = sum(counters[name] for name in OUTCOMES)
    return {
        "lost": published - accounted,
        "in_node": counters["received"] - accounted,
        "undelivered": published - counters["received"],
    }


# ---- latency windows ------------------------------------------------------------------------
def run_windows(duration_s: float, share: float = 0.10) -> dict[str, tuple[float, float]]:
    """The first and the last ``share`` of a run of ``duration_s`` seconds (run time)."""
    span = duration_s * share
    return {"first": (0.0, span), "last": (duration_s - span, duration_s)}


def window_latency(
    samples: list[tuple[float, float]],
    window: tuple[float, float],
    excluded: list[tuple[float, float]] = (),
) -> dict:
    """p50/p95 (ms) and count of ``samples`` ``(published_at_s, latency_ms)`` published within
    ``window`` (start inclusive, end exclusive) and outside every ``excluded`` interval."""
    start, end = window
    values = [
        latency
        for at, latency in samples
        if start <= at < end and not any(a <= at <= b for a, b in excluded)
    ]
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "count": len(values),
    }


def latency_ratio(first: dict, last: dict) -> float | None:
    """Last window's p50 over the first window's (None without both)."""
    if not first.get("p50_ms") or last.get("p50_ms") is None:
        return None
    return last["p50_ms"] / first["p50_ms"]


# ---- resources ------------------------------------------------------------------------------
def reference_time(duration_s: float, minute: float = 10.0, share: float = 0.10) -> float:
    """When the RSS reference is taken: the 10th minute, or 10 % into a run shorter than
    100 minutes (the model, allocator pools and caches have settled by then)."""
    return min(minute * 60.0, duration_s * share)


def resource_summary(samples: list[dict], reference_s: float) -> dict:
    """RSS (kB), fds and threads at the reference point, at the end and the RSS maximum.

    ``samples``: ``{"t": run seconds, "rss_kb", "fds", "threads"}`` in time order. The reference
    is the last sample at or before ``reference_s`` (the first one when none is that early): the
    faults start at ``reference_s`` in a short run, and a sample taken while one runs (a cleanup
    releases the model) is no reference.
    """
    if not samples:
        return {}
    early = [s for s in samples if s["t"] <= reference_s]
    reference = early[-1] if early else samples[0]
    last = samples[-1]
    first_rss = reference["rss_kb"]
    return {
        "reference_t": reference["t"],
        "last_t": last["t"],
        "rss_first_kb": first_rss,
        "rss_last_kb": last["rss_kb"],
        "rss_max_kb": max(s["rss_kb"] for s in samples),
        # where the growth is: the heap (anon) or mapped files and DDS shared memory
        **{
            f"{part}_{end}_kb": sample[f"{part}_kb"]
            for part in ("rss_anon", "rss_file", "rss_shmem")
            for end, sample in (("first", reference), ("last", last))
            if f"{part}_kb" in sample
        },
        "rss_growth_percent": (last["rss_kb"] - first_rss) / first_rss * 100.0
        if first_rss
        else None,
        "fds_first": reference["fds"],
        "fds_last": last["fds"],
        "threads_first": reference["threads"],
        "threads_last": last["threads"],
    }


# ---- faults ---------------------------------------------------------------------------------
@dataclass
class FaultEvent:
    """A fault injected at ``at_s`` run seconds for ``duration_s`` (0: a single action);
    ``camera``: the one it hits ("" for the whole node)."""

    kind: str
    at_s: float
    duration_s: float = 0.0
    camera: str = ""


#: How long each kind lasts, as a function of the node's diagnostics_stale_s.
def fault_duration(kind: str, stale_s: float) -> float:
    if kind == "camera_stop":
        return 2.0 * stale_s + 2.0  # long enough to be reported STALE for a while
    if kind in ("size_change", "subscriber_leave", "malformed_burst"):
        return 8.0
    if kind == "parameter_change":
        return 15.0
    if kind in LIFECYCLE_FAULTS:
        return 3.0  # inactive (or unconfigured) for this long
    return 0.0


def default_schedule(
    duration_s: float,
    cameras: list[str],
    kinds: tuple[str, ...] | list[str] = FAULT_KINDS,
    stale_s: float = 3.0,
    every_s: float = 60.0,
    margin: float = 0.10,
) -> list[FaultEvent]:
    """Faults spread evenly over the middle of the run (the first and last ``margin`` stay
    clean: they are the latency windows), every kind at least once, one every ``every_s``
    seconds at most as often, kinds in turn and cameras in turn."""
    if not kinds:
        return []
    start, end = duration_s * margin, duration_s * (1.0 - margin)
    slots = max(len(kinds), int((end - start) // every_s))
    spacing = (end - start) / slots
    events, camera_turn = [], 0
    for slot in range(slots):
        kind = kinds[slot % len(kinds)]
        camera = ""
        if kind not in NODE_FAULTS:
            camera = cameras[camera_turn % len(cameras)]
            camera_turn += 1
        events.append(
            FaultEvent(
                kind, round(start + slot * spacing, 3), fault_duration(kind, stale_s), camera
            )
        )
    return events


def parse_fault_kinds(text: str) -> list[str]:
    """``all``, ``none`` or a comma-separated list of :data:`FAULT_KINDS`."""
    text = text.strip()
    if text == "all":
        return list(FAULT_KINDS)
    if text in ("", "none"):
        return []
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(
            f"unknown fault kind(s) {', '.join(unknown)}; use all, none or some of "
            + ", ".join(FAULT_KINDS)
        )
    return kinds


#: The node's message while all is well; any other message of the same level says more.
ROUTINE_MESSAGE = "segmenting at"


def worst_status(statuses: list[tuple[float, int, str]], start: float, end: float):
    """The most severe ``(t, level, message)`` within ``[start, end]``, or None: the highest
    level (STALE, 3, the camera said nothing at all, counts as the worst), among those a message
    other than the routine ``segmenting at ...`` (e.g. OK ``inference skipped``), the first."""
    within = [status for status in statuses if start <= status[0] <= end]
    return max(within, key=status_rank) if within else None


def status_rank(status: tuple[float, int, str]) -> tuple:
    """Sort key of :func:`worst_status`: level, then a telling message, then the earliest."""
    return status[1], not status[2].startswith(ROUTINE_MESSAGE), -status[0]


def counter_changes(
    before: dict[str, str],
    after: dict[str, str],
    prefixes: tuple[str, ...] = ("resets_", "rejected_"),
) -> dict[str, int]:
    """How much each ``resets_*`` / ``rejected_*`` diagnostics counter grew between two
    samples of one camera (a counter below its earlier value started again: a new epoch)."""
    changes = {}
    for key, value in after.items():
        if not key.startswith(prefixes) or not str(value).isdigit():
            continue
        earlier = int(before[key]) if str(before.get(key, "")).isdigit() else 0
        now = int(value)
        grew = now - earlier if now >= earlier else now
        if grew:
            changes[key] = grew
    return changes


@dataclass
class FaultResult:
    """What happened to one fault: when it ran (run seconds), what the node said, how long the
    cameras took to answer again after it ended (``recovered_s``; None: not within the timeout),
    and notes (counter changes, service answers)."""

    event: FaultEvent
    started_s: float | None = None
    ended_s: float | None = None
    recovered_s: float | None = None
    level: int | None = None
    message: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# ---- verdict and report ---------------------------------------------------------------------
@dataclass
class Limits:
    """What makes a run fail (see :func:`failures`). ``max_latency_ratio`` 0 disables the
    latency check."""

    max_rss_growth_percent: float = 5.0
    max_latency_ratio: float = 1.1
    recover_timeout_s: float = 60.0


def failures(summary: dict, limits: Limits) -> list[str]:
    """Why the run failed (empty: it passed). ``summary``: ``cameras`` (name -> row with
    ``published`` and the counters, ``lost``, ``in_node``, ``latency_ratio``), ``resources``
    (:func:`resource_summary`), ``faults`` (:class:`FaultResult` dicts), ``node_alive``,
    ``node_exit_code``."""
    problems = []
    if not summary.get("node_alive", True):
        problems.append("the node died during the run")
    code = summary.get("node_exit_code")
    if code not in (0, None):
        problems.append(f"the node exited with code {code}")
    for camera, row in summary.get("cameras", {}).items():
        if row["lost"]:
            problems.append(f"{camera}: {row['lost']} frame(s) unaccounted for")
        if row["in_node"]:
            problems.append(
                f"{camera}: node counters disagree: received {row['received']} != processed + "
                f"rejected + dropped + skipped ({row['received'] - row['in_node']})"
            )
        ratio = row.get("latency_ratio")
        if limits.max_latency_ratio and ratio is not None and ratio > limits.max_latency_ratio:
            problems.append(
                f"{camera}: latency p50 of the last 10 % is {ratio:.2f}x the first 10 % "
                f"(limit {limits.max_latency_ratio:g}x)"
            )
    growth = summary.get("resources", {}).get("rss_growth_percent")
    if growth is not None and growth > limits.max_rss_growth_percent:
        problems.append(
            f"RSS grew {growth:.2f} % from the reference point (limit "
            f"{limits.max_rss_growth_percent:g} %)"
        )
    for fault in summary.get("faults", []):
        event = fault["event"]
        where = f" ({event['camera']})" if event["camera"] else ""
        if fault.get("error"):
            problems.append(
                f"fault {event['kind']}{where} at {event['at_s']:.0f} s: {fault['error']}"
            )
        elif fault.get("recovered_s") is None:
            problems.append(
                f"fault {event['kind']}{where} at {event['at_s']:.0f} s: no labels within "
                f"{limits.recover_timeout_s:g} s after it ended"
            )
    return problems


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A pipe table with aligned columns (numbers right-aligned)."""
    text = [[str(cell) for cell in row] for row in rows]
    widths = [
        max([len(header)] + [len(row[i]) for row in text]) for i, header in enumerate(headers)
    ]

    def line(cells, numeric):
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric)
        ]
        return "| " + " | ".join(parts) + " |"

    def is_number(cell: str) -> bool:
        return cell.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).isdigit()

    numeric = [bool(text) and all(is_number(row[i]) for row in text) for i in range(len(headers))]
    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if right else "-" * (w + 2) for w, right in zip(widths, numeric)
    )
    return "\n".join([line(headers, numeric), rule + "|"] + [line(row, numeric) for row in text])


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pair(window: dict) -> str:
    return f"{_ms(window.get('p50_ms'))} / {_ms(window.get('p95_ms'))}"


def _mb(kb) -> str:
    return "-" if kb is None else f"{kb / 1024.0:.1f}"


def _short(text: str, width: int = 72) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_report(summary: dict, limits: Limits) -> str:
    """The bench's one table: cameras, node resources, faults, verdict."""
    rows = []
    for camera, row in summary.get("cameras", {}).items():
        ratio = row.get("latency_ratio")
        rows.append(
            [
                camera,
                row["published"],
                row["received"],
                row["processed"],
                row["rejected"],
                row["dropped"],
                row["skipped"],
                row["lost"],
                _pair(row.get("latency_first", {})),
                _pair(row.get("latency_last", {})),
                "-" if ratio is None else f"{ratio:.2f}",
            ]
        )
    lines = [
        markdown_table(
            [
                "camera",
                "published",
                "received",
                "segmented",
                "rejected",
                "dropped",
                "skipped",
                "lost",
                "p50/p95 ms first 10%",
                "p50/p95 ms last 10%",
                "p50 last/first",
            ],
            rows,
        )
    ]
    res = summary.get("resources") or {}
    if res:
        growth = res.get("rss_growth_percent")
        lines.append(
            f"node: RSS {_mb(res['rss_first_kb'])} MB at {res['reference_t']:.0f} s -> "
            f"{_mb(res['rss_last_kb'])} MB at {res['last_t']:.0f} s (max "
            f"{_mb(res['rss_max_kb'])} MB, growth "
            f"{'-' if growth is None else f'{growth:+.2f}'} %); open fds {res['fds_first']} -> "
            f"{res['fds_last']}; threads {res['threads_first']} -> {res['threads_last']}; "
            f"exit code {summary.get('node_exit_code', '-')}"
        )
        if "rss_anon_first_kb" in res:
            lines.append(
                "node RSS parts, reference -> end: "
                + "; ".join(
                    f"{label} {_mb(res[f'{part}_first_kb'])} -> {_mb(res[f'{part}_last_kb'])} MB"
                    for label, part in (
                        ("anonymous", "rss_anon"),
                        ("file", "rss_file"),
                        ("shared memory", "rss_shmem"),
                    )
                )
            )
    faults = summary.get("faults", [])
    if faults:
        fault_rows = []
        for fault in faults:
            event = fault["event"]
            level = fault.get("level")
            reported = (
                "-"
                if level is None
                else f"{LEVEL_NAMES.get(level, level)}: {_short(fault.get('message', ''), 60)}"
            )
            recovered = fault.get("recovered_s")
            fault_rows.append(
                [
                    event["kind"],
                    event["camera"] or "all",
                    "-" if fault.get("started_s") is None else f"{fault['started_s']:.1f}",
                    "-"
                    if fault.get("ended_s") is None or fault.get("started_s") is None
                    else f"{fault['ended_s'] - fault['started_s']:.1f}",
                    reported,
                    _short("; ".join(fault.get("notes", [])) or "-", 90),
                    fault.get("error")
                    or ("not recovered" if recovered is None else f"{recovered:.2f}"),
                ]
            )
        lines.append(
            markdown_table(
                [
                    "fault",
                    "camera",
                    "at s",
                    "lasted s",
                    "node reported (worst level: message)",
                    "counters / notes",
                    "recovered in s",
                ],
                fault_rows,
            )
        )
    problems = failures(summary, limits)
    lines.append(
        "verdict: PASS"
        if not problems
        else "verdict: FAIL\n" + "\n".join(f"  - {p}" for p in problems)
    )
    return "\n\n".join(lines)


def finite_or_none(value):
    """JSON has no NaN/inf: such values become None."""
    return value if not isinstance(value, float) or math.isfinite(value) else None
