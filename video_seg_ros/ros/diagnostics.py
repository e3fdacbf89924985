"""One camera's diagnostics status from the pipeline's counters; no ROS import.

:func:`camera_status` returns ``(level, message, values)``; the node wraps it in a
``diagnostic_msgs/DiagnosticStatus`` (levels are that message's constants).
"""

from __future__ import annotations

OK, WARN, ERROR, STALE = 0, 1, 2, 3

#: Engine description keys copied into every status.
_ENGINE_KEYS = (
    "device",
    "backend",
    "precision",
    "precision_reason",
    "precision_agreement",
    "precision_fallback",
    "backend_fallback",
)


def _level_and_message(
    figures: dict,
    settings: dict,
    active: bool,
    quiet_s: float,
    input_topic: str,
    recent_tc,
    recent_pairs: int,
) -> tuple[int, str]:
    stale_s, flicker = settings["diagnostics_stale_s"], settings["flicker_tc_threshold"]
    if not active:
        return OK, "inactive: not subscribed to the camera"
    if stale_s > 0 and quiet_s > stale_s:
        return STALE, f"no image on {input_topic} for {quiet_s:.1f} s"
    if figures["new_rejected"] and not figures["new_processed"] and not figures["new_skipped"]:
        return ERROR, (
            f"every frame of the last period was rejected ({figures['new_rejected']}): "
            f"{figures['last_reject_reason']}"
        )
    if figures["new_rejected"]:
        return WARN, (
            f"rejected {figures['new_rejected']} frame(s): {figures['last_reject_reason']}"
        )
    if figures["new_skipped"] and not figures["new_processed"]:
        return OK, "no subscriber on any output: inference skipped"
    if figures["received"] == 0:
        return OK, f"waiting for images on {input_topic}"
    if flicker > 0 and recent_tc is not None and recent_tc < flicker:
        return WARN, (
            f"flicker: online TC {recent_tc:.2f} over the last {recent_pairs} "
            f"pair(s) is below flicker_tc_threshold {flicker:g}"
        )
    return OK, f"segmenting at {figures['fps']:.1f} fps"


def _text(value) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def camera_status(
    name: str,
    input_topic: str,
    figures: dict,
    pipeline,
    engine,
    settings: dict,
    active: bool,
    quiet_s: float,
) -> tuple[int, str, dict[str, str]]:
    """Level, message and key/values (as text) of one camera.

    ``figures``: its ``StreamStats.snapshot()``; ``pipeline``: its ``StreamPipeline``;
    ``settings``: the node's parameter values; ``quiet_s``: seconds without an input frame
    (counted from activation when none came since).
    """
    consistency = pipeline.consistency
    measuring = settings["consistency_metric"]
    recent_tc = consistency.recent_tc if measuring else None
    level, message = _level_and_message(
        figures, settings, active, quiet_s, input_topic, recent_tc, consistency.recent_pairs
    )
    temporal = engine.temporal_stats(pipeline.stream)
    described = engine.describe()
    values = {
        "camera": name,
        "input_topic": input_topic,
        "received": figures["received"],
        "processed": figures["processed"],
        "dropped": figures["dropped"],
        "skipped_no_subscriber": figures["skipped"],
        "rejected": figures["rejected"],
        **{
            f"rejected_{reason}": count
            for reason, count in sorted(figures["rejected_by_reason"].items())
        },
        "last_reject_reason": figures["last_reject_reason"],
        "fps": figures["fps"],
        "seconds_since_frame": figures["seconds_since_frame"],
        "latency_p50_ms": figures["latency_p50_ms"],
        "latency_p95_ms": figures["latency_p95_ms"],
        "keyframe_latency_p50_ms": figures["keyframe_latency_p50_ms"],
        "propagated_latency_p50_ms": figures["propagated_latency_p50_ms"],
        "model_p50_ms": figures["model_p50_ms"],
        "model_p95_ms": figures["model_p95_ms"],
        "resets": figures["resets"],
        **{f"resets_{key}": count for key, count in sorted(figures["resets_by_reason"].items())},
        "last_reset_reason": figures["last_reset_reason"],
        "frames_since_reset": pipeline.frames_since_reset,
        "tc_pairs": consistency.pairs,
        "running_tc": consistency.running_tc if measuring else None,
        "recent_tc": recent_tc,
        "recent_tc_pairs": consistency.recent_pairs,
        "temporal_mode": temporal["mode"],
        "keyframe_share": temporal["keyframe_share"],
        "fused_confidence": temporal["fused_confidence"],
        **{key: described[key] or "" for key in _ENGINE_KEYS},
        "model": engine.model_name,
        "temporal_model": engine.is_temporal,
    }
    return level, message, {key: _text(value) for key, value in values.items()}
