"""A single thread that runs callbacks at given monotonic times (job deadlines, retry wake-ups).

Used by the thread worker so that a thousand running jobs with timeouts cost one thread, not a
thousand ``threading.Timer`` objects.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pgq_sa.worker")


class TimerThread:
    """Run callbacks at (approximately) their due time; ``cancel`` a handle to drop one."""

    def __init__(self, name: str = "pgq_sa-timers") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_at(self, when: float, callback: Callable[[], None]) -> int:
        """Schedule ``callback`` at monotonic time ``when``; returns a handle for ``cancel``."""
        handle = next(self._counter)
        with self._condition:
            heapq.heappush(self._heap, (when, handle, callback))
            if self._heap[0][1] == handle:  # the new earliest: the thread must wait less
                self._condition.notify()
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        return self.call_at(time.monotonic() + max(delay, 0.0), callback)

    def cancel(self, handle: int) -> None:
        with self._condition:
            self._cancelled.add(handle)

    def stop(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._condition.wait(timeout)
                if self._closed:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                callback()
            except Exception:  # a timer callback must never kill the timer thread
                log.exception("timer callback failed")
