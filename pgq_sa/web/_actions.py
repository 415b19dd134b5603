"""The dashboard's actions (POST only): each is refused in read-only mode and for a role without
the privilege, checked for cross-site use, then done through :class:`pgq_sa.Queue` or the
existing producer operations (no SQL of its own), and answered with a redirect back.

The dedupe-key search is a POST too, answered with the result page itself: the key stays in the
request body, never in a URL, a browser history or a proxy log.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pgq_sa import _dashboard as dashboard
from pgq_sa import _validation as validation
from pgq_sa._ops import producer
from pgq_sa.web import _csrf as csrf
from pgq_sa.web import _forms as forms
from pgq_sa.web._errors import BadRequest, NotFound
from pgq_sa.web._site import Site

GROUP_RETRY_LIMIT = 1_000  # failed jobs one "retry all in this group" click queues again
WORKFLOW_DONE = {"cancel": "workflow-cancelled", "retry": "workflow-retried"}


async def _posted(site: Site, request: Request) -> dict[str, list[str]]:
    return await csrf.checked_form(request, site.secret)


def _back(
    request: Request, values: dict[str, list[str]], done: str, count: int | None = None
) -> Response:
    root = request.scope.get("root_path", "")
    path, _, query = forms.local_path(forms.one(values, "next"), root).partition("?")
    kept = [(k, v) for k, v in parse_qsl(query) if k not in ("done", "n")]
    kept.append(("done", done))
    if count is not None:
        kept.append(("n", str(count)))
    return RedirectResponse(f"{path}?{urlencode(kept)}", status_code=303)


async def cancel_job(site: Site, request: Request) -> Response:
    job_id = forms.identifier(request.path_params["job_id"], "job id")
    values = await _posted(site, request)
    await site.require("cancel")
    done = await site.db.write(producer.cancel(site.db.statements, job_id))
    return _back(request, values, "cancelled" if done else "not-cancelled")


async def retry_job(site: Site, request: Request) -> Response:
    job_id = forms.identifier(request.path_params["job_id"], "job id")
    values = await _posted(site, request)
    await site.require("retry")
    done = await site.db.write(producer.retry(site.db.statements, job_id))
    return _back(request, values, "retried" if done else "not-retried")


async def bulk(site: Site, request: Request) -> Response:
    """Cancel or retry the jobs ticked on a list, in one transaction."""
    values = await _posted(site, request)
    action = forms.one(values, "action")
    if action not in ("cancel", "retry"):
        raise BadRequest("action must be cancel or retry")
    ids = forms.selected_ids(values)
    await site.require(action)
    if action == "cancel":
        count = await site.db.write(dashboard.cancel_many(site.db.statements, ids))
        return _back(request, values, "cancelled" if count else "not-cancelled", count)
    count = await site.db.write(dashboard.retry_many(site.db.statements, ids))
    return _back(request, values, "retried" if count else "not-retried", count)


async def retry_group(site: Site, request: Request) -> Response:
    """Retry the failed jobs of one (queue, task, error type), up to a thousand per click."""
    values = await _posted(site, request)
    queue = forms.queue(forms.one(values, "queue"))
    task = forms.task(forms.one(values, "task"))
    if queue is None or task is None:
        raise BadRequest("the form names no queue or no task")
    error_type = forms.one(values, "error_type")
    if len(error_type) > 1000:
        raise BadRequest("error_type is too long")
    await site.require("retry")
    ids = await site.db.read(
        dashboard.failure_group_ids(site.db.statements, queue, task, error_type, GROUP_RETRY_LIMIT)
    )
    count = await site.db.write(dashboard.retry_many(site.db.statements, ids)) if ids else 0
    return _back(request, values, "retried" if count else "not-retried", count)


async def pause_queue(site: Site, request: Request) -> Response:
    values = await _posted(site, request)
    name = forms.queue(forms.one(values, "queue"))
    if name is None:
        raise BadRequest("the form names no queue")
    paused = forms.one(values, "paused")
    if paused not in ("true", "false"):
        raise BadRequest("paused must be true or false")
    await site.require("pause")
    await site.db.write(producer.set_paused(site.db.statements, name, paused == "true"))
    return _back(request, values, "paused" if paused == "true" else "resumed")


async def switch_schedule(site: Site, request: Request) -> Response:
    values = await _posted(site, request)
    name = forms.required(values, "schedule")
    try:
        validation.schedule_name(name)
    except (TypeError, ValueError) as error:
        raise BadRequest(f"schedule: {error}") from None
    enabled = forms.one(values, "enabled")
    if enabled not in ("true", "false"):
        raise BadRequest("enabled must be true or false")
    await site.require("schedules")
    changed = await site.db.write(
        producer.set_schedule_enabled(site.db.statements, name, enabled == "true")
    )
    if not changed:
        return _back(request, values, "no-schedule")
    return _back(request, values, "enabled" if enabled == "true" else "disabled")


async def workflow_action(site: Site, request: Request) -> Response:
    """Cancel or retry a whole workflow through the queue's own workflow methods."""
    workflow_id = forms.identifier(request.path_params["workflow_id"], "workflow id")
    action = request.path_params["action"]
    values = await _posted(site, request)
    if not site.workflow_actions:
        raise NotFound("this version of pgq_sa cannot cancel or retry whole workflows")
    await site.require("cancel" if action == "cancel" else "retry")
    queue: Any = site.db.queue
    bind = site.db.bind
    if isinstance(bind, AsyncEngine):
        await getattr(queue, f"{action}_workflow_async")(bind, workflow_id)
    else:
        await anyio.to_thread.run_sync(getattr(queue, f"{action}_workflow"), bind, workflow_id)
    return _back(request, values, WORKFLOW_DONE[action])


async def search_dedupe_key(site: Site, request: Request) -> Response:
    """Jobs holding a dedupe key: the key comes in the body and the answer is the page."""
    values = await _posted(site, request)
    key = forms.dedupe_key(forms.one(values, "dedupe_key"))
    context = await site.context(request, "jobs")
    page = await site.db.read(dashboard.jobs_by_dedupe_key(site.db.statements, key))
    context.update(key=key, page=page, window=dashboard.SCAN_WINDOW)
    return site.page(request, "search.html", context)
