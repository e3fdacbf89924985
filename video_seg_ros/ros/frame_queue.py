"""The node's frame queue (DDS callbacks -> worker thread), without ROS."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Hashable


class FrameQueue:
    """Bounded hand-over from the DDS callbacks to the worker thread; never blocks the producer.

    One queue of ``capacity`` items per stream (camera), all under one lock, so a single worker
    can wait for "a frame from any camera". With ``capacity=1`` (keep-latest) a new frame replaces
    the one of the same stream still waiting, so the worker always takes the newest frame and
    latency does not grow when frames arrive faster than they are processed. With a larger
    capacity the oldest waiting frame of that stream is dropped when full.
    ``on_drop(dropped, successor)`` (called under the queue's lock) lets the next waiting item of
    the stream inherit what the dropped one knew, e.g. the input gap before it.
    """

    def __init__(self, capacity: int = 1, on_drop: Callable[[Any, Any], None] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._on_drop = on_drop
        self._items: dict[Hashable, deque] = {}
        self._condition = threading.Condition()
        self._closed = False

    def put(self, item: Any, stream: Hashable = None) -> int:
        """Add ``item`` to ``stream``; returns how many waiting items were dropped to make room
        (0 or 1)."""
        with self._condition:
            items = self._items.setdefault(stream, deque())
            dropped = 0
            if len(items) >= self.capacity:
                oldest = items.popleft()
                dropped = 1
                if self._on_drop is not None:
                    self._on_drop(oldest, items[0] if items else item)
            items.append(item)
            self._condition.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest waiting item of the first stream that has one, or None on timeout or after
        :meth:`close`."""
        batch = self.get_batch(timeout, max_items=1)
        return batch[0][1] if batch else None

    def get_batch(
        self, timeout: float | None = None, max_items: int | None = None
    ) -> list[tuple[Hashable, Any]]:
        """``(stream, item)`` for the oldest waiting item of every stream that has one (a stream's
        frames must be segmented one after the other, so one per stream); [] on timeout or after
        :meth:`close`."""
        with self._condition:
            if not self._closed and not any(self._items.values()):
                self._condition.wait(timeout)
            if self._closed:
                return []
            batch = [(stream, items.popleft()) for stream, items in self._items.items() if items]
            return batch[:max_items] if max_items else batch

    def clear(self) -> dict[Hashable, int]:
        """Drop every waiting item (e.g. on lifecycle deactivate); returns how many were dropped
        per stream (streams with none left out), so each camera can count its own drops."""
        with self._condition:
            counts = {stream: len(items) for stream, items in self._items.items() if items}
            for items in self._items.values():
                items.clear()
            return counts

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._items.clear()
            self._condition.notify_all()

    def __len__(self) -> int:
        with self._condition:
            return sum(len(items) for items in self._items.values())


def merge_input_gaps(dropped_gap_s: float, successor_gap_s: float) -> float:
    """The input gap a frame carries when the frame before it is dropped from the queue.

    The dropped frame's gap still happened before the next processed frame (the larger one
    counts), but a backwards jump (a looping bag) among dropped frames must not be hidden by
    later forward gaps: a negative gap wins.
    """
    smaller = min(dropped_gap_s, successor_gap_s)
    return smaller if smaller < 0 else max(dropped_gap_s, successor_gap_s)
