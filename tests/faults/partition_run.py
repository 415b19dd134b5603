"""The partition run: a real `pgq-sa run` worker process reaches PostgreSQL through the
partition proxy while a healthy worker connects directly; the run cuts the network under it,
heals it (old connections alive or dead), cuts only its LISTEN connection, or makes one of its
statements hang on a lock, and an oracle judges from the database alone.
`python tests/faults/partition_run.py --help`.

Scenarios (each on threads, asyncio or trio for the cut worker):

* ``heal-alive`` / ``heal-dead``: cut while the worker runs jobs; the healthy worker rescues
  them after the lease; probes (a task only the cut worker knows) are queued; the network heals
  with the old connections alive or dead. The cut worker must log its late outcomes as
  ``lease lost`` and claim probes again within ``back_within``.
* ``listen-alive`` / ``listen-dead``: only the LISTEN connection is cut; probes show wake-ups
  falling back to polling (their latency near ``--poll-interval``), then, after the heal,
  coming by NOTIFY again (latency under a third of it) within ``resume_within``.
* ``hung-statement``: the run locks the row of a job the worker runs, so the statement writing
  its outcome waits on the lock server-side; no wait of the worker's may outlast
  ``statement_timeout`` plus the margin, and SIGTERM must end the worker while the lock is
  still held.

Every scenario ends with SIGTERM to every process (each must exit within ``shutdown_timeout``
plus the margin; what does not gets SIGABRT, which writes its threads' stacks to its log, then
SIGKILL) and the oracle: nothing lost, every job succeeded,
duplicate executions only of jobs the cut worker ran before the heal (or before it was stopped),
no outcome overwritten by a late write. Every wait is bounded: a worker that hangs makes its
check fail, never the run wedge. ``network="netns"`` runs the cut worker in a network
namespace, where a cut is a kernel blackhole (keepalives and ``tcp_user_timeout`` can fire);
``"proxy"`` (any machine) cuts in user space, where only client-side deadlines can notice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

sys.path.insert(0, str(Path(__file__).parent))

import fault_app
import netns
import partition_app
from fault_injectors import own_server
from fault_supervisor import KIND_ARGS, Supervisor, WorkerProcess
from partition_proxy import PartitionProxy, upstream_address

from pgq_sa import JobSpec, Queue
from pgq_sa._config import sync_url
from pgq_sa.migrations import db_upgrade

SCENARIOS = ("heal-alive", "heal-dead", "listen-alive", "listen-dead", "hung-statement")
KINDS = tuple(KIND_ARGS)
NETWORKS = ("proxy", "netns")
LEASE_LOST = "lease lost"


@dataclass(frozen=True)
class Config:
    scenario: str
    kind: str = "threads"
    network: str = "proxy"
    lease_timeout: float = 4.0
    heartbeat_interval: float = 0.5
    poll_interval: float = 0.5
    listen_poll_interval: float = 3.0  # the listen scenarios: long enough to tell from NOTIFY
    shutdown_timeout: float = 3.0
    margin: float = 5.0
    statement_timeout: float = 10.0  # the workers' statement deadline (the new core's default)
    application_name: str | None = None  # in the cut worker's URL
    worker_args: tuple[str, ...] = ()  # more `pgq-sa run` options for every worker
    workers_from: Path | None = None  # run the workers on the pgq_sa of this checkout
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}")

    @property
    def rescue_within(self) -> float:
        return self.lease_timeout + 2 * self.heartbeat_interval + self.margin

    @property
    def back_within(self) -> float:
        """After a heal: statements of the cut time out, the worker reconnects, registers."""
        return self.statement_timeout + 2 * self.margin

    @property
    def resume_within(self) -> float:
        """After a LISTEN heal: a dead LISTEN connection noticed, reconnected, a probe sent."""
        return self.statement_timeout + 2 * self.listen_poll_interval + self.margin

    @property
    def stop_within(self) -> float:
        return self.shutdown_timeout + self.margin


@dataclass
class Outcome:
    """What a scenario showed: named checks (True: held), figures, and notes on failures."""

    config: Config
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logs: Path | None = None

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, held in self.checks.items() if not held]

    def check(self, name: str, held: bool, note: str = "") -> bool:
        self.checks[name] = held
        if not held and note:
            self.notes.append(f"{name}: {note}")
        return held

    def summary(self) -> str:
        config = self.config
        head = f"{config.scenario} on {config.kind} ({config.network})"
        verdict = "OK" if self.ok else f"FAILED ({', '.join(self.failed)})"
        figures = ", ".join(f"{k} {_show(v)}" for k, v in self.figures.items())
        lines = [f"{head}: {verdict}; {figures}", *(f"  {n}" for n in self.notes)]
        if not self.ok and self.logs is not None:
            lines.append(f"  worker logs kept in {self.logs}")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}s"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


# --- the oracle ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    lost: list[int]  # failed, cancelled or missing
    unfinished: list[int]  # still queued or running
    duplicated: int  # jobs executed more than once
    extra: int  # executions beyond the first
    unexplained: list[int]  # a non-final execution other than the cut worker's before the fault
    overwritten: list[int]  # the stored result is not that of the final attempt's execution


def judge(engine: Engine, ids: list[int], cut_pid: int, explained_before: Any) -> Verdict:
    """Read the jobs and their executions; an execution that was not the final attempt is
    explained only if it ran on the cut worker before ``explained_before`` (a database time:
    the heal, or when the worker was stopped; None explains nothing)."""
    with engine.connect() as connection:
        final = {
            row.id: row
            for row in connection.execute(
                text("SELECT id, state::text AS state, attempt, result FROM pgq.jobs")
            )
        }
        runs: dict[int, list[Any]] = {}
        for row in connection.execute(text("SELECT job_id, attempt, pid, at FROM fault_runs")):
            runs.setdefault(row.job_id, []).append(row)
    lost, unfinished, unexplained, overwritten = [], [], [], []
    duplicated = extra = 0
    for job_id in ids:
        job = final.get(job_id)
        if job is None or job.state in ("failed", "cancelled"):
            lost.append(job_id)
            continue
        if job.state != "succeeded":
            unfinished.append(job_id)
            continue
        executions = runs.get(job_id, [])
        if len(executions) > 1:
            duplicated += 1
            extra += len(executions) - 1
        stale = [run for run in executions if run.attempt != job.attempt]
        if any(
            run.pid != cut_pid or explained_before is None or run.at >= explained_before
            for run in stale
        ):
            unexplained.append(job_id)
        final_pids = {run.pid for run in executions if run.attempt == job.attempt}
        if (job.result or {}).get("pid") not in final_pids:
            overwritten.append(job_id)
    return Verdict(lost, unfinished, duplicated, extra, unexplained, overwritten)


# --- the run -------------------------------------------------------------------------------------


@contextlib.contextmanager
def server_url(url: URL | None = None) -> Iterator[URL]:
    """``url``, else PGQ_SA_TEST_DATABASE_URL, else an embedded server for the duration."""
    configured = url or os.environ.get("PGQ_SA_TEST_DATABASE_URL")
    if configured:
        yield sync_url(configured)
        return
    with own_server() as server:
        yield sync_url(server.url)


class Run:
    """One scenario's database, proxies, namespace and processes; everything is stopped,
    killed, closed and dropped on the way out, whatever happened."""

    def __init__(
        self, config: Config, server: URL, stack: contextlib.ExitStack, logs: Path | None
    ) -> None:
        self.config = config
        self.started = time.monotonic()
        self.own_logs = logs is None
        self.logs = logs or Path(tempfile.mkdtemp(prefix="pgq_sa_partition_logs_"))
        self.database = f"pgq_sa_partition_{uuid.uuid4().hex[:10]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        stack.callback(admin.dispose)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        stack.callback(self._drop, admin)
        self.url = server.set(database=self.database)
        self.engine = create_engine(self.url, pool_pre_ping=True)
        stack.callback(self.engine.dispose)
        db_upgrade(self.engine)
        with self.engine.begin() as connection:
            for statement in fault_app.SIDE_TABLES:
                connection.execute(text(statement))
        self.netns: netns.Netns | None = None
        if config.network == "netns":
            reason = netns.unavailable()
            if reason is not None:
                raise RuntimeError(f"network 'netns': {reason}")
            self.netns = stack.enter_context(netns.Netns.created())
        upstream = upstream_address(server)
        self.proxy = stack.enter_context(PartitionProxy.running(upstream, self.netns))
        side_url = self.url
        if self.netns is not None:  # the recording connection must reach out of the namespace
            side_proxy = stack.enter_context(PartitionProxy.running(upstream, self.netns))
            side_url = side_proxy.url(self.url)
        cut_url = self.proxy.url(self.url)
        if config.application_name:
            cut_url = cut_url.update_query_dict({"application_name": config.application_name})
        self.supervisors = self._supervisors(cut_url, side_url, stack)
        self.cut_supervisor, self.healthy_supervisor, self.drainer_supervisor = self.supervisors
        self.ids: list[int] = []
        self.ended: set[int] = set()  # pids the run itself stopped

    def _supervisors(
        self, cut_url: URL, side_url: URL, stack: contextlib.ExitStack
    ) -> list[Supervisor]:
        """The cut worker's (in the namespace, if any), the healthy worker's and the
        drainer's; every process they start is killed on the way out."""
        config = self.config
        # PYTHONFAULTHANDLER: a process that ignores SIGTERM gets SIGABRT, which makes it
        # write every thread's stack to its log before it is killed.
        env = {"FAULT_DATABASE_URL": _plain(side_url), "PYTHONFAULTHANDLER": "1"}
        if config.workers_from is not None:
            here = Path(__file__).parent
            env["PYTHONPATH"] = os.pathsep.join([str(config.workers_from.resolve()), str(here)])
        listens = config.scenario.startswith("listen")
        cut_poll = config.listen_poll_interval if listens else config.poll_interval
        supervisors = []
        for label, url, target, prefix, poll in (
            (
                "cut",
                cut_url,
                "partition_app:cut_queue",
                self.netns.prefix if self.netns else [],
                cut_poll,
            ),
            ("healthy", self.url, "partition_app:healthy_queue", [], config.poll_interval),
            ("drainer", self.url, "partition_app:cut_queue", [], config.poll_interval),
        ):
            options = [
                "--heartbeat-interval",
                str(config.heartbeat_interval),
                "--lease-timeout",
                str(config.lease_timeout),
                "--shutdown-timeout",
                str(config.shutdown_timeout),
                "--poll-interval",
                str(poll),
                "--log-level",
                "info",
                *config.worker_args,
            ]
            supervisor = Supervisor(
                url=_plain(url.set(drivername="postgresql")),  # asyncio: asyncpg
                targets=dict.fromkeys(KINDS, target),
                logs=self.logs,
                options=options,
                env=env,
                prefix=prefix,
                label=label,
            )
            supervisors.append(supervisor)
            stack.callback(supervisor.kill_all)
        return supervisors

    def _drop(self, admin: Engine) -> None:
        self.engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def say(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    # --- processes ---

    def start_cut(self) -> WorkerProcess:
        return self.cut_supervisor.start(self.config.kind)

    def start_healthy(self) -> WorkerProcess:
        return self.healthy_supervisor.start("threads")

    def start_drainer(self) -> WorkerProcess:
        """A direct worker for everything, when the cut worker cannot finish its part."""
        self.say("starting a drainer")
        return self.drainer_supervisor.start("threads")

    def stop_all(self, outcome: Outcome) -> None:
        """SIGTERM every live process at once; each must exit within ``stop_within``; kill
        what does not. Figures: the slowest exit, and the processes that had to be killed.
        A process that had already exited, unless the run stopped it, died on its own."""
        everyone = [w for s in self.supervisors for w in s.live]
        died = [w for w in everyone if w.process.poll() is not None and w.pid not in self.ended]
        outcome.check(
            "no worker died on its own",
            not died,
            "; ".join(
                f"{w.log.name} exited {w.process.returncode}: {self.last_words(w)}" for w in died
            ),
        )
        workers = [w for w in everyone if w.process.poll() is None]
        sent = time.monotonic()
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        slowest, hung, codes = 0.0, [], []
        for worker in workers:
            try:
                left = max(0.1, sent + self.config.stop_within - time.monotonic())
                codes.append(worker.process.wait(left))
                slowest = max(slowest, time.monotonic() - sent)
            except subprocess.TimeoutExpired:
                hung.append(f"{worker.log.name.split('-')[0]} ({worker.kind})")
                _abort(worker)
        if workers:
            outcome.figures["slowest exit on SIGTERM"] = slowest
        outcome.check(
            "every process exits on SIGTERM",
            not hung and not any(codes),
            f"still running {self.config.stop_within:g}s after SIGTERM (aborted: every "
            f"thread's stack is in its log): {', '.join(hung)}"
            if hung
            else f"exit codes {codes}",
        )

    def log_of(self, worker: WorkerProcess) -> str:
        return worker.log.read_text(errors="replace")

    def last_words(self, worker: WorkerProcess) -> str:
        """The last error line of a worker's log (its last line if none)."""
        lines = self.log_of(worker).strip().splitlines() or ["(no output)"]
        errors = [line for line in lines if "Error" in line or " ERROR " in line]
        return (errors or lines)[-1][-300:]

    # --- the database ---

    def query(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(statement), params))

    def now(self) -> Any:
        return self.query("SELECT clock_timestamp()")[0][0]

    def enqueue(self, task: str, count: int, **payload: Any) -> list[int]:
        ids = Queue().enqueue_many(self.engine, [JobSpec(task, dict(payload))] * count)
        self.ids += ids
        return ids

    def registered(self, pid: int) -> bool:
        rows = self.query("SELECT count(*) FROM pgq.workers WHERE pid = :pid", pid=pid)
        return bool(rows[0][0])

    def running_on(self, pid: int) -> list[int]:
        rows = self.query(
            "SELECT j.id FROM pgq.jobs AS j JOIN pgq.workers AS w ON j.worker_id = w.id "
            "WHERE w.pid = :pid AND j.state = 'running' ORDER BY j.id",
            pid=pid,
        )
        return [row[0] for row in rows]

    def executed_since(self, pid: int, since: Any) -> int:
        rows = self.query(
            "SELECT count(*) FROM fault_runs WHERE pid = :pid AND at > :since", pid=pid, since=since
        )
        return int(rows[0][0])

    def all_final(self) -> bool:
        rows = self.query(
            "SELECT count(*) FROM pgq.jobs WHERE id = ANY(:ids) "
            "AND state NOT IN ('succeeded', 'failed', 'cancelled')",
            ids=self.ids,
        )
        return rows[0][0] == 0

    def watch(self, look: Callable[[], object], seconds: float) -> None:
        """Call ``look()`` every 50 ms for ``seconds``."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            with contextlib.suppress(DBAPIError):
                look()
            time.sleep(0.05)

    def wait(self, done: Callable[[], bool], within: float) -> float | None:
        """Seconds until ``done()``, or None if it did not happen within ``within``."""
        started = time.monotonic()
        while True:
            try:
                if done():
                    return time.monotonic() - started
            except DBAPIError:
                pass
            if time.monotonic() - started > within:
                return None
            time.sleep(0.05)

    def finish(self, outcome: Outcome, cut: WorkerProcess, explained_before: Any) -> None:
        """Make sure every job can finish (a drainer if the cut worker is gone or stuck),
        stop everyone, and judge."""
        if self.wait(self.all_final, 10 + self.config.lease_timeout) is None:
            self.start_drainer()
            self.wait(self.all_final, 20 + self.config.rescue_within)
        self.stop_all(outcome)
        verdict = judge(self.engine, self.ids, cut.pid, explained_before)
        outcome.figures["jobs"] = len(self.ids)
        outcome.figures["duplicated jobs"] = verdict.duplicated
        outcome.figures["extra executions"] = verdict.extra
        outcome.check("nothing lost", not verdict.lost, f"jobs {verdict.lost}")
        outcome.check("every job finished", not verdict.unfinished, f"jobs {verdict.unfinished}")
        outcome.check(
            "duplicates only of the cut worker's jobs before the fault",
            not verdict.unexplained,
            f"jobs {verdict.unexplained}",
        )
        outcome.check("no outcome overwritten", not verdict.overwritten, f"{verdict.overwritten}")


def _abort(worker: WorkerProcess) -> None:
    """End a process that did not stop: SIGABRT first (its threads' stacks go to its log),
    then SIGKILL."""
    worker.process.send_signal(signal.SIGABRT)
    try:
        worker.process.wait(3)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()


def _plain(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _registered(run: Run, outcome: Outcome, workers: list[WorkerProcess]) -> bool:
    def settled() -> bool:
        return any(w.process.poll() is not None for w in workers) or all(
            run.registered(w.pid) for w in workers
        )

    run.wait(settled, 60)
    dead = [w for w in workers if w.process.poll() is not None]
    if dead:
        run.ended.update(w.pid for w in dead)  # reported here, not again as a death
        return outcome.check(
            "workers started", False, f"{dead[0].kind} exited: {run.last_words(dead[0])}"
        )
    held = all(run.registered(w.pid) for w in workers)
    return outcome.check("workers started", held, "not registered within 60 s")


# --- scenarios -----------------------------------------------------------------------------------

# What a scenario hands to the oracle: the cut worker, and until when (a database time) its
# executions that did not become the final attempt are explained (None: none are).
Stopped = tuple[WorkerProcess, Any]


def heal(run: Run, outcome: Outcome, *, alive: bool) -> Stopped:
    config = run.config
    cut = run.start_cut()
    healthy = run.start_healthy()
    if not _registered(run, outcome, [cut, healthy]):
        return cut, None
    run.enqueue(partition_app.HOLD, 12, seconds=2.0)
    if run.wait(lambda: bool(run.running_on(cut.pid)), 30) is None:
        outcome.check("the cut worker ran jobs", False, "none within 30 s")
        return cut, None
    held = run.running_on(cut.pid)
    run.proxy.cut()
    run.say(f"cut: worker {cut.pid} holds {len(held)} running jobs")
    outcome.figures["jobs held at the cut"] = len(held)
    rescued = run.wait(lambda: not run.registered(cut.pid), config.rescue_within)
    outcome.figures["rescue after"] = rescued
    outcome.check("rescued after the lease", rescued is not None, "the cut worker's row stayed")
    run.enqueue(partition_app.PROBE, 8)
    healed_at = run.now()
    run.proxy.heal(alive=alive)
    run.say(f"healed ({'alive' if alive else 'dead'})")
    back = run.wait(lambda: run.executed_since(cut.pid, healed_at) > 0, config.back_within)
    outcome.figures["back after the heal"] = back if back is not None else "never"
    if not outcome.check(
        "the cut worker works again",
        back is not None,
        f"claimed nothing within {config.back_within:g}s of the heal",
    ):
        run.start_drainer()  # the probes need someone
    # The late outcomes may ride a claim on a connection the cut killed (it waits out its
    # deadline), then go back to the completer, whose idle connection may be dead too (another
    # deadline), and its retry backs off before a fresh connection writes them: up to two
    # statement_timeouts after the worker is back (one was seen not to suffice on a loaded
    # machine). The wait ends as soon as the line is logged.
    late = 2 * config.statement_timeout + config.margin
    lost = run.wait(lambda: LEASE_LOST in run.log_of(cut), late if back else 0)
    outcome.check(
        "late outcomes refused as 'lease lost'",
        lost is not None,
        "the cut worker logged no 'lease lost'",
    )
    return cut, healed_at


def _probe_latency(run: Run, within: float) -> float | None:
    """Enqueue one probe; seconds from its commit to its execution (database clock)."""
    (job_id,) = run.enqueue(partition_app.PROBE, 1)
    query = (
        "SELECT extract(epoch FROM r.at - j.created_at) FROM fault_runs AS r "
        "JOIN pgq.jobs AS j ON j.id = r.job_id WHERE r.job_id = :id"
    )
    found: list[Any] = []

    def ran() -> bool:
        found[:] = run.query(query, id=job_id)
        return bool(found)

    return None if run.wait(ran, within) is None else float(found[0][0])


def listen(run: Run, outcome: Outcome, *, alive: bool) -> Stopped:
    config = run.config
    poll = config.listen_poll_interval
    notified = poll / 3  # a wake-up by NOTIFY takes milliseconds, one by polling up to `poll`
    cut = run.start_cut()
    if not _registered(run, outcome, [cut]):
        return cut, None
    try:
        listening = run.proxy.wait_for(lambda link: link.listens, 30)
    except TimeoutError:
        outcome.check("the LISTEN connection found", False, "no connection sent LISTEN")
        return cut, None
    before = [_probe_latency(run, poll + config.margin) for _ in range(2)]
    run.proxy.cut_matching(lambda link: link is listening)
    during = [_probe_latency(run, poll + config.margin) for _ in range(2)]
    outcome.figures["wake-up latency before"] = before
    outcome.figures["during the cut"] = during
    outcome.check(
        "wake-ups by NOTIFY before the cut",
        all(x is not None and x < notified for x in before),
        f"latencies {before}",
    )
    outcome.check(
        "polling takes over during the cut",
        all(x is not None for x in during),
        f"probes not run within poll interval + margin: {during}",
    )
    outcome.check(
        "the cut reached the LISTEN connection",
        all(x is None or x >= notified for x in during),
        f"a probe was notified during the cut: {during}",
    )
    run.proxy.heal(alive=alive)
    healed = time.monotonic()
    resumed = None
    while resumed is None and time.monotonic() - healed < config.resume_within:
        latency = _probe_latency(run, poll + config.margin)
        if latency is not None and latency < notified:
            resumed = time.monotonic() - healed
    relisten = [link for link in run.proxy.links if link.listens and link.index > listening.index]
    outcome.figures["LISTEN reconnected"] = "yes" if relisten else "no"
    outcome.figures["notified again after"] = resumed if resumed is not None else "never"
    outcome.check(
        "wake-ups by NOTIFY again after the heal",
        resumed is not None,
        f"still polling {config.resume_within:g}s after the heal",
    )
    return cut, None


def hung_statement(run: Run, outcome: Outcome) -> Stopped:
    cut = run.start_cut()
    if not _registered(run, outcome, [cut]):
        return cut, None
    run.enqueue(partition_app.HOLD, 6, seconds=1.5)
    if run.wait(lambda: bool(run.running_on(cut.pid)), 30) is None:
        outcome.check("the worker ran jobs", False, "none within 30 s")
        return cut, None
    victim = run.running_on(cut.pid)[0]
    with run.engine.connect() as locker:
        stopped_at = _hold_lock(run, outcome, cut, locker, victim)
    return cut, stopped_at


def _hold_lock(
    run: Run, outcome: Outcome, cut: WorkerProcess, locker: Connection, victim: int
) -> Any:
    """Lock the row of ``victim`` (running on ``cut``) until the worker gave up on it or the
    bounds passed, and SIGTERM the worker while still holding it; when it was stopped."""
    config = run.config
    locker.execute(text("SELECT id FROM pgq.jobs WHERE id = :id FOR UPDATE"), {"id": victim})
    me = locker.execute(text("SELECT pg_backend_pid()")).scalar_one()
    waits = (
        "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), -1) "
        "FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"
    )
    longest = [-1.0]

    def blocked() -> bool:
        longest[0] = max(longest[0], float(run.query(waits, me=me)[0][0]))
        return longest[0] >= 0

    waiting = run.wait(blocked, 15)
    outcome.check("the outcome's statement waits on the lock", waiting is not None, "it never did")
    if waiting is not None:
        run.enqueue(partition_app.HOLD, 4, seconds=0.2)
        since = run.now()
        run.watch(blocked, config.statement_timeout + config.margin)
        outcome.figures["longest wait on the lock"] = longest[0]
        outcome.figures["jobs done meanwhile"] = run.executed_since(cut.pid, since)
        outcome.check(
            "no statement outlives the deadline",
            longest[0] < config.statement_timeout + config.margin,
            f"a statement waited {longest[0]:.1f}s (deadline {config.statement_timeout:g}s)",
        )
    stopped_at = run.now()
    sent = time.monotonic()
    run.ended.add(cut.pid)
    cut.process.send_signal(signal.SIGTERM)
    exited = run.wait(lambda: cut.process.poll() is not None, config.stop_within)
    outcome.figures["exit on SIGTERM, lock held"] = exited if exited is not None else "hung"
    outcome.check(
        "SIGTERM stops the worker while its statement hangs",
        exited is not None,
        f"still running {config.stop_within:g}s after SIGTERM",
    )
    locker.rollback()
    if exited is None:
        late = run.wait(lambda: cut.process.poll() is not None, config.margin)
        outcome.notes.append(
            f"after the lock was released it exited in {late:.1f}s"
            if late is not None
            else "it did not exit after the lock was released either: killed"
        )
        if late is None:
            _abort(cut)
        outcome.figures["exit after the release"] = late if late is not None else "killed"
    outcome.figures["stop took"] = time.monotonic() - sent
    return stopped_at


def run_partition(config: Config, server: URL | None = None, logs: Path | None = None) -> Outcome:
    """Run one scenario against ``server`` (default: PGQ_SA_TEST_DATABASE_URL, else an
    embedded PostgreSQL of its own); the outcome says what held. The workers log to ``logs``
    (default: a temporary folder, removed if every check held)."""
    outcome = Outcome(config)
    with server_url(server) as url, contextlib.ExitStack() as stack:
        run = Run(config, url, stack, logs)
        outcome.logs = run.logs
        if config.scenario in ("heal-alive", "heal-dead"):
            cut, explained_before = heal(run, outcome, alive=config.scenario == "heal-alive")
        elif config.scenario in ("listen-alive", "listen-dead"):
            cut, explained_before = listen(run, outcome, alive=config.scenario == "listen-alive")
        else:
            cut, explained_before = hung_statement(run, outcome)
        run.finish(outcome, cut, explained_before)
        if config.application_name:
            names = {link.application_name for link in run.proxy.links}
            outcome.figures["application names seen"] = ",".join(sorted(str(n) for n in names))
    if outcome.ok and run.own_logs:
        with contextlib.suppress(OSError):
            for path in run.logs.iterdir():
                path.unlink()
            run.logs.rmdir()
        outcome.logs = None
    return outcome


# --- command line --------------------------------------------------------------------------------


def write_doc(path: Path, command: str, outcomes: list[Outcome]) -> None:
    """Put the figures between the ``<!-- partition figures -->`` and
    ``<!-- /partition figures -->`` markers of ``path`` (at its end if it has none)."""
    begin, end = "<!-- partition figures -->", "<!-- /partition figures -->"
    rows = [
        f"| {o.config.scenario} | {o.config.kind} | {o.config.network} | "
        f"{'held' if o.ok else 'FAILED: ' + '; '.join(o.failed)} | "
        + "; ".join(f"{k} {_show(v)}" for k, v in o.figures.items())
        + " |"
        for o in outcomes
    ]
    table = "\n".join(
        [
            "| scenario | cut worker | network | result | figures |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    old = path.read_text() if path.exists() else ""
    head, _, rest = old.partition(begin) if begin in old else (old, "", "")
    tail = rest.partition(end)[2] if end in rest else ""
    block = f"{begin}\n\nCommand: `{command}`\n\n{table}\n\n{end}"
    path.write_text(f"{head}{block}{tail if tail else chr(10)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="all", help=f"all or one of {', '.join(SCENARIOS)}")
    parser.add_argument("--kind", default="all", help=f"all or one of {', '.join(KINDS)}")
    parser.add_argument("--network", default="proxy", help="proxy, netns or both")
    parser.add_argument(
        "--statement-timeout",
        type=float,
        default=Config.statement_timeout,
        help="the workers' statement deadline, for the bounds (pass it to new-core workers "
        "too: --worker-arg=--statement-timeout=S)",
    )
    parser.add_argument("--application-name", help="put application_name in the cut URL")
    parser.add_argument(
        "--worker-arg", action="append", default=[], help="another `pgq-sa run` option"
    )
    parser.add_argument(
        "--workers-from",
        type=Path,
        metavar="DIR",
        help="run the workers on the pgq_sa package in DIR (e.g. an export of another commit)",
    )
    parser.add_argument("--doc", type=Path, help="write the figures to this Markdown file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    networks = NETWORKS if args.network == "both" else (args.network,)
    outcomes = []
    with server_url() as url:
        for network in networks:
            for scenario in scenarios:
                for kind in kinds:
                    config = Config(
                        scenario,
                        kind,
                        network,
                        statement_timeout=args.statement_timeout,
                        application_name=args.application_name,
                        worker_args=tuple(args.worker_arg),
                        workers_from=args.workers_from,
                        verbose=not args.quiet,
                    )
                    outcome = run_partition(config, url)
                    print(outcome.summary(), flush=True)
                    outcomes.append(outcome)
    if args.doc:
        command = " ".join(["python tests/faults/partition_run.py", *(argv or sys.argv[1:])])
        write_doc(args.doc, command, outcomes)
    failed = [o for o in outcomes if not o.ok]
    print(f"partitions: {len(outcomes) - len(failed)} held, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
