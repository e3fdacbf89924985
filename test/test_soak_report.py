"""The soak bench's ROS-free arithmetic (video_seg_ros/soak_report.py): frame accounting across
configure epochs, latency windows, RSS growth from the reference point, the fault schedule, what
fails a run and the printed table."""

from __future__ import annotations

import pytest

from video_seg_ros.soak_report import (
    FAULT_KINDS,
    NODE_FAULTS,
    CounterTotals,
    FaultEvent,
    FaultResult,
    Limits,
    account,
    counter_changes,
    counters_from_values,
    default_schedule,
    failures,
    format_report,
    latency_ratio,
    markdown_table,
    parse_fault_kinds,
    reference_time,
    resource_summary,
    run_windows,
    window_latency,
    worst_status,
)


def _counters(received, processed=0, rejected=0, dropped=0, skipped=0):
    return {
        "received": received,
        "processed": processed,
        "rejected": rejected,
        "dropped": dropped,
        "skipped": skipped,
    }


def test_counters_are_read_from_the_nodes_diagnostics_keys():
    values = {
        "received": "10",
        "processed": "6",
        "rejected": "1",
        "dropped": "2",
        "skipped_no_subscriber": "1",
        "fps": "4.90",
    }
    assert counters_from_values(values) == _counters(10, 6, 1, 2, 1)
    assert counters_from_values({}) == _counters(0)


def test_totals_add_up_across_a_cleanup_that_restarts_the_counters():
    totals = CounterTotals()
    totals.update("cam0", _counters(5, 4, 0, 1, 0))
    totals.update("cam0", _counters(9, 7, 1, 1, 0))  # same epoch: replaces
    assert totals.total("cam0") == _counters(9, 7, 1, 1, 0)
    totals.update("cam0", _counters(0))  # configured again: counters start from 0
    totals.update("cam0", _counters(3, 2, 0, 0, 1))
    assert totals.total("cam0") == _counters(12, 9, 1, 1, 1)
    assert totals.epochs["cam0"] == 2
    totals.update("cam1", _counters(2, 2))
    assert totals.total("cam1") == _counters(2, 2) and totals.epochs["cam1"] == 1
    assert totals.total("missing") == _counters(0)
    assert totals.cameras() == ["cam0", "cam1"]


def test_every_frame_must_end_in_exactly_one_counter():
    assert account(10, _counters(10, 6, 1, 2, 1)) == {"lost": 0, "in_node": 0, "undelivered": 0}
    # one frame still in the node's queue: received but not yet an outcome
    assert account(10, _counters(10, 6, 1, 2, 0)) == {"lost": 1, "in_node": 1, "undelivered": 0}
    # two frames never reached the node
    assert account(12, _counters(10, 6, 1, 2, 1)) == {"lost": 2, "in_node": 0, "undelivered": 2}


def test_latency_windows_are_the_first_and_last_tenth_without_the_faults():
    assert run_windows(300.0) == {"first": (0.0, 30.0), "last": (270.0, 300.0)}
    samples = [(t * 1.0, 100.0 + t) for t in range(300)]
    first = window_latency(samples, (0.0, 30.0))
    assert first["count"] == 30 and first["p50_ms"] == pytest.approx(114.5)
    assert first["p95_ms"] == pytest.approx(127.55)
    excluded = window_latency(samples, (0.0, 30.0), excluded=[(10.0, 19.0)])
    assert excluded["count"] == 20
    empty = window_latency(samples, (400.0, 500.0))
    assert empty == {"p50_ms": None, "p95_ms": None, "count": 0}
    assert latency_ratio({"p50_ms": 100.0}, {"p50_ms": 112.0}) == pytest.approx(1.12)
    assert latency_ratio({"p50_ms": None}, {"p50_ms": 112.0}) is None


