"""The fault run: real worker processes drain jobs while the run kills workers, terminates their
connections, restarts PostgreSQL (fast and immediate) and pauses a worker past its lease; then
the oracle judges. `python tests/faults/fault_run.py --help` (or `nox -s faults`).

Faults fire at fixed fractions of the jobs having succeeded, so they always hit a queue under
load, however fast the machine is. Everything runs on an embedded PostgreSQL the run starts.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

sys.path.insert(0, str(Path(__file__).parent))

import fault_app
from fault_injectors import own_server, restart, terminate_backends
from fault_oracle import Report, judge
from fault_supervisor import Supervisor

from pgq_sa import JobSpec, Queue
from pgq_sa._config import sync_url
from pgq_sa.migrations import db_upgrade

DATABASE = "pgq_sa_faults"
KINDS = ("threads", "asyncio", "trio")


@dataclass
class Config:
    jobs: int = 10_000
    workers: int = 4
    kills: int = 8
    terminations: int = 4
    restarts: tuple[str, ...] = ("fast", "immediate", "fast", "immediate")
    pause: bool = True
    transactional: bool = fault_app.TRANSACTIONAL
    lease_timeout: float = 10.0
    heartbeat_interval: float = 0.5
    work_seconds: float = 0.02
    timeout: float = 900.0
    seed: int = 7
    verbose: bool = True

    @classmethod
    def short(cls) -> Config:
        return cls(jobs=1500, kills=2, terminations=2, restarts=("fast", "immediate"), timeout=200)

    def events(self) -> list[str]:
        """The faults in the order they fire: kinds interleaved, the pause early."""
        lanes = [
            ["kill"] * self.kills,
            ["terminate"] * self.terminations,
            [f"restart:{mode}" for mode in self.restarts],
        ]
        order = ["pause"] if self.pause else []
        while any(lanes):
            for lane in lanes:
                if lane:
                    order.append(lane.pop(0))
        return order


@dataclass
class Run:
    config: Config
    engine: Engine
    admin: Engine
    supervisor: Supervisor
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, Any] = field(default_factory=dict)
    restart_seconds: list[float] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)
    paused: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # pid -> worker, jobs
    late_checks: list[tuple[int, list[int]]] = field(default_factory=list)
    server: Any = None

    def say(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def query(self, statement: str, **params: Any) -> list[Any]:
        """A read that waits out restarts and terminated connections."""
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.engine.connect() as connection:
                    return list(connection.execute(text(statement), params))
            except DBAPIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def succeeded(self) -> int:
        rows = self.query("SELECT count(*) FROM pgq.jobs WHERE state = 'succeeded'")
        return int(rows[0][0])

    def check_deaths(self) -> None:
        for worker in self.supervisor.dead():
            self.supervisor.live.remove(worker)
            self.deaths.append(
                f"pid {worker.pid} ({worker.kind}) exited {worker.process.returncode}"
            )
            self.say(f"worker {worker.pid} died on its own: see {worker.log}")

    def fire(self, event: str) -> None:
        if event == "kill":
            victim = self.supervisor.kill_random()
            self.say(f"SIGKILL worker {victim.pid} ({victim.kind}); replaced")
        elif event == "terminate":
            ended = terminate_backends(self.admin, DATABASE)
            self.say(f"pg_terminate_backend: {ended} connections")
        elif event.startswith("restart:"):
            mode = event.split(":")[1]
            seconds = restart(self.server, mode)
            self.restart_seconds.append(seconds)
            self.engine.dispose()
            self.admin.dispose()
            self.say(f"PostgreSQL restarted ({mode}) in {seconds:.1f} s")
        elif event == "pause":
            self.pause()
        else:
            raise ValueError(event)

    def pause(self) -> None:
        """SIGSTOP a worker that holds running jobs, and note which ones (to watch them)."""
        holders = "SELECT DISTINCT w.pid FROM pgq.workers AS w JOIN pgq.jobs AS j "
        holders += "ON j.worker_id = w.id AND j.state = 'running'"
        deadline = time.monotonic() + 60
        while True:
            live = {w.pid: w for w in self.supervisor.live if w.pid not in self.supervisor.paused}
            pids = [r[0] for r in self.query(holders) if r[0] in live]
            if pids:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("fault run: no worker held a running job to pause")
            time.sleep(0.05)
        victim = self.supervisor.pause(live[self.supervisor.rng.choice(pids)])
        worker_id = self.query("SELECT id::text FROM pgq.workers WHERE pid = :p", p=victim.pid)
        held = self.query(
            "SELECT j.id FROM pgq.jobs AS j JOIN pgq.workers AS w ON j.worker_id = w.id "
            "WHERE j.state = 'running' AND w.pid = :p",
            p=victim.pid,
        )
        self.paused[victim.pid] = (worker_id[0][0], [r[0] for r in held])
        self.say(f"SIGSTOP worker {victim.pid} ({victim.kind}) holding {len(held)} jobs")

    def resume_rescued(self) -> None:
        """SIGCONT a paused worker once its jobs were rescued (its row is gone)."""
        for pid, (worker_id, held) in list(self.paused.items()):
            rows = self.query("SELECT count(*) FROM pgq.workers WHERE id::text = :w", w=worker_id)
            if rows[0][0] == 0:
                self.supervisor.resume(pid)
                del self.paused[pid]
                self.late_checks.append((pid, held))
                self.say(f"SIGCONT worker {pid}: its {len(held)} jobs were rescued")


def _prepare(admin: Engine, url: Any) -> Engine:
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{DATABASE}"')
    engine = create_engine(url.set(database=DATABASE), pool_pre_ping=True)
    db_upgrade(engine)
    with engine.begin() as connection:
        for statement in fault_app.SIDE_TABLES:
            connection.execute(text(statement))
    return engine


def _enqueue(engine: Engine, config: Config) -> tuple[list[int], list[int]]:
    tasks = list(fault_app.RECORD_TASKS)
    effects = (fault_app.EFFECT_TASK, fault_app.ASYNC_EFFECT_TASK)
    if config.transactional:
        tasks += effects
    producer = Queue()
    ids: list[int] = []
    effect_ids: list[int] = []
    for start in range(0, config.jobs, 1000):
        specs = [
            JobSpec(tasks[n % len(tasks)], {"n": n})
            for n in range(start, min(config.jobs, start + 1000))
        ]
        batch = producer.enqueue_many(engine, specs)
        ids += batch
        effect_ids += [i for i, s in zip(batch, specs, strict=True) if s.task in effects]
    return ids, effect_ids


def _wait(run: Run, done: Callable[[], bool], deadline: float, what: str) -> None:
    while not done():
        run.check_deaths()
        run.resume_rescued()
        if time.monotonic() > deadline:
            raise TimeoutError(f"fault run: timed out waiting for {what}")
        time.sleep(0.2)


def _late_writes_changed(run: Run) -> list[int]:
    """Jobs a paused worker held whose row changed after they succeeded elsewhere."""
    held = sorted({j for _, jobs in run.late_checks for j in jobs})
    if not held:
        return []
    snapshot = "SELECT id, state::text, attempt, finished_at, result::text FROM pgq.jobs "
    snapshot += "WHERE id = ANY(:ids) ORDER BY id"
    before = run.query(snapshot, ids=held)
    # let every resumed worker finish what it was running and try its (rejected) writes
    for pid, jobs in run.late_checks:
        worker = next((w for w in run.supervisor.live if w.pid == pid), None)
        if worker is None or not jobs:
            continue
        deadline = time.monotonic() + 60
        while "lease lost" not in worker.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                run.say(f"worker {pid} logged no 'lease lost' after resuming")
                break
            time.sleep(0.2)
    after = run.query(snapshot, ids=held)
    return [a[0] for a, b in zip(after, before, strict=True) if a != b]


def run_faults(config: Config) -> Report:
    rng = random.Random(config.seed)
    logs = Path(tempfile.mkdtemp(prefix="pgq_sa_fault_logs_"))
    with own_server() as server:
        url = sync_url(server.url)
        admin = create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        engine = _prepare(admin, url)
        worker_url = url.set(database=DATABASE).render_as_string(hide_password=False)
        supervisor = Supervisor(
            url=worker_url,
            targets={
                "threads": "fault_app:queue",
                "trio": "fault_app:queue",
                "asyncio": "fault_app:asyncio_queue",
            },
            logs=logs,
            options=[
                "--heartbeat-interval",
                str(config.heartbeat_interval),
                "--lease-timeout",
                str(config.lease_timeout),
                "--poll-interval",
                "0.5",
                "--log-level",
                "warning",
            ],
            env={
                "FAULT_DATABASE_URL": worker_url,
                "FAULT_WORK_SECONDS": str(config.work_seconds),
            },
            rng=rng,
        )
        run = Run(config, engine, admin, supervisor)
        run.server = server
        try:
            ids, effect_ids = _enqueue(engine, config)
            run.say(f"{len(ids)} jobs enqueued; worker logs in {logs}")
            for n in range(config.workers):
                supervisor.start(KINDS[n % len(KINDS)])
            deadline = time.monotonic() + config.timeout
            events = config.events()
            for index, event in enumerate(events):
                threshold = config.jobs * (index + 1) // (len(events) + 2)
                _wait(run, lambda t=threshold: run.succeeded() >= t, deadline, "progress")
                run.fire(event)
                run.check_deaths()
            _wait(run, lambda: run.succeeded() >= len(ids), deadline, "every job")
            _wait(run, lambda: not run.paused, deadline, "the paused worker's rescue")
            changed = _late_writes_changed(run)
            run.check_deaths()
            codes = supervisor.stop_all()
            run.deaths += [
                f"pid {pid} exited {code} on SIGTERM" for pid, code in codes.items() if code
            ]
            run.deaths += [f"late writes changed job {job_id}" for job_id in changed]
            report = judge(
                engine,
                ids,
                effect_ids,
                killed={w.pid for w in supervisor.killed},
                paused=supervisor.ever_paused,
                effects_checked=config.transactional,
                kills=len(supervisor.killed),
                terminations=config.terminations,
                restarts={m: config.restarts.count(m) for m in set(config.restarts)},
                pauses=len(supervisor.ever_paused),
                paused_jobs=sum(len(jobs) for _, jobs in run.late_checks),
                worker_deaths=run.deaths,
                seconds=time.monotonic() - run.started,
                restart_seconds=run.restart_seconds,
            )
            if report.ok:
                shutil.rmtree(logs, ignore_errors=True)
            else:
                run.say(f"worker logs kept in {logs}")
            return report
        finally:
            supervisor.kill_all()
            engine.dispose()
            admin.dispose()


def write_doc(path: Path, command: str, config: Config, report: Report) -> None:
    took = ", ".join(f"{s:.1f}" for s in report.restart_seconds)
    restarts = ", ".join(f"{n} {mode}" for mode, n in sorted(report.restarts.items()))
    rows = [
        ("jobs", f"{report.jobs} ({report.succeeded} succeeded)"),
        ("worker processes", f"{config.workers} at a time (threads, asyncio, trio, threads)"),
        ("SIGKILLed workers (each replaced)", report.kills),
        ("pg_terminate_backend rounds (every connection)", report.terminations),
        ("PostgreSQL restarts", f"{restarts} (took {took} s)"),
        (
            "workers SIGSTOPped past the lease, then resumed",
            f"{report.pauses} (holding {report.paused_jobs} running jobs)",
        ),
        ("lost (never succeeded / missing)", len(report.lost)),
        ("unfinished", len(report.unfinished)),
        ("jobs executed more than once", report.duplicated_jobs),
        ("extra executions", report.duplicate_executions),
        ("… jobs with an extra execution on a killed or paused worker", report.killed_duplicates),
        ("… unexplained (at-least-once jobs re-run on a live worker)", len(report.unexplained)),
        ("transactional jobs (effect through job.connection)", report.effect_jobs),
        ("… effects not exactly once", len(report.effect_errors)),
        ("… re-run after an attempt failed with its connection", report.effect_retries),
        ("worker processes that died on their own", len(report.worker_deaths)),
        ("wall time", f"{report.seconds:.0f} s"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    marker = "<!-- figures -->"
    head = old.split(marker)[0] if marker in old else old or "# Fault run\n\n"
    path.write_text(
        f"{head}{marker}\n\nCommand: `{command}` (what `python -m nox -s faults` runs)\n\n"
        f"| figure | value |\n|---|---|\n{table}\n\n{report.summary()}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--terminations", type=int, default=4)
    parser.add_argument("--restarts", default="fast,immediate,fast,immediate")
    parser.add_argument("--no-pause", action="store_true", help="skip the stale-worker fault")
    parser.add_argument(
        "--no-transactional", action="store_true", help="skip the exactly-once effect tasks"
    )
    parser.add_argument("--lease-timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--doc", type=Path, help="write the figures to this Markdown file")
    args = parser.parse_args(argv)
    config = Config(
        jobs=args.jobs,
        workers=args.workers,
        kills=args.kills,
        terminations=args.terminations,
        restarts=tuple(m for m in args.restarts.split(",") if m),
        pause=not args.no_pause,
        transactional=fault_app.TRANSACTIONAL and not args.no_transactional,
        lease_timeout=args.lease_timeout,
        seed=args.seed,
    )
    report = run_faults(config)
    print(report.summary())
    if args.doc:
        command = " ".join(["python tests/faults/fault_run.py", *(argv or sys.argv[1:])])
        write_doc(args.doc, command, config, report)
    if not report.ok:
        for name in ("lost", "unfinished", "unexplained", "unrecorded", "effect_errors"):
            values = getattr(report, name)
            if values:
                print(f"  {name}: {values[:20]}")
        for death in report.worker_deaths:
            print(f"  {death}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
