"""The soak run: producers enqueue at a steady rate while worker processes drain, with retention
pruning all along; every ~10 s it samples the jobs table and each of its indexes, dead tuples
and the workers' resident memory, then says whether sizes stayed bounded and memory flat (first
third against last third). `python tests/faults/soak.py --help` (or `nox -s soak -- ...`).

It runs on ``--database-url`` (else ``PGQ_SA_TEST_DATABASE_URL``, else an embedded server it
starts), in a database of its own that it drops at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).parent))

from fault_injectors import own_server
from fault_supervisor import Supervisor

from pgq_sa import JobSpec, Queue
from pgq_sa._config import sync_url
from pgq_sa.migrations import db_upgrade

KINDS = ("threads", "asyncio", "trio")
MIB = 1024 * 1024


@dataclass
class Sample:
    at: float
    enqueued: int
    backlog: int  # queued + running
    rows: int
    total_bytes: int
    heap_bytes: int
    indexes: dict[str, int]
    live_tuples: int
    dead_tuples: int
    autovacuums: int
    vacuums: int  # manual VACUUMs this run sent (--vacuum-every)
    rss_kib: dict[int, int]


@dataclass
class Producer:
    """Enqueues ``rate`` jobs per second on a steady clock, in ticks of 100 ms."""

    engine: Engine
    rate: float
    single: bool  # one enqueue() per job in a transaction, else one enqueue_many() per tick
    stop: threading.Event = field(default_factory=threading.Event)
    enqueued: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        queue = Queue()
        started = time.monotonic()
        tick = 0
        try:
            while not self.stop.wait(max(0.0, started + 0.1 * (tick + 1) - time.monotonic())):
                tick = int((time.monotonic() - started) / 0.1)
                # behind schedule, catch up by at most half a second's worth per tick
                behind = int(self.rate * (time.monotonic() - started)) - self.enqueued
                due = min(behind, max(1, int(self.rate / 2)))
                tasks = ("soak.sync", "soak.async")
                while due > 0:  # transactions of at most 50 jobs: none holds vacuum back
                    chunk = min(due, 50)
                    with self.engine.begin() as connection:
                        if self.single:
                            for n in range(chunk):
                                queue.enqueue(connection, tasks[n % 2], {"n": self.enqueued + n})
                        else:
                            specs = [JobSpec(tasks[n % 2], {"n": n}) for n in range(chunk)]
                            queue.enqueue_many(connection, specs)
                    self.enqueued += chunk
                    due -= chunk
        except BaseException as error:
            self.errors.append(error)


def sample(
    engine: Engine, enqueued: int, supervisor: Supervisor, started: float, vacuums: int
) -> Sample:
    with engine.connect() as connection:
        total, heap = connection.execute(
            text("SELECT pg_total_relation_size('pgq.jobs'), pg_relation_size('pgq.jobs')")
        ).one()
        indexes = dict(
            connection.execute(
                text(
                    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index AS i "
                    "JOIN pg_class AS c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 'pgq.jobs'::regclass ORDER BY 1"
                )
            ).all()
        )
        live, dead, autovacuums = connection.execute(
            text(
                "SELECT n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
                "WHERE schemaname = 'pgq' AND relname = 'jobs'"
            )
        ).one()
        rows, backlog = connection.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE state IN ('queued', 'running')) "
                "FROM pgq.jobs"
            )
        ).one()
    return Sample(
        at=time.monotonic() - started,
        enqueued=enqueued,
        backlog=int(backlog),
        rows=int(rows),
        total_bytes=int(total),
        heap_bytes=int(heap),
        indexes={str(k): int(v) for k, v in indexes.items()},
        live_tuples=int(live),
        dead_tuples=int(dead),
        autovacuums=int(autovacuums),
        vacuums=vacuums,
        rss_kib=supervisor.rss_kib(),
    )


def thirds(values: list[float]) -> tuple[list[float], list[float]]:
    third = max(1, len(values) // 3)
    return values[:third], values[-third:]


@dataclass
class Verdict:
    lines: list[str]
    bounded: bool
    flat: bool


def judge(
    all_samples: list[Sample],
    duration: float,
    rate: float,
    enqueued: int,
    processed: int,
    warmup: float,
) -> Verdict:
    """First third against last third of the samples taken after ``warmup`` seconds (start-up,
    and the retention window filling up)."""
    lines: list[str] = []
    samples = [s for s in all_samples if s.at >= warmup] or all_samples
    first, last = thirds([float(s.total_bytes) for s in samples])
    bounded = max(last) <= 1.25 * max(first) + 2 * MIB
    lines.append(
        f"jobs table incl. indexes and TOAST: max {max(first) / MIB:.1f} MiB in the first third, "
        f"{max(last) / MIB:.1f} MiB in the last third -> {'bounded' if bounded else 'GROWING'}"
    )
    for name in samples[0].indexes:
        a, b = thirds([float(s.indexes.get(name, 0)) for s in samples])
        lines.append(f"  index {name}: max {max(a) / MIB:.2f} -> {max(b) / MIB:.2f} MiB")
    a, b = thirds([float(s.heap_bytes) for s in samples])
    lines.append(f"  heap: max {max(a) / MIB:.1f} -> {max(b) / MIB:.1f} MiB")
    a, b = thirds([float(s.dead_tuples) for s in samples])
    lines.append(f"dead tuples: max {max(a):.0f} -> {max(b):.0f}")
    a, b = thirds([float(s.rows) for s in samples])
    lines.append(f"rows kept (retention): max {max(a):.0f} -> {max(b):.0f}")
    a, b = thirds([float(s.backlog) for s in samples])
    lines.append(f"backlog (queued + running): max {max(a):.0f} -> {max(b):.0f}")
    flat = True
    pids = sorted({pid for s in samples for pid in s.rss_kib})
    for pid in pids:
        series = [s.rss_kib[pid] / 1024 for s in samples if pid in s.rss_kib]
        a, b = thirds(series)
        ok = statistics.mean(b) <= 1.10 * statistics.mean(a) + 5
        flat = flat and ok
        lines.append(
            f"worker {pid} RSS: mean {statistics.mean(a):.1f} MiB first third, "
            f"{statistics.mean(b):.1f} MiB last third -> {'flat' if ok else 'GROWING'}"
        )
    lines.insert(
        0,
        f"{duration / 60:.1f} min, target {rate:.0f} jobs/s; enqueued {enqueued} "
        f"({enqueued / duration:.0f}/s achieved), processed {processed} "
        f"({processed / duration:.0f}/s); {len(all_samples)} samples, thirds compared after a "
        f"{warmup:.0f} s warm-up; autovacuum ran {samples[-1].autovacuums} times on pgq.jobs",
    )
    return Verdict(lines, bounded, flat)


def soak(args: argparse.Namespace) -> Verdict:
    duration = args.minutes * 60
    with ExitStack() as stack:
        url_text = args.database_url or os.environ.get("PGQ_SA_TEST_DATABASE_URL")
        if not url_text:
            url_text = stack.enter_context(own_server()).url
        server = sync_url(url_text)
        name = f"pgq_sa_soak_{uuid.uuid4().hex[:8]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        stack.callback(admin.dispose)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        stack.callback(drop)
        url = server.set(database=name)
        engine = create_engine(url, pool_size=4)
        stack.callback(engine.dispose)
        db_upgrade(engine)
        worker_url = url.render_as_string(hide_password=False)
        logs = Path(tempfile.mkdtemp(prefix="pgq_sa_soak_logs_"))
        supervisor = Supervisor(
            url=worker_url,
            targets=dict.fromkeys(KINDS, "soak_app:queue"),
            logs=logs,
            options=["--log-level", "warning"],
            env={"SOAK_KEEP_SUCCEEDED": str(args.keep_succeeded)},
        )
        stack.callback(supervisor.kill_all)
        for n in range(args.workers):
            supervisor.start(KINDS[n % len(KINDS)])
        producers = [
            Producer(engine, args.rate / 2, single=False),
            Producer(engine, args.rate / 2, single=True),
        ]
        threads = [threading.Thread(target=p.run, daemon=True) for p in producers]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[Sample] = []
        vacuums, vacuumed_at = 0, 0.0
        admin_db = create_engine(url, isolation_level="AUTOCOMMIT")
        stack.callback(admin_db.dispose)
        with admin_db.connect() as connection:
            autovacuum = connection.exec_driver_sql("SHOW autovacuum").scalar_one()
        print(f"soak on {name} for {args.minutes} min at {args.rate}/s; logs in {logs}", flush=True)
        while True:
            now = time.monotonic() - started
            enqueued = sum(p.enqueued for p in producers)
            if args.vacuum_every and now - vacuumed_at >= args.vacuum_every:
                with admin_db.connect() as connection:
                    connection.exec_driver_sql("VACUUM (ANALYZE) pgq.jobs")
                vacuums += 1
                vacuumed_at = now
            samples.append(sample(engine, enqueued, supervisor, started, vacuums))
            s = samples[-1]
            print(
                f"[{now:6.0f}s] enqueued {enqueued} backlog {s.backlog} rows {s.rows} "
                f"jobs {s.total_bytes / MIB:.1f} MiB dead {s.dead_tuples} "
                f"rss {sorted(v // 1024 for v in s.rss_kib.values())} MiB",
                flush=True,
            )
            dead = supervisor.dead()
            errors = [e for p in producers for e in p.errors]
            if dead or errors:
                raise RuntimeError(f"soak broke: dead workers {dead}, producer errors {errors}")
            if now >= duration:
                break
            time.sleep(max(0.0, args.sample - (time.monotonic() - started - now)))
        for producer in producers:
            producer.stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        with engine.connect() as connection:
            backlog = connection.execute(
                text("SELECT count(*) FROM pgq.jobs WHERE state IN ('queued', 'running')")
            ).scalar_one()
        enqueued = sum(p.enqueued for p in producers)
        codes = supervisor.stop_all()
        if not any(codes.values()):
            shutil.rmtree(logs, ignore_errors=True)
        warmup = max(60.0, 2 * args.keep_succeeded)
        verdict = judge(samples, elapsed, args.rate, enqueued, enqueued - int(backlog), warmup)
        verdict.lines.insert(
            1,
            f"server: autovacuum = {autovacuum}; this run sent VACUUM (ANALYZE) pgq.jobs "
            + (f"every {args.vacuum_every:.0f} s ({vacuums} times)" if vacuums else "never"),
        )
        verdict.lines.append(f"workers' exit codes on SIGTERM: {sorted(codes.values(), key=str)}")
        return verdict


def write_doc(path: Path, command: str, verdict: Verdict) -> None:
    """Replace what follows the figures marker (prose above it is kept)."""
    body = "\n".join(f"    {line}" for line in verdict.lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = "<!-- figures -->"
    old = path.read_text() if path.exists() else ""
    head = old.split(marker)[0] if marker in old else old or "# Soak run\n\n"
    path.write_text(
        f"{head}{marker}\n\nCommand (what `python -m nox -s soak -- ARGS` runs):\n\n"
        f"    {command}\n\n"
        f"Result ({'sizes bounded' if verdict.bounded else 'SIZES GREW'}, "
        f"{'memory flat' if verdict.flat else 'MEMORY GREW'}):\n\n{body}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=500.0, help="jobs per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--keep-succeeded", type=float, default=60.0, help="seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--database-url", help="server to create the soak database on")
    parser.add_argument(
        "--vacuum-every",
        type=float,
        default=0.0,
        help="send VACUUM (ANALYZE) pgq.jobs every S seconds (for a server with autovacuum off)",
    )
    parser.add_argument("--doc", type=Path, help="write the figures to this Markdown file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up: workers, database
    verdict = soak(args)
    print("\n".join(verdict.lines))
    summary = "bounded" if verdict.bounded else "SIZES GREW"
    print(
        f"soak {'OK' if verdict.bounded and verdict.flat else 'FAILED'}: sizes {summary}, "
        f"memory {'flat' if verdict.flat else 'GREW'}"
    )
    if args.doc:
        command = "python tests/faults/soak.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        write_doc(args.doc, command, verdict)
    return 0 if verdict.bounded and verdict.flat else 1


if __name__ == "__main__":
    sys.exit(main())