def test_rss_reference_is_the_tenth_minute_or_a_tenth_of_a_short_run():
    assert reference_time(7200.0) == 600.0
    assert reference_time(300.0) == 30.0
    samples = [
        {"t": 0.0, "rss_kb": 500_000, "fds": 40, "threads": 20},
        {"t": 30.0, "rss_kb": 400_000, "fds": 41, "threads": 21},
        {"t": 150.0, "rss_kb": 430_000, "fds": 42, "threads": 21},
        {"t": 300.0, "rss_kb": 410_000, "fds": 41, "threads": 22},
    ]
    summary = resource_summary(samples, 30.0)
    assert summary["rss_first_kb"] == 400_000 and summary["rss_last_kb"] == 410_000
    assert summary["rss_max_kb"] == 500_000  # the start-up peak counts for the maximum only
    assert summary["rss_growth_percent"] == pytest.approx(2.5)
    assert (summary["fds_first"], summary["fds_last"]) == (41, 41)
    assert (summary["threads_first"], summary["threads_last"]) == (21, 22)
    between = resource_summary(samples, 100.0)  # the last sample before the reference time
    assert between["reference_t"] == 30.0 and between["rss_first_kb"] == 400_000
    late = resource_summary(samples, 1000.0)
    assert late["reference_t"] == 300.0 and late["rss_growth_percent"] == 0.0
    early = resource_summary(samples[1:], 10.0)  # no sample that early: the first one
    assert early["reference_t"] == 30.0
    assert resource_summary([], 10.0) == {}


def test_the_schedule_keeps_the_latency_windows_clean_and_uses_every_kind():
    cameras = ["cam0", "cam1", "cam2", "cam3"]
    events = default_schedule(300.0, cameras, FAULT_KINDS, stale_s=3.0, every_s=60.0)
    assert [event.kind for event in events] == list(FAULT_KINDS)
    assert all(30.0 <= event.at_s < 270.0 for event in events)
    assert all(event.camera == "" for event in events if event.kind in NODE_FAULTS)
    assert {event.camera for event in events if event.kind not in NODE_FAULTS} == set(cameras)
    stop = next(event for event in events if event.kind == "camera_stop")
    assert stop.duration_s > 3.0  # longer than diagnostics_stale_s
    long_run = default_schedule(7200.0, cameras, FAULT_KINDS, every_s=60.0)
    assert len(long_run) == 96 and long_run[-1].at_s < 7200.0 * 0.9
    gaps = {round(b.at_s - a.at_s, 3) for a, b in zip(long_run, long_run[1:])}
    assert len(gaps) == 1 and gaps.pop() >= 60.0
    assert default_schedule(300.0, cameras, []) == []


def test_fault_kinds_are_parsed_with_a_helpful_error():
    assert parse_fault_kinds("all") == list(FAULT_KINDS)
    assert parse_fault_kinds("none") == []
    assert parse_fault_kinds("reset_all, bag_loop") == ["reset_all", "bag_loop"]
    with pytest.raises(ValueError, match="unknown fault kind.*explode"):
        parse_fault_kinds("bag_loop,explode")


def test_the_worst_status_of_a_fault_window_is_reported():
    statuses = [
        (1.0, 0, "segmenting at 5.0 fps"),
        (2.0, 3, "no image on /soak/cam1/image for 3.2 s"),
        (3.0, 3, "no image on /soak/cam1/image for 4.2 s"),
        (4.0, 1, "rejected 2 frame(s)"),
        (9.0, 2, "every frame was rejected"),
    ]
    assert worst_status(statuses, 0.5, 5.0) == statuses[1]  # first of the worst level
    assert worst_status(statuses, 3.5, 4.5) == statuses[3]
    assert worst_status(statuses, 10.0, 11.0) is None
    quiet = [
        (1.0, 0, "segmenting at 5.0 fps"),
        (2.0, 0, "no subscriber on any output: inference skipped"),
        (3.0, 0, "segmenting at 4.0 fps"),
    ]
    assert worst_status(quiet, 0.0, 5.0) == quiet[1]  # says more than the routine message
    assert worst_status(quiet[:1], 0.0, 5.0) == quiet[0]


