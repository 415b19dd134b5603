"""What every scenario receives: the run's scratch database and its progress reporter."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from benchmarks.progress import Progress
from benchmarks.scratch_databases import Scratch


@dataclass(frozen=True)
class Context:
    scratch: Scratch
    progress: Progress

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
