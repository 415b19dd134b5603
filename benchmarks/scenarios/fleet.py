"""Process fleets for the multi-process scenarios: start children, release them together.

A fleet is a list of ``spawn``-ed child processes (see :mod:`benchmarks.children`) sharing one
``go`` and one ``stop`` event. :func:`fleet` waits until every child is ready (connected, warmed
up), and on leaving sets ``stop`` and joins them, terminating any that hang.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

READY_TIMEOUT = 120.0
JOIN_TIMEOUT = 120.0
CONTEXT = multiprocessing.get_context("spawn")


@dataclass
class Fleet:
    processes: list[multiprocessing.process.BaseProcess]
    go: Event
    stop: Event

    def start(self) -> None:
        self.go.set()

    def alive(self) -> int:
        return sum(1 for p in self.processes if p.is_alive())


@contextlib.contextmanager
def fleet(children: Sequence[tuple[Callable[..., None], tuple[Any, ...]]]) -> Iterator[Fleet]:
    """Start ``(target, args)`` children; each gets ``ready, go, stop`` appended to its args."""
    go, stop = CONTEXT.Event(), CONTEXT.Event()
    processes, readies = [], []
    try:
        for target, args in children:
            ready = CONTEXT.Event()
            process = CONTEXT.Process(target=target, args=(*args, ready, go, stop), daemon=True)
            process.start()
            processes.append(process)
            readies.append(ready)
        for process, ready in zip(processes, readies, strict=True):
            if not ready.wait(READY_TIMEOUT):
                raise RuntimeError(f"{process.name} did not get ready (exit {process.exitcode})")
        yield Fleet(processes, go, stop)
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                process.terminate()
                process.join()
