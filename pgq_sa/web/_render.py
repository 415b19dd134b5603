"""HTML rendering: the Jinja environment (autoescaping everything), the formatting filters, and
the one function every page and error answer goes through (it adds the CSRF cookie and token)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from pgq_sa._format import duration
from pgq_sa.web import _csrf as csrf

NOTICES = {  # the outcome of an action, named in the redirect's query by a fixed code
    "cancelled": "Cancellation requested.",
    "retried": "Queued again.",
    "not-retried": "Nothing was retried: the job is not failed or cancelled (or its dedupe key "
    "is held by a live job).",
    "not-cancelled": "Nothing was cancelled: the job had already finished.",
    "paused": "Queue paused: workers finish what they run and claim nothing more from it.",
    "resumed": "Queue resumed.",
    "enabled": "Schedule enabled.",
    "disabled": "Schedule disabled.",
    "no-schedule": "No such schedule.",
    "workflow-cancelled": "Workflow cancelled.",
    "workflow-retried": "Workflow queued again.",
}


def timestamp(moment: dt.datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    """JSON for people (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def build_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("pgq_sa.web", "templates"),
        autoescape=select_autoescape(["html", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        duration=duration,
        timestamp=timestamp,
        pretty_json=pretty_json,
        percent=percent,
        number=number,
    )
    return environment


class Renderer:
    """Renders a template with what every page needs (links, the CSRF token, notices)."""

    def __init__(self, environment: Environment, secret: bytes, base: dict[str, Any]) -> None:
        self.environment = environment
        self.secret = secret
        self.base = base

    def __call__(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        cookie, new = csrf.cookie_value(request)
        root: str = request.scope.get("root_path", "")

        def url(path: str) -> str:
            return root + path

        notice = NOTICES.get(request.query_params.get("done", ""))
        page: str = self.environment.get_template(template).render(
            **self.base,
            **context,
            request=request,
            url=url,
            csrf_field=csrf.FIELD,
            csrf_token=csrf.token(self.secret, cookie),
            done=notice,
            count=_count(request.query_params.get("n", "")) if notice else "",
        )
        response = HTMLResponse(page, status_code=status)
        if new:
            response.set_cookie(
                csrf.COOKIE,
                cookie,
                path=root + "/" if root else "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response


def _count(value: str) -> str:
    return value if value.isdigit() and len(value) <= 9 else ""
