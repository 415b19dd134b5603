"""``workflows``: what dependencies between jobs cost.

* **chain hop**: a workflow of ``links`` steps in a chain runs on an idle worker. Each handler
  notes ``time.perf_counter()`` as it starts and again as it returns (after ``gap`` idle
  seconds); a hop is the next step's start minus this step's return: the finish statement that
  writes the outcome and queues the next step, its commit, the NOTIFY, the claim and the
  dispatch. Beside it, the idle wake-up of the ``wakeup`` scenario (enqueue commit -> handler
  start, inline producer) measured in the same run, the reference: the hop adds to it the
  finish statement and the worker's own turnaround.
* **fan-in**: one workflow of ``steps`` steps (a root, ``steps - 2`` steps after it, one step
  after all of those) drained by one worker: steps per second from the worker's start to its
  last finish, beside a drain of as many plain no-op jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import anyio

from benchmarks import ours
from benchmarks.context import Context
from benchmarks.report import Result, print_results
from benchmarks.scenarios import wakeup
from benchmarks.scratch_databases import warm
from benchmarks.stats import percentile
from pgq_sa import AsyncWorker, Queue, ThreadWorker, Workflow
from pgq_sa._job import Job

PERCENTILES = (50, 99)
LINK = "chain.link"
HOP_TIMEOUT = 10.0


def _chain_queue(schema: str, kind: str, gap: float) -> tuple[Queue, dict[int, float], dict]:
    """A queue whose one task notes when each link starts and returns (by its position)."""
    queue = Queue(schema=schema)
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    if kind == "threads":

        @queue.task(LINK)
        def link(job: Job) -> None:
            starts[job.payload] = time.perf_counter()
            time.sleep(gap)
            ends[job.payload] = time.perf_counter()

    else:

        @queue.task(LINK)
        async def link_async(job: Job) -> None:
            starts[job.payload] = time.perf_counter()
            await anyio.sleep(gap)
            ends[job.payload] = time.perf_counter()

    return queue, starts, ends


def _chain(links: int) -> Workflow:
    flow = Workflow("chain")
    step = flow.add(LINK, 0)
    for position in range(1, links):
        step = flow.add(LINK, position, after=[step])
    return flow


def _until_done(starts: dict[int, float], links: int, running: threading.Thread) -> None:
    deadline = time.monotonic() + 60 + links * HOP_TIMEOUT
    while len(starts) < links or links - 1 not in starts:
        if not running.is_alive():
            raise RuntimeError("the worker stopped before the chain ended")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the chain did not end; {len(starts)} of {links} links started")
        time.sleep(0.01)


def measure_hops(
    context: Context, kind: str, links: int, gap: float, batch_size: int
) -> list[float]:
    """The hop latencies (seconds) of one chain of ``links`` steps on an idle ``kind`` worker."""
    schema = f"bench_chain_{kind}"
    with context.queue_schema(schema):
        queue, starts, ends = _chain_queue(schema, kind, gap)
        size = ours.budget(kind, batch_size)
        worker: ThreadWorker | AsyncWorker
        if kind == "threads":
            worker = ThreadWorker(queue, context.url, threads=size, batch_size=batch_size)
            run = worker.run
        else:
            worker = AsyncWorker(
                queue, ours.user_url(context.url), concurrency=size, batch_size=batch_size
            )

            def run() -> None:
                anyio.run(worker.run, backend=kind)

        failure: list[BaseException] = []

        def body() -> None:
            try:
                run()
            except BaseException as error:
                failure.append(error)

        thread = threading.Thread(target=body, name=f"bench-chain-{kind}", daemon=True)
        thread.start()
        try:
            wakeup._wait_registered(context.engine, schema)
            time.sleep(1.0)  # idle, as in the wake-up scenario
            warm(context.engine, 1)
            queue.enqueue_workflow(context.engine, _chain(links))
            _until_done(starts, links, thread)
            time.sleep(gap * 2)
        finally:
            worker.stop()
            thread.join(60)
        if failure:
            raise failure[0]
    return [starts[n + 1] - ends[n] for n in range(links - 1)]


def measure_fan_in(context: Context, kind: str, steps: int, batch_size: int) -> float:
    """Steps per second draining one fan-out/fan-in workflow of ``steps`` steps."""
    schema = f"bench_fan_in_{kind}"
    with context.queue_schema(schema):
        queue = ours.noop_queue(schema, kind)
        flow = Workflow("fan-in")
        root = flow.add(ours.NOOP)
        middle = flow.add_many(ours.NOOP, [None] * (steps - 2), after=[root])
        flow.add(ours.NOOP, after=middle)
        queue.enqueue_workflow(context.engine, flow)
        elapsed = ours.drain(kind, queue, context.url, context.engine, batch_size)
    return steps / elapsed


def measure_plain(context: Context, kind: str, jobs: int, batch_size: int) -> float:
    schema = f"bench_plain_{kind}"
    with context.queue_schema(schema):
        queue = ours.noop_queue(schema, kind)
        ours.enqueue_noops(queue, context.engine, jobs)
        elapsed = ours.drain(kind, queue, context.url, context.engine, batch_size)
    return jobs / elapsed


def run(
    context: Context,
    *,
    kinds: Sequence[str],
    links: int = 200,
    gap: float = 0.02,
    steps: int = 10_000,
    batch_size: int = 10,
    show: bool = True,
) -> list[Result]:
    """Chain hops and a fan-in per worker kind, each beside its plain-job reference."""
    results: list[Result] = []
    for kind in kinds:
        described = ours.describe(kind, batch_size)
        with context.progress.step(f"workflows: chain of {links} on {described}"):
            hops = measure_hops(context, kind, links, gap, batch_size)
        wakes = wakeup.measure_ours(context, kind, links, batch_size, gap, 1.0, "inline")
        for p in PERCENTILES:
            results.append(
                Result(
                    benchmark="workflow chain hop",
                    case=f"{described} p{p}",
                    metric="ms",
                    value=percentile(hops, p) * 1000,
                    reference=percentile(wakes, p) * 1000,
                    reference_label=f"idle wake-up p{p}",
                    note="parent returns -> child starts",
                )
            )
        with context.progress.step(f"workflows: fan-in of {steps} steps on {described}"):
            fan_in = measure_fan_in(context, kind, steps, batch_size)
        with context.progress.step(f"workflows: {steps} plain jobs on {described}"):
            plain = measure_plain(context, kind, steps, batch_size)
        results.append(
            Result(
                benchmark="workflow fan-in",
                case=f"{steps} steps, {described}",
                metric="jobs/s",
                value=fan_in,
                reference=plain,
                reference_label=f"{steps} plain jobs",
            )
        )
    if show:
        print_results(
            f"workflows: chain hops ({links} links, {gap * 1000:g} ms handlers) and a fan-in",
            results,
        )
    return results
