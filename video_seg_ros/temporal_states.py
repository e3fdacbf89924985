"""An engine's streams: one :class:`~video_seg_ros.temporal.StreamTemporalState` per stream key,
and the temporal settings in force (with the :class:`~video_seg_ros.temporal.FlowFusion` that
applies them). No ROS here.

New settings may come from another thread (the node's parameter callback); they wait until the
segmenting thread takes them at the start of its next call (:meth:`StreamStates.apply_pending`).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import torch

from video_seg_ros.temporal import FlowFusion, StreamTemporalState, TemporalSettings


class StreamStates:
    """Every stream's temporal state (memory, previous frame, fused probabilities, clock) and the
    temporal settings, on ``device``."""

    def __init__(self, settings: TemporalSettings, device: torch.device):
        self._states: dict[Hashable, StreamTemporalState] = {}
        self._device = device
        #: The settings in force (those the segmenting thread took last).
        self.settings = settings
        self._pending: TemporalSettings | None = None
        self._lock = threading.Lock()  # settings may come from another thread
        self.fusion = FlowFusion(settings, device)

    @property
    def newest(self) -> TemporalSettings:
        """The newest settings given, in force or still waiting."""
        return self._pending or self.settings

    def request(self, settings: TemporalSettings | dict | str) -> TemporalSettings:
        """Settings to take from the next call on (refused here when a field is bad)."""
        settings = TemporalSettings.coerce(settings)
        with self._lock:
            self._pending = settings
        return settings

    def apply_pending(self) -> None:
        """Put the waiting settings in force; streams keep their fused state unless the change
        makes it invalid."""
        with self._lock:
            settings, self._pending = self._pending, None
        if settings is None:
            return
        if not settings.keeps_state_of(self.settings):
            for state in self._states.values():
                state.clear_fusion()
        self.settings = settings
        self.fusion = FlowFusion(settings, self._device)

    def state(self, stream: Hashable) -> StreamTemporalState:
        """The state of ``stream``, created empty when the stream is new."""
        state = self._states.get(stream)
        if state is None:
            state = self._states[stream] = StreamTemporalState()
        return state

    def stats(self, stream: Hashable) -> dict:
        """One stream's diagnostics (see ``SegmentationEngine.temporal_stats``)."""
        state = self._states.get(stream)  # read only: diagnostics call this from another thread
        stats = state.stats if state is not None else StreamTemporalState().stats
        return {"mode": self.newest.mode, **stats.snapshot()}

    def forget(self) -> None:
        """Drop every stream's state and statistics."""
        for state in self._states.values():
            state.clear_fusion()  # waits for a keyframe still in the background
        self._states.clear()

    def reset(self, stream: Hashable | None, memory_only: bool) -> None:
        """Reset one stream's state (all: ``stream=None``); ``memory_only``: its memory only."""
        if stream is None:
            states = list(self._states.values())
        else:
            states = [self._states[stream]] if stream in self._states else []
        for state in states:
            if memory_only:
                state.clear_memory()
            else:
                state.reset()
