"""What every scenario receives: the run's scratch database and its progress reporter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from benchmarks.progress import Progress
from benchmarks.scratch_databases import Scratch, queue_schema


@dataclass(frozen=True)
class Context:
    scratch: Scratch
    progress: Progress
    # The durability level every queue of the run is installed at (``--durability``); PgQueuer's
    # tables are installed at its level of the same name.
    durability: str = "durable"

    @contextlib.contextmanager
    def queue_schema(self, schema: str) -> Iterator[str]:
        """A fresh queue schema at the run's durability level, dropped afterwards."""
        with queue_schema(self.engine, schema, self.durability):
            yield schema

    @property
    def url(self) -> URL:
        return self.scratch.url

    @property
    def engine(self) -> Engine:
        return self.scratch.engine

    @property
    def dsn(self) -> str:
        """The scratch database as a libpq DSN, for PgQueuer."""
        return self.scratch.dsn