def test_counter_changes_name_the_resets_and_rejections_a_fault_caused():
    before = {"resets_service": "2", "rejected_bad_step": "1", "received": "100"}
    after = {
        "resets_service": "3",
        "rejected_bad_step": "4",
        "rejected_empty": "2",
        "received": "120",
        "resets_gap": "",
    }
    assert counter_changes(before, after) == {
        "resets_service": 1,
        "rejected_bad_step": 3,
        "rejected_empty": 2,
    }
    # after a cleanup the counters start again: the new value is what happened since
    assert counter_changes({"resets_deactivate": "5"}, {"resets_deactivate": "1"}) == {
        "resets_deactivate": 1
    }


def _summary(**changes):
    row = {
        **_counters(100, 90, 2, 5, 3),
        "published": 100,
        "lost": 0,
        "in_node": 0,
        "latency_first": {"p50_ms": 100.0, "p95_ms": 150.0},
        "latency_last": {"p50_ms": 105.0, "p95_ms": 160.0},
        "latency_ratio": 1.05,
    }
    fault = FaultResult(
        FaultEvent("camera_stop", 40.0, 8.0, "cam0"),
        started_s=40.0,
        ended_s=48.0,
        recovered_s=0.4,
        level=3,
        message="no image on /soak/cam0/image for 3.1 s",
        notes=["resets_gap +1"],
    )
    summary = {
        "cameras": {"cam0": row},
        "resources": resource_summary(
            [
                {"t": 30.0, "rss_kb": 400_000, "fds": 40, "threads": 20},
                {"t": 300.0, "rss_kb": 404_000, "fds": 40, "threads": 20},
            ],
            30.0,
        ),
        "faults": [fault.as_dict()],
        "node_alive": True,
        "node_exit_code": 0,
    }
    for key, value in changes.items():
        if key in row:
            row[key] = value
        else:
            summary[key] = value
    return summary


def test_a_clean_run_passes_and_each_broken_promise_fails_it():
    limits = Limits(max_rss_growth_percent=5.0, max_latency_ratio=1.1)
    assert failures(_summary(), limits) == []
    assert failures(_summary(lost=2), limits) == ["cam0: 2 frame(s) unaccounted for"]
    assert "node counters disagree" in failures(_summary(in_node=1), limits)[0]
    assert "1.30x" in failures(_summary(latency_ratio=1.3), limits)[0]
    assert failures(_summary(latency_ratio=1.3), Limits(max_latency_ratio=0.0)) == []
    assert failures(_summary(node_alive=False), limits) == ["the node died during the run"]
    assert failures(_summary(node_exit_code=-9), limits) == ["the node exited with code -9"]
    grown = _summary()
    grown["resources"]["rss_growth_percent"] = 7.5
    assert failures(grown, limits) == ["RSS grew 7.50 % from the reference point (limit 5 %)"]
    stuck = _summary()
    stuck["faults"][0]["recovered_s"] = None
    assert "camera_stop (cam0) at 40 s: no labels within 60 s" in failures(stuck, limits)[0]
    broken = _summary()
    broken["faults"][0]["error"] = "~/reset did not answer"
    assert failures(broken, limits)[0].endswith("~/reset did not answer")


def test_the_report_shows_every_column_and_the_verdict():
    text = format_report(_summary(), Limits())
    header = text.splitlines()[0]
    for column in ("published", "received", "segmented", "rejected", "dropped", "skipped"):
        assert column in header
    assert "| cam0 " in text and "100 / 150" in text and "105 / 160" in text
    assert "RSS 390.6 MB at 30 s -> 394.5 MB at 300 s" in text and "+1.00 %" in text
    assert "STALE: no image on /soak/cam0/image" in text and "resets_gap +1" in text
    assert "0.40" in text
    assert text.endswith("verdict: PASS")
    failing = format_report(_summary(lost=3), Limits())
    assert "verdict: FAIL" in failing and "cam0: 3 frame(s) unaccounted for" in failing


def test_markdown_table_aligns_numbers_right():
    table = markdown_table(["name", "count"], [["a", 5], ["bb", 120]]).splitlines()
    assert table[0] == "| name | count |"
    assert table[1] == "|------|------:|"
    assert table[2] == "| a    |     5 |"
    assert table[3] == "| bb   |   120 |"
