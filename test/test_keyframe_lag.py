"""The adaptive clock with ``keyframe_lag``: keyframes run in a background thread and their result
joins the stream a fixed number of frames later (video_seg_ros.temporal, engine_batches).

The tiny models, panning frames and helpers are those of test_temporal.py (2 px per frame to the
left: frame i+1 at x shows what frame i showed at x + 2). Every engine runs fp32 explicitly.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from test_temporal import COUNT_ONLY, engine, panning

pytestmark = pytest.mark.usefixtures("single_torch_thread")


#: The network wanted on every frame, its result two frames late; only the clock makes keyframes.
EVERY_FRAME_LAG_2 = {
    "mode": "adaptive",
    "max_interval": 1,
    "keyframe_lag": 2,
    "keyframe_error_share": 1.0,
    **COUNT_ONLY,
}


def test_with_a_lag_only_the_first_frame_waits_and_a_keyframe_starts_when_none_is_pending(
    confident,
):
    segmenter = engine(confident, {**EVERY_FRAME_LAG_2, "fusion_weight": 1.0})
    frames = panning(8)
    results = [segmenter.segment(frame) for frame in frames]
    # The first frame has nothing to propagate and waits for the network; after it a keyframe
    # starts whenever none is in the background: frames 1, 3, 5, 7 (each joins 2 frames later).
    assert [r.keyframe for r in results] == [True, True, False, True, False, True, False, True]
    assert results[0].network_ms > 0
    assert all(r.network_ms == 0 for r in results[1:])  # nobody waited for the network
    assert segmenter.temporal_stats()["reasons"] == {"start": 1, "interval": 4}
    assert any(t.name.startswith("keyframe_network") for t in threading.enumerate())


def test_the_labels_follow_a_change_exactly_when_its_keyframe_joins(confident):
    """A still camera whose scene changes from A to B at frame 2 (the cut detector off): the
    network first sees B on frame 3, and its result joins on frame 5 = 3 + lag."""
    scene_a, scene_b = panning(1, seed=0)[0], panning(1, seed=5)[0]
    labels_b = engine(confident).segment(scene_b).labels
    segmenter = engine(confident, {**EVERY_FRAME_LAG_2, "fusion_weight": 1.0})
    results = [segmenter.segment(frame) for frame in [scene_a] * 2 + [scene_b] * 4]
    assert [r.keyframe for r in results] == [True, True, False, True, False, True]
    agreement = [float(np.mean(r.labels == labels_b)) for r in results]
    assert agreement[5] >= 0.95, agreement
    assert max(agreement[:5]) < 0.8, agreement  # before, the labels are A's carried along


def test_keyframe_lag_results_depend_on_the_frames_not_on_the_timing(confident):
    frames = panning(9)
    quick = engine(confident, EVERY_FRAME_LAG_2)
    fast_labels = [quick.segment(frame).labels for frame in frames]  # waits where the net is late
    leisurely = engine(confident, EVERY_FRAME_LAG_2)
    slow_labels = []
    for frame in frames:
        slow_labels.append(leisurely.segment(frame).labels)
        time.sleep(0.05)  # every background run is over long before its result is used
    assert all(np.array_equal(a, b) for a, b in zip(fast_labels, slow_labels))


def test_a_reset_settings_change_or_release_with_a_keyframe_in_the_background(
    memory_checkpoint,
):
    segmenter = engine(memory_checkpoint, {**EVERY_FRAME_LAG_2, "keyframe_lag": 3})
    frames = panning(6)
    for frame in frames[:2]:
        segmenter.segment(frame)
    state = segmenter.stream_state()
    assert state.late is not None  # frame 1's network is in the background
    segmenter.reset()  # waits for it: it writes the memory this reset empties
    assert state.late is None and len(state.memory) == 0
    restart = segmenter.segment(frames[2])
    assert restart.keyframe and restart.network_ms > 0  # a fresh start waits for the network
    assert segmenter.temporal_stats()["reasons"]["start"] == 2

    segmenter.segment(frames[3])
    assert state.late is not None
    segmenter.set_temporal({**EVERY_FRAME_LAG_2, "keyframe_lag": 0})  # another lag: a restart
    result = segmenter.segment(frames[4])
    assert state.late is None and result.network_ms > 0

    segmenter.set_temporal(EVERY_FRAME_LAG_2)
    segmenter.segment(frames[5])
    segmenter.segment(frames[0])
    assert state.late is not None
    segmenter.release()  # waits for the background run before freeing the model
    with pytest.raises(RuntimeError, match="released"):
        segmenter.segment(frames[0])
