"""Progress on stderr: a live bar on a terminal, plain start and finish lines otherwise.

Results go to stdout; only progress goes to stderr, so ``python -m benchmarks all > out.md``
keeps the tables clean.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

BAR_WIDTH = 30
REFRESH_SECONDS = 0.2


class Progress:
    """Numbered steps (``[3/14] label``) and, on a TTY, a live bar while a count climbs."""

    def __init__(self, stream: TextIO | None = None, *, total_steps: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total_steps = total_steps
        self._step = 0

    def plan(self, total_steps: int) -> None:
        """Announce how many steps follow, for ``[n/total]`` prefixes."""
        self.total_steps, self._step = total_steps, 0

    def _prefix(self) -> str:
        if self.total_steps:
            return f"[{self._step}/{self.total_steps}] "
        return f"[{self._step}] "

    def line(self, text: str) -> None:
        """Write one line of progress (clearing any bar first)."""
        if self.live:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        """One step: a line when it starts, one when it ends (with its wall time)."""
        self._step += 1
        prefix = self._prefix()
        self.line(f"{prefix}{label} ...")
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            self.line(
                f"{prefix}{label}: FAILED after {time.perf_counter() - started:.1f} s "
                f"({type(error).__name__})"
            )
            raise
        self.line(f"{prefix}{label}: done in {time.perf_counter() - started:.1f} s")

    @contextlib.contextmanager
    def counting(self, label: str, total: int, count: Callable[[], int]) -> Iterator[None]:
        """Redraw a bar from ``count()`` every 0.2 s while the block runs (TTY only)."""
        if not self.live or total <= 0:
            yield
            return
        stop = threading.Event()

        def draw() -> None:
            while not stop.wait(REFRESH_SECONDS):
                done = min(count(), total)
                filled = int(BAR_WIDTH * done / total)
                bar = "#" * filled + "-" * (BAR_WIDTH - filled)
                self.stream.write(f"\r\x1b[K    {label} [{bar}] {done:,}/{total:,}")
                self.stream.flush()

        thread = threading.Thread(target=draw, name="bench-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()
