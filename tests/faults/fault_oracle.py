"""The fault run's oracle: from the jobs table and the side tables, what was lost, duplicated
or left unfinished, and whether every duplicate is explained by a worker the run killed or
paused.

A job's execution is a row of ``fault_runs`` (job id, attempt, pid). The execution whose attempt
is the job's final attempt is the one that succeeded; for the at-least-once tasks any other
execution must have run on a process the run SIGKILLed or SIGSTOPped past its lease, otherwise it
is unexplained. A transactional attempt also fails, by design, when its connection is terminated
or the server restarts under it (its effect rolled back, the job retried): for those tasks extra
executions are counted, and the check is that the effect exists exactly once, written by the
final attempt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Engine, text


@dataclass
class Report:
    jobs: int
    kills: int
    terminations: int
    restarts: dict[str, int]
    pauses: int
    succeeded: int
    lost: list[int]  # enqueued, and now missing or finished without success
    unfinished: list[int]  # still queued or running
    duplicated_jobs: int  # jobs executed more than once
    duplicate_executions: int  # executions beyond the first
    unexplained: list[int]  # at-least-once jobs with an extra execution on a live process
    killed_duplicates: int  # jobs with an extra execution on a killed or paused process
    unrecorded: list[int]  # succeeded, but no execution row for the final attempt
    effects_checked: bool
    effect_jobs: int = 0
    effect_errors: list[int] = field(default_factory=list)  # not exactly one effect (or stale)
    effect_retries: int = 0  # transactional jobs re-run after a failed attempt on a live process
    worker_deaths: list[str] = field(default_factory=list)  # exits nobody caused
    seconds: float = 0.0
    restart_seconds: list[float] = field(default_factory=list)
    paused_jobs: int = 0  # jobs the paused workers held when stopped

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unfinished
            or self.unexplained
            or self.unrecorded
            or self.effect_errors
            or self.worker_deaths
            or self.succeeded != self.jobs
        )

    def summary(self) -> str:
        restarts = ", ".join(f"{mode} {n}" for mode, n in sorted(self.restarts.items()))
        effects = (
            f"effects {self.effect_jobs} jobs, {len(self.effect_errors)} not exactly once, "
            f"{self.effect_retries} retried after a database fault"
            if self.effects_checked
            else "effects not checked (transactional tasks unavailable)"
        )
        return (
            f"faults {'OK' if self.ok else 'FAILED'}: {self.jobs} jobs, {self.succeeded} "
            f"succeeded, {self.kills} kills, {self.terminations} terminations, restarts "
            f"({restarts}), {self.pauses} paused past the lease; lost {len(self.lost)}, "
            f"unfinished {len(self.unfinished)}, duplicated {self.duplicated_jobs} jobs "
            f"({self.duplicate_executions} extra executions; {self.killed_duplicates} jobs on "
            f"killed/paused workers, {len(self.unexplained)} unexplained), unrecorded "
            f"{len(self.unrecorded)}; {effects}; worker deaths "
            f"{len(self.worker_deaths)}; {self.seconds:.1f} s"
        )


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT state::text, count(*) FROM pgq.jobs GROUP BY 1"))
        return {state: int(count) for state, count in rows}


def judge(
    engine: Engine,
    ids: list[int],
    effect_ids: list[int],
    *,
    killed: set[int],
    paused: set[int],
    effects_checked: bool,
    **counts: object,
) -> Report:
    with engine.connect() as connection:
        final = {
            job_id: (state, attempt)
            for job_id, state, attempt in connection.execute(
                text("SELECT id, state::text, attempt FROM pgq.jobs")
            )
        }
        runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for job_id, attempt, pid in connection.execute(
            text("SELECT job_id, attempt, pid FROM fault_runs")
        ):
            runs[job_id].append((attempt, pid))
        effects: dict[int, list[int]] = defaultdict(list)
        for job_id, attempt in connection.execute(
            text("SELECT job_id, attempt FROM fault_effects")
        ):
            effects[job_id].append(attempt)
    lost, unfinished, unexplained, unrecorded = [], [], [], []
    duplicated = extra = succeeded = on_killed = retried = 0
    explaining = killed | paused
    transactional = set(effect_ids)
    for job_id in ids:
        state, attempt = final.get(job_id, ("missing", 0))
        if state in ("queued", "running"):
            unfinished.append(job_id)
            continue
        if state != "succeeded":
            lost.append(job_id)
            continue
        succeeded += 1
        executions = runs.get(job_id, [])
        if not any(a == attempt for a, _ in executions):
            unrecorded.append(job_id)
        if len(executions) > 1:
            duplicated += 1
            extra += len(executions) - 1
            if any(a != attempt and pid in explaining for a, pid in executions):
                on_killed += 1
            if any(a != attempt and pid not in explaining for a, pid in executions):
                if job_id in transactional:
                    retried += 1
                else:
                    unexplained.append(job_id)
    effect_errors = [
        job_id
        for job_id in effect_ids
        if effects_checked and effects.get(job_id, []) != [final.get(job_id, ("missing", -1))[1]]
    ]
    return Report(
        jobs=len(ids),
        succeeded=succeeded,
        lost=lost,
        unfinished=unfinished,
        duplicated_jobs=duplicated,
        duplicate_executions=extra,
        unexplained=unexplained,
        killed_duplicates=on_killed,
        effect_retries=retried,
        unrecorded=unrecorded,
        effects_checked=effects_checked,
        effect_jobs=len(effect_ids) if effects_checked else 0,
        effect_errors=effect_errors,
        **counts,  # type: ignore[arg-type]
    )
