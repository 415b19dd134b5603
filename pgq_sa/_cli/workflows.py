"""``pgq-sa workflows list|show|cancel|retry``: workflows from the command line.

``show`` draws the steps as a text tree: each step under the step it waits for (a step that waits
for several appears in full under the first and as a reference under the others).
"""

from __future__ import annotations

import json
from typing import Any

import click

from pgq_sa._cli.app import Context, cli, fail, handles_errors, pass_context
from pgq_sa._cli.jobs import _job_json
from pgq_sa._cli.monitor import echo_json, iso
from pgq_sa._errors import DedupeConflict
from pgq_sa._format import duration
from pgq_sa._job import JobInfo
from pgq_sa._ops import workflows as wf_operations
from pgq_sa._ops.drive import run_sync
from pgq_sa._queue import Queue
from pgq_sa._schema import JobStatus
from pgq_sa._workflow import WorkflowInfo, WorkflowStatus

MAX_LIST = 10_000


@cli.group()
def workflows() -> None:
    """Inspect and control workflows (steps that wait for other steps)."""


workflow_id_argument = click.argument("workflow_id", type=click.IntRange(1, 2**63 - 1))


@workflows.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus]),
    help="only workflows in this state",
)
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_context
@handles_errors
def workflows_list(context: Context, status: str | None, limit: int, as_json: bool) -> None:
    """The newest workflows, with how many steps are in each state."""
    queue = context.queue
    found = run_sync(context.engine, wf_operations.list_workflows(queue.statements, status, limit))
    if as_json:
        echo_json(
            [
                {
                    "id": w.id,
                    "name": w.name,
                    "status": w.status,
                    "created_at": iso(w.created_at),
                    "finished_at": iso(w.finished_at),
                    "steps": w.steps,
                    "states": w.counts,
                }
                for w in found
            ]
        )
        return
    if not found:
        click.echo("(no workflows)")
        return
    click.echo(f"{'id':>8}  {'status':<10}{'steps':>7}  {'states':<44}{'name'}")
    for w in found:
        states = " ".join(f"{n} {state}" for state, n in w.counts.items() if n)
        click.echo(f"{w.id:>8}  {w.status:<10}{w.steps:>7}  {states:<44}{w.name or ''}")


def _workflow_json(info: WorkflowInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "created_at": iso(info.created_at),
        "finished_at": iso(info.finished_at),
        "steps": [
            {**_job_json(step), "waits_for": list(info.dependencies.get(step.id, ()))}
            for step in info.steps
        ],
    }


def _label(step: JobInfo) -> str:
    text = f"#{step.id} {step.task}  {step.status.value}"
    if step.status is JobStatus.running or (step.attempts > 1 and not step.finished):
        text += f" (attempt {step.attempts}/{step.max_attempts})"
    if step.error is not None and step.status in (JobStatus.failed, JobStatus.cancelled):
        text += f"  {step.error}"
    return text


def tree_lines(info: WorkflowInfo) -> list[str]:
    """The steps of ``info`` as a text tree (see the module docstring)."""
    by_id = {step.id: step for step in info.steps}
    children: dict[int, list[int]] = {step.id: [] for step in info.steps}
    for child, parents in info.dependencies.items():
        for parent in parents:
            if parent in children:
                children[parent].append(child)
    drawn: set[int] = set()
    lines: list[str] = []

    def draw(step_id: int, prefix: str, branch: str, parent: int | None) -> None:
        step = by_id[step_id]
        if step_id in drawn:
            lines.append(f"{prefix}{branch}#{step_id} {step.task}  (shown above)")
            return
        drawn.add(step_id)
        others = [p for p in info.dependencies.get(step_id, ()) if p != parent]
        note = f"  (also waits for {', '.join(f'#{p}' for p in others)})" if others else ""
        lines.append(f"{prefix}{branch}{_label(step)}{note}")
        below = prefix + ("│   " if branch == "├── " else "    " if branch else "")
        kids = sorted(children[step_id])
        for position, child in enumerate(kids):
            draw(child, below, "└── " if position == len(kids) - 1 else "├── ", step_id)

    for step in info.steps:
        if not info.dependencies.get(step.id):
            draw(step.id, "", "", None)
    for step in info.steps:  # unreachable from a root cannot happen; never hide a step anyway
        if step.id not in drawn:
            draw(step.id, "", "", None)
    return lines


@workflows.command("show")
@workflow_id_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_context
@handles_errors
def workflows_show(context: Context, workflow_id: int, as_json: bool) -> None:
    """Show one workflow: its steps as a tree, with their states."""
    info = context.queue.get_workflow(context.engine, workflow_id)
    if info is None:
        fail(f"no workflow with id {workflow_id}")
        return
    if as_json:
        click.echo(json.dumps(_workflow_json(info), indent=2))
        return
    counts: dict[str, int] = {}
    for step in info.steps:
        counts[step.status.value] = counts.get(step.status.value, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    name = f" {info.name!r}" if info.name else ""
    took = ""
    if info.finished_at is not None:
        took = f" in {duration((info.finished_at - info.created_at).total_seconds())}"
    click.echo(
        f"workflow {info.id}{name}: {info.status.value}{took}; {len(info.steps)} steps ({summary})"
    )
    for line in tree_lines(info):
        click.echo(line)


def _existing(context: Context, workflow_id: int) -> Queue:
    """The queue, once workflow ``workflow_id`` is known to exist (else a one-line error)."""
    queue = context.queue
    if queue.get_workflow(context.engine, workflow_id) is None:
        fail(f"no workflow with id {workflow_id}")
    return queue


@workflows.command("cancel")
@workflow_id_argument
@pass_context
@handles_errors
def workflows_cancel(context: Context, workflow_id: int) -> None:
    """Cancel every step that has not finished (running ones are asked to stop)."""
    queue = _existing(context, workflow_id)
    count = queue.cancel_workflow(context.engine, workflow_id)
    if not count:
        fail(f"workflow {workflow_id} has no step left to cancel")
    click.echo(f"workflow {workflow_id}: {count} steps cancelled or asked to stop")


@workflows.command("retry")
@workflow_id_argument
@pass_context
@handles_errors
def workflows_retry(context: Context, workflow_id: int) -> None:
    """Run the failed steps again, and the steps cancelled because of them."""
    queue = _existing(context, workflow_id)
    try:
        count = queue.retry_workflow(context.engine, workflow_id)
    except DedupeConflict as error:
        fail(str(error))
        return
    if not count:
        fail(f"workflow {workflow_id} has no failed step to retry")
    click.echo(f"workflow {workflow_id}: {count} steps will run again")
