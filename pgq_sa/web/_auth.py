"""Who may use the dashboard: HTTP Basic, a bearer token (or the session cookie its login form
gives a browser), a check of the host application's own, or nobody checks at all.

Credentials come from the caller or from the environment (``PGQ_SA_WEB_USER`` and
``PGQ_SA_WEB_PASSWORD``, or ``PGQ_SA_WEB_TOKEN``); every comparison is constant-time. The
middleware guards every path but the static files and the login form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pgq_sa.web import _signing as signing

USER_VARIABLE = "PGQ_SA_WEB_USER"
PASSWORD_VARIABLE = "PGQ_SA_WEB_PASSWORD"
TOKEN_VARIABLE = "PGQ_SA_WEB_TOKEN"
SESSION_COOKIE = "pgqsa_session"
SESSION_SECONDS = 12 * 3600
MIN_TOKEN_LENGTH = 16
REALM = "pgq-sa dashboard"
OPEN_PATHS = ("/static/", "/login")

Check = Callable[[Request], Union[bool, Awaitable[bool]]]  # noqa: UP007 - runtime alias on 3.10


class FromEnvironment:
    """The default of ``create_app(auth=...)``: read the credentials from the environment."""

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


FROM_ENVIRONMENT = FromEnvironment()


@dataclass(frozen=True)
class Auth:
    """The resolved authentication: ``kind`` is none, basic, token or custom."""

    kind: str
    user: str = ""
    password: str = ""
    token: str = ""
    check: Check | None = None

    @property
    def required(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        return {
            "none": "no authentication",
            "basic": f"HTTP Basic (user {self.user!r})",
            "token": "a bearer token",
            "custom": "the application's own check",
        }[self.kind]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _token(value: object, source: str) -> Auth:
    token = _text(value, source)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{source} is too short ({len(token)} characters): use at least {MIN_TOKEN_LENGTH}, "
            'for example python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return Auth("token", token=token)


def from_environment(environ: Any = None) -> Auth:
    """Basic or token authentication from the environment variables, else none."""
    env = os.environ if environ is None else environ
    user, password, token = (env.get(v) for v in (USER_VARIABLE, PASSWORD_VARIABLE, TOKEN_VARIABLE))
    if token and (user or password):
        raise ValueError(f"set {TOKEN_VARIABLE} or {USER_VARIABLE}/{PASSWORD_VARIABLE}, not both")
    if token:
        return _token(token, TOKEN_VARIABLE)
    if bool(user) != bool(password):
        raise ValueError(f"set both {USER_VARIABLE} and {PASSWORD_VARIABLE} (or neither)")
    if user:
        return Auth("basic", user=_text(user, USER_VARIABLE), password=password or "")
    return Auth("none")


def resolve(auth: object) -> Auth:
    """``create_app``'s ``auth``: FROM_ENVIRONMENT, None, ``(user, password)``, a token string,
    or a callable taking the request and returning (or awaiting) True to let it in."""
    if isinstance(auth, Auth):
        return auth
    if auth is FROM_ENVIRONMENT:
        return from_environment()
    if auth is None:
        return Auth("none")
    if isinstance(auth, tuple) and len(auth) == 2:
        return Auth("basic", user=_text(auth[0], "the user"), password=_text(auth[1], "password"))
    if isinstance(auth, str):
        return _token(auth, "the token")
    if callable(auth):
        return Auth("custom", check=auth)
    raise TypeError(
        "auth must be None, (user, password), a token string or a callable(request) -> bool, "
        f"got {type(auth).__name__}"
    )


def route_path(scope: Scope) -> str:
    """The path below where the dashboard is mounted."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def session_cookie(secret: bytes, auth: Auth, now: float | None = None) -> str:
    expires = str(int((time.time() if now is None else now) + SESSION_SECONDS))
    return f"{expires}.{signing.sign(secret, 'session', _session_value(auth, expires))}"


def _session_value(auth: Auth, expires: str) -> str:
    # Bound to the token: a new token ends every session signed for the old one.
    return f"{expires}:{hashlib.sha256(auth.token.encode()).hexdigest()}"


def _valid_session(secret: bytes, auth: Auth, cookie: str | None) -> bool:
    if not cookie or "." not in cookie:
        return False
    expires, signature = cookie.split(".", 1)
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return signing.verify(secret, "session", _session_value(auth, expires), signature)


def _basic(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


async def allowed(request: Request, auth: Auth, secret: bytes) -> bool:
    """Does ``request`` carry what ``auth`` asks for?"""
    if auth.kind == "none":
        return True
    if auth.kind == "custom":
        assert auth.check is not None
        verdict = auth.check(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if auth.kind == "basic":
        given = _basic(credentials.strip()) if scheme.lower() == "basic" else None
        if given is None:
            return False
        user_ok = signing.same(given[0], auth.user)
        password_ok = signing.same(given[1], auth.password)
        return user_ok and password_ok
    if scheme.lower() == "bearer":
        return signing.same(credentials.strip(), auth.token)
    return _valid_session(secret, auth, request.cookies.get(SESSION_COOKIE))


Refuse = Callable[[Request, Auth], Awaitable[Response]]


class AuthMiddleware:
    """Let a request through when :func:`allowed`; else ``refuse`` answers (401 or a login)."""

    def __init__(self, app: ASGIApp, auth: Auth, secret: bytes, refuse: Refuse) -> None:
        self.app, self.auth, self.secret, self.refuse = app, auth, secret, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.required:
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path.startswith(OPEN_PATHS[0]) or path == OPEN_PATHS[1]:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if await allowed(request, self.auth, self.secret):
            await self.app(scope, receive, send)
            return
        response = await self.refuse(request, self.auth)
        await response(scope, receive, send)
