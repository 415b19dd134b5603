"""The dashboard's pages (GET): each reads through one dashboard or monitoring operation and
renders one template. Nothing from the queue goes into a URL but job and workflow ids and the
task and queue names of a filter; a dedupe-key search is a POST (see :mod:`._actions`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pgq_sa import _dashboard as dashboard
from pgq_sa import _monitoring as monitoring
from pgq_sa._schema import JobStatus
from pgq_sa.web import _forms as forms
from pgq_sa.web._chart import chart
from pgq_sa.web._errors import NotFound
from pgq_sa.web._graph import layout
from pgq_sa.web._site import Site


async def overview(site: Site, request: Request) -> Response:
    context = await site.context(request, "overview")
    data = await site.db.read(dashboard.overview(site.db.statements))
    context.update(overview=data, status=data.status, chart=chart(data.minutes))
    return site.page(request, "overview.html", context)


async def queues(site: Site, request: Request) -> Response:
    context = await site.context(request, "queues")
    context["status"] = await site.db.read(monitoring.status(site.db.statements))
    return site.page(request, "queues.html", context)


async def tasks(site: Site, request: Request) -> Response:
    context = await site.context(request, "tasks")
    context["tasks"] = await site.db.read(dashboard.tasks(site.db.statements))
    return site.page(request, "tasks.html", context)


async def jobs(site: Site, request: Request) -> Response:
    query = request.query_params
    if query.get("id", "").strip():
        job_id = forms.identifier(query["id"], "job id")
        return RedirectResponse(request.scope.get("root_path", "") + f"/jobs/{job_id}", 303)
    wanted = forms.job_filter(query)
    context = await site.context(request, "jobs")
    page = await site.db.read(dashboard.job_page(site.db.statements, wanted))
    context.update(filter=wanted, page=page, statuses=list(JobStatus), sizes=forms.PAGE_SIZES)
    return site.page(request, "jobs.html", context)


async def job(site: Site, request: Request) -> Response:
    job_id = forms.identifier(request.path_params["job_id"], "job id")
    context = await site.context(request, "jobs")
    readable = context["access"].read
    found = await site.db.read(dashboard.job_detail(site.db.statements, job_id, readable))
    if found is None:
        raise NotFound(f"there is no job {job_id} (it may have been pruned after it finished)")
    context["job"] = found
    return site.page(request, "job.html", context)


async def failures(site: Site, request: Request) -> Response:
    context = await site.context(request, "failures")
    context["failures"] = await site.db.read(dashboard.failures(site.db.statements))
    return site.page(request, "failures.html", context)


async def workers(site: Site, request: Request) -> Response:
    context = await site.context(request, "workers")
    context["workers"] = await site.db.read(monitoring.list_workers(site.db.statements))
    return site.page(request, "workers.html", context)


async def schedules(site: Site, request: Request) -> Response:
    context = await site.context(request, "schedules")
    context["schedules"] = await site.db.read(dashboard.schedules(site.db.statements))
    return site.page(request, "schedules.html", context)


async def workflows(site: Site, request: Request) -> Response:
    before = forms.cursor(request.query_params.get("before", ""))
    context = await site.context(request, "workflows")
    context["page"] = await site.db.read(dashboard.workflow_page(site.db.statements, before))
    return site.page(request, "workflows.html", context)


async def workflow(site: Site, request: Request) -> Response:
    workflow_id = forms.identifier(request.path_params["workflow_id"], "workflow id")
    context = await site.context(request, "workflows")
    found = await site.db.read(dashboard.workflow_graph(site.db.statements, workflow_id))
    if found is None:
        raise NotFound(f"there is no workflow {workflow_id}")
    context.update(flow=found, graph=layout(found.steps, found.edges))
    return site.page(request, "workflow.html", context)
