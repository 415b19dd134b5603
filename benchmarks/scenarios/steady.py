"""``steady``: producers and a worker together, for ``seconds``: how much flows through.

``producers`` processes each commit ``enqueue_many`` of ``produce_batch`` no-op jobs in a loop
while one pgq_sa worker (in this process, as in ``drain``) runs them. After ``warmup`` seconds
the window opens: the jobs that succeeded inside it (server clock, ``finished_at``), divided by
its length, is the steady throughput; the enqueue rate over the same window and the backlog
left at the end (queued jobs) say whether the worker kept up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from sqlalchemy import text

from benchmarks import children, machine, ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results
from benchmarks.scenarios.fleet import fleet
from benchmarks.scratch_databases import settle, state_counts


def _count(context: Context, schema: str, column: str, since: str, until: str) -> int:
    with context.engine.connect() as connection:
        value = connection.execute(
            text(
                f'SELECT count(*) FROM "{schema}".jobs '
                f"WHERE {column} >= CAST(:since AS timestamptz) "
                f"AND {column} < CAST(:until AS timestamptz)"
            ),
            {"since": since, "until": until},
        ).scalar()
    return int(value or 0)


def _now(context: Context) -> str:
    with context.engine.connect() as connection:
        return str(connection.execute(text("SELECT now()::text")).scalar())


def measure(
    context: Context,
    kind: str,
    batch_size: int,
    seconds: float,
    producers: int,
    produce_batch: int,
    warmup: float,
) -> tuple[float, float, int]:
    """One steady run: (succeeded/s, enqueued/s, backlog at the end)."""
    schema = f"bench_steady_{kind}_{batch_size}"
    label = (
        f"steady {seconds:g} s: {producers} producer(s) x enqueue_many({produce_batch}) "
        f"+ {ours.describe(kind, batch_size)}"
    )
    with context.progress.step(label), context.queue_schema(schema):
        url = context.url.render_as_string(hide_password=False)
        queue = ours.noop_queue(schema, kind)
        settle(context.engine)
        watched = ours.Watched()
        window: dict[str, str] = {}
        cpu_before = machine.cpu_sample()
        producing = [(children.produce, (url, schema, produce_batch)) for _ in range(producers)]
        with fleet(producing) as running:

            def stop_later() -> None:
                running.start()
                time.sleep(warmup)
                window["since"] = _now(context)
                time.sleep(seconds)
                window["until"] = _now(context)
                running.stop.set()
                while watched.worker is None:
                    time.sleep(0.01)
                watched.worker.stop()

            timer = threading.Thread(target=stop_later, name="bench-steady", daemon=True)
            total = int(seconds + warmup)
            started = time.perf_counter()
            timer.start()
            with context.progress.counting(
                f"{kind} steady (s)", total, lambda: int(time.perf_counter() - started)
            ):
                ours.drain(
                    kind,
                    queue,
                    context.url,
                    context.engine,
                    batch_size,
                    watched,
                    seconds + warmup + 300,
                    until_empty=False,
                )
            timer.join()
        steal = machine.steal_since(cpu_before)
        done = _count(context, schema, "finished_at", window["since"], window["until"])
        made = _count(context, schema, "created_at", window["since"], window["until"])
        backlog = state_counts(context.engine, schema).get("queued", 0)
    result = (done / seconds, made / seconds, backlog)
    context.progress.line(
        f"    {result[0]:,.0f} jobs/s done, {result[1]:,.0f} jobs/s enqueued, backlog at the "
        f"end {backlog:,}; {steal}"
    )
    return result


def run(
    context: Context,
    *,
    kinds: Sequence[str],
    batch_size: int = 10,
    seconds: float = 20.0,
    producers: int = 2,
    produce_batch: int = 100,
    warmup: float = 3.0,
    show: bool = True,
) -> list[Result]:
    results = []
    for kind in kinds:
        done, made, backlog = measure(
            context, kind, batch_size, seconds, producers, produce_batch, warmup
        )
        results.append(
            Result(
                benchmark=f"steady {seconds:g} s",
                case=f"{ours.describe(kind, batch_size)}; {producers} producers",
                metric="jobs/s",
                value=done,
                note=f"enqueued meanwhile {made:,.0f} jobs/s; backlog at the end {backlog:,}",
            )
        )
    if show:
        print_results("steady: producers and a worker together (done / enqueued)", results)
    return results
