"""``python -m benchmarks SCENARIO [options]``: pgq_sa's benchmarks, optionally beside PgQueuer.

Every run creates a scratch database ``pgq_sa_bench_<random>`` on the server of
``--database-url`` (default ``PGQ_SA_DATABASE_URL``, else the local server) and drops it at the
end. Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import machine, ours
from benchmarks.context import Context
from benchmarks.progress import Progress
from benchmarks.scenarios import (
    bulk,
    drain,
    growth,
    memory,
    processes,
    steady,
    suite,
    wakeup,
    web_pages,
    workflows,
)
from benchmarks.scratch_databases import (
    LOCAL_SERVER,
    URL_VARIABLE,
    default_server_url,
    scratch_database,
)
from benchmarks.stats import STATISTICS
from pgq_sa._ops.settings import LEVELS

DURABILITY_NOTES = {
    "balanced": "balanced. pgq_sa: claims and heartbeats commit without waiting for the WAL "
    "flush (synchronous_commit off), outcomes are written on their own; PgQueuer: its log and "
    "statistics tables UNLOGGED.",
    "volatile": "volatile. pgq_sa: every queue table UNLOGGED; PgQueuer: every table UNLOGGED.",
}


def _kinds(values: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    return ours.KINDS if "all" in values else tuple(dict.fromkeys(values))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=default_server_url(),
        help=f"server to create the scratch database on (default: ${URL_VARIABLE}, "
        f"else {LOCAL_SERVER})",
    )
    common.add_argument(
        "--durability",
        choices=LEVELS,
        default="durable",
        help="install every queue at this level (pgq-sa db durability), and PgQueuer's tables "
        "at its level of the same name (default: durable)",
    )
    kind = argparse.ArgumentParser(add_help=False)
    kind.add_argument(
        "--kind",
        choices=(*ours.KINDS, "all"),
        nargs="+",
        default=["all"],
        help="worker kinds (default: all)",
    )
    peer = argparse.ArgumentParser(add_help=False)
    peer.add_argument(
        "--peer", choices=("pgqueuer",), default=None, help="also run PgQueuer 1.6.0 and compare"
    )

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0]
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    p = scenarios.add_parser(
        "drain", parents=[common, kind, peer], help="drain N pre-enqueued no-op jobs"
    )
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("--batch-size", type=int, nargs="+", default=[10], help="one or more")
    p.add_argument("--repeat", type=int, default=1, help="runs of each drain")
    p.add_argument("--statistic", choices=STATISTICS, default="median", help="of the runs")

    p = scenarios.add_parser(
        "bulk", parents=[common, peer], help="one enqueue_many of N jobs, median of repeats"
    )
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)

    p = scenarios.add_parser(
        "wakeup", parents=[common, kind, peer], help="commit -> handler start on an idle worker"
    )
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--gap", type=float, default=0.05, help="idle seconds between samples")
    p.add_argument(
        "--producer",
        choices=wakeup.PRODUCERS,
        default="process",
        help="where the producer runs (default: a process of its own)",
    )
    p.add_argument("--rounds", type=int, default=1, help="split the samples over rounds")

    p = scenarios.add_parser(
        "growth", parents=[common], help="claim and drain speed on large vs small tables"
    )
    p.add_argument("--claims", type=int, default=200)
    p.add_argument("--claim-batch", type=int, default=10)
    p.add_argument("--small", type=int, default=1_000, help="queued rows, small case")
    p.add_argument("--large", type=int, default=1_000_000, help="queued rows, large case")
    p.add_argument("--retained", type=int, default=1_000_000, help="finished rows retained")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs drained each way")
    p.add_argument("--kind", choices=ours.KINDS, default="threads", help="drain worker kind")
    p.add_argument("--batch-size", type=int, default=10, help="drain claim batch")
    p.add_argument("--repeat", type=int, default=1, help="drains each way")
    p.add_argument("--statistic", choices=STATISTICS, default="median", help="of the runs")

    p = scenarios.add_parser(
        "steady", parents=[common, kind], help="producers and a worker together for T seconds"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    p.add_argument("--producers", type=int, default=2, help="producer processes")
    p.add_argument("--produce-batch", type=int, default=100, help="jobs per enqueue_many")
    p.add_argument("--batch-size", type=int, default=10)

    p = scenarios.add_parser(
        "processes", parents=[common, kind], help="drain N jobs with 1, 2 and 4 worker processes"
    )
    p.add_argument("--jobs", type=int, default=30_000)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="process counts")

    p = scenarios.add_parser(
        "memory", parents=[common, kind], help="a worker's RSS: idle, after 10k and 1M jobs"
    )
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--idle", type=float, default=3.0, help="idle seconds before the first read")

    p = scenarios.add_parser(
        "web_pages", parents=[common], help="the web dashboard's server time per page"
    )
    p.add_argument("--finished", type=int, default=2_000_000, help="finished jobs (last 24 h)")
    p.add_argument("--queued", type=int, default=20_000)
    p.add_argument("--workflows", type=int, default=2_000, help="workflows of 5 steps")
    p.add_argument("--repeat", type=int, default=20, help="timed requests per page")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests per page first")
    p.add_argument("--explain", action="store_true", help="also print each statement's plan")
    p = scenarios.add_parser(
        "workflows", parents=[common, kind], help="chain hop latency and a fan-in's throughput"
    )
    p.add_argument("--links", type=int, default=200, help="steps of the chain (hops + 1)")
    p.add_argument("--gap", type=float, default=0.02, help="seconds each chain step runs")
    p.add_argument("--steps", type=int, default=10_000, help="steps of the fan-in workflow")
    p.add_argument("--batch-size", type=int, default=10)

    p = scenarios.add_parser(
        "all", parents=[common], help="everything with --peer pgqueuer, plus a markdown summary"
    )
    p.add_argument("--jobs", type=int, default=30_000, help="drain jobs")
    p.add_argument("--drain-repeat", type=int, default=3, help="runs of each drain")
    p.add_argument("--bulk-jobs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="bulk repeats")
    p.add_argument("--samples", type=int, default=200, help="wakeup samples")
    p.add_argument("--growth-jobs", type=int, default=20_000, help="growth drain jobs")
    p.add_argument("--growth-repeat", type=int, default=3, help="growth drains each way")
    p.add_argument(
        "--statistic", choices=STATISTICS, default="best", help="of repeated drains (best)"
    )
    p.add_argument("--wakeup-rounds", type=int, default=4, help="wakeup samples in rounds")
    p.add_argument("--markdown", type=Path, default=None, help="also write the summary here")
    return parser


def _run(context: Context, args: argparse.Namespace, command: str) -> None:
    if args.scenario == "drain":
        drain.run(
            context,
            jobs=args.jobs,
            batch_sizes=args.batch_size,
            kinds=_kinds(args.kind),
            peer_name=args.peer,
            repeat=args.repeat,
            statistic=args.statistic,
        )
    elif args.scenario == "bulk":
        bulk.run(context, jobs=args.jobs, repeat=args.repeat, peer_name=args.peer)
    elif args.scenario == "wakeup":
        wakeup.run(
            context,
            samples=args.samples,
            kinds=_kinds(args.kind),
            peer_name=args.peer,
            batch_size=args.batch_size,
            gap=args.gap,
            producer=args.producer,
            rounds=args.rounds,
        )
    elif args.scenario == "steady":
        steady.run(
            context,
            kinds=_kinds(args.kind),
            batch_size=args.batch_size,
            seconds=args.seconds,
            producers=args.producers,
            produce_batch=args.produce_batch,
            warmup=args.warmup,
        )
    elif args.scenario == "processes":
        processes.run(
            context,
            kinds=_kinds(args.kind),
            batch_size=args.batch_size,
            jobs=args.jobs,
            counts=args.counts,
        )
    elif args.scenario == "memory":
        memory.run(
            context,
            kinds=_kinds(args.kind),
            batch_size=args.batch_size,
            small=args.small,
            large=args.large,
            idle=args.idle,
        )
    elif args.scenario == "workflows":
        workflows.run(
            context,
            kinds=_kinds(args.kind),
            links=args.links,
            gap=args.gap,
            steps=args.steps,
            batch_size=args.batch_size,
        )
    elif args.scenario == "growth":
        growth.run(
            context,
            depths=(args.small, args.large),
            claims=args.claims,
            claim_batch=args.claim_batch,
            retained=args.retained,
            jobs=args.jobs,
            kind=args.kind,
            batch_size=args.batch_size,
            repeat=args.repeat,
            statistic=args.statistic,
        )
    elif args.scenario == "web_pages":
        web_pages.run(
            context,
            finished=args.finished,
            queued=args.queued,
            workflows=args.workflows,
            repeat=args.repeat,
            warmup=args.warmup,
            show_plans=args.explain,
        )
    else:
        markdown = suite.run(
            context,
            jobs=args.jobs,
            drain_repeat=args.drain_repeat,
            bulk_jobs=args.bulk_jobs,
            repeat=args.repeat,
            samples=args.samples,
            growth_jobs=args.growth_jobs,
            growth_repeat=args.growth_repeat,
            statistic=args.statistic,
            wakeup_rounds=args.wakeup_rounds,
            command=command,
        )
        if args.markdown is not None:
            args.markdown.write_text(markdown + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    command = shlex.join(["python", "-m", "benchmarks", *arguments])
    progress = Progress()
    with scratch_database(args.database_url) as scratch:
        progress.line(f"scratch database {scratch.url.database}")
        print(f"# {command}\n")
        print(machine.render(machine.describe(scratch.engine)))
        if args.durability != "durable":
            print(f"Durability: {DURABILITY_NOTES[args.durability]}\n")
        _run(Context(scratch, progress, args.durability), args, command)
    progress.line(f"scratch database {scratch.url.database} dropped")


if __name__ == "__main__":
    main()
