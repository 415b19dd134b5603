"""``create_app``: the dashboard as an ASGI application (Starlette), its routes, the answers to
errors (a page, never a traceback), the security headers, and its lifecycle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgq_sa._errors import SchemaMissing
from pgq_sa._queue import Queue
from pgq_sa._schema import DEFAULT_SCHEMA
from pgq_sa.web import _actions as actions
from pgq_sa.web import _auth as auth_module
from pgq_sa.web import _csrf as csrf
from pgq_sa.web import _forms as forms
from pgq_sa.web import _pages as pages
from pgq_sa.web import _signing as signing
from pgq_sa.web._db import Database, refused
from pgq_sa.web._errors import Forbidden, PageError
from pgq_sa.web._live import Watcher, event_stream
from pgq_sa.web._render import Renderer, build_environment
from pgq_sa.web._site import Site

log = logging.getLogger("pgq_sa.web")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

Handler = Callable[[Site, Request], Awaitable[Response]]


class SecurityHeaders:
    """Adds the CSP and friends to every answer; pages are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = auth_module.route_path(scope).startswith("/static/")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, sending)


def _bind(site: Site, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(site, request)
        except PageError as error:
            return await _error_page(site, request, error.status, error.title, error.message)
        except SchemaMissing as error:
            return await _error_page(site, request, 503, "Queue not installed", str(error))
        except OperationalError as error:
            detail = str(error.orig or error).strip().splitlines()[0]
            return await _error_page(
                site, request, 503, "Database unreachable", f"cannot reach the database: {detail}"
            )
        except DBAPIError as error:
            if refused(error):
                detail = str(error.orig).strip().splitlines()[0]
                return await _error_page(
                    site,
                    request,
                    403,
                    "Not allowed by the database",
                    f"the database refused: {detail}. Grant the dashboard's role SELECT on the "
                    "queue's tables (and the worker privileges to act: pgq-sa db grant --worker "
                    "ROLE), or run it read-only.",
                )
            raise

    return endpoint


async def _error_page(
    site: Site, request: Request, status: int, title: str, message: str
) -> Response:
    context = {"section": "", "heading": title, "message": message, "status": status}
    return site.page(request, "error.html", context, status)


def _login_page(site: Site) -> Callable[[Request, auth_module.Auth], Awaitable[Response]]:
    async def refuse(request: Request, auth: auth_module.Auth) -> Response:
        if auth.kind == "basic":
            return Response(
                "Authentication required.\n",
                status_code=401,
                headers={"WWW-Authenticate": f'Basic realm="{auth_module.REALM}", charset="UTF-8"'},
                media_type="text/plain",
            )
        if (
            auth.kind == "token"
            and request.method == "GET"
            and "html" in request.headers.get("accept", "")
        ):
            context = {"section": "", "next": request.url.path, "failed": False}
            return site.page(request, "login.html", context, 401)
        return Response("Authentication required.\n", status_code=401, media_type="text/plain")

    return refuse


async def _login(site: Site, request: Request) -> Response:
    """The token form: a valid token gets a signed session cookie (token auth only)."""
    if site.auth.kind != "token":
        raise Forbidden("this dashboard does not use a login form")
    values = await csrf.checked_form(request, site.secret)
    root = request.scope.get("root_path", "")
    if not signing.same(forms.one(values, "token"), site.auth.token):
        context = {"section": "", "next": forms.one(values, "next"), "failed": True}
        return site.page(request, "login.html", context, 401)
    response = RedirectResponse(forms.local_path(forms.one(values, "next"), root), 303)
    response.set_cookie(
        auth_module.SESSION_COOKIE,
        auth_module.session_cookie(site.secret, site.auth),
        max_age=auth_module.SESSION_SECONDS,
        path=root + "/" if root else "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def _logout(site: Site, request: Request) -> Response:
    await csrf.checked_form(request, site.secret)
    root = request.scope.get("root_path", "")
    response = RedirectResponse(root + "/", 303)
    response.delete_cookie(auth_module.SESSION_COOKIE, path=root + "/" if root else "/")
    return response


async def _events(site: Site, request: Request) -> Response:
    return StreamingResponse(
        event_stream(site.watcher),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _routes(site: Site) -> list[Route | Mount]:
    static = resources.files("pgq_sa.web") / "static"
    get, post = ["GET", "HEAD"], ["POST"]
    return [
        Route("/", _bind(site, pages.overview), methods=get),
        Route("/queues", _bind(site, pages.queues), methods=get),
        Route("/queues/pause", _bind(site, actions.pause_queue), methods=post),
        Route("/tasks", _bind(site, pages.tasks), methods=get),
        Route("/jobs", _bind(site, pages.jobs), methods=get),
        Route("/jobs/search", _bind(site, actions.search_dedupe_key), methods=post),
        Route("/jobs/bulk", _bind(site, actions.bulk), methods=post),
        Route("/jobs/{job_id}", _bind(site, pages.job), methods=get),
        Route("/jobs/{job_id}/cancel", _bind(site, actions.cancel_job), methods=post),
        Route("/jobs/{job_id}/retry", _bind(site, actions.retry_job), methods=post),
        Route("/failures", _bind(site, pages.failures), methods=get),
        Route("/failures/retry", _bind(site, actions.retry_group), methods=post),
        Route("/workers", _bind(site, pages.workers), methods=get),
        Route("/schedules", _bind(site, pages.schedules), methods=get),
        Route("/schedules/switch", _bind(site, actions.switch_schedule), methods=post),
        Route("/workflows", _bind(site, pages.workflows), methods=get),
        Route("/workflows/{workflow_id}", _bind(site, pages.workflow), methods=get),
        Route(
            "/workflows/{workflow_id}/{action:str}",
            _bind(site, _workflow_action),
            methods=post,
        ),
        Route("/events", _bind(site, _events), methods=get),
        Route("/login", _bind(site, _login), methods=post),
        Route("/logout", _bind(site, _logout), methods=post),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]


async def _workflow_action(site: Site, request: Request) -> Response:
    if request.path_params["action"] not in ("cancel", "retry"):
        return await _error_page(site, request, 404, "Not found", "no such workflow action")
    return await actions.workflow_action(site, request)


def create_app(
    bind: Engine | AsyncEngine | str | URL,
    *,
    schema: str = DEFAULT_SCHEMA,
    read_only: bool = False,
    auth: Any = auth_module.FROM_ENVIRONMENT,
    secret_key: str | bytes | None = None,
    live: bool = True,
    title: str = "pgq-sa",
) -> Starlette:
    """The dashboard of the queue in ``schema`` on ``bind`` (Engine, AsyncEngine or URL).

    ``read_only``: show everything, refuse every action (on the server, not only in the page).
    ``auth``: by default from the environment (``PGQ_SA_WEB_USER`` and ``PGQ_SA_WEB_PASSWORD``
    for HTTP Basic, or ``PGQ_SA_WEB_TOKEN`` for a bearer token), else none; or ``None``,
    ``(user, password)``, a token string, or a callable ``(request) -> bool`` (may be async)
    for the host application's own check. ``secret_key`` signs the forms' tokens and the login
    cookie (random per process by default: give one when several processes serve the same
    address). ``live``: LISTEN for changes (polling only when False).
    """
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be a bool, got {type(read_only).__name__}")
    queue = Queue(schema=schema)
    resolved = auth_module.resolve(auth)
    secret = signing.secret_from(secret_key)
    db = Database(bind, queue)
    watcher = Watcher(db.url, queue.statements, listen=live)
    base = {"title": title, "schema": queue.schema}
    renderer = Renderer(build_environment(), secret, base)
    site = Site(db, renderer, resolved, secret, read_only, watcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        watcher.stop()
        await db.dispose()

    async def not_found(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed"}
        message = {
            404: "there is no such page",
            405: "this address does not take that method (actions are POST forms)",
        }.get(error.status_code, str(error.detail))
        title = titles.get(error.status_code, "Error")
        return await _error_page(site, request, error.status_code, title, message)

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("dashboard error on %s %s", request.method, request.url.path)
        return Response(
            "The dashboard failed to answer; the server log has the details.\n",
            status_code=500,
            media_type="text/plain",
        )

    app = Starlette(
        routes=_routes(site),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                auth_module.AuthMiddleware, auth=resolved, secret=secret, refuse=_login_page(site)
            ),
        ],
        exception_handlers={HTTPException: not_found, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.site = site
    return app
