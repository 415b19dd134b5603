"""Cross-site request protection for every state-changing request (all of them are POSTs).

Two checks, both required: the request comes from our own origin (its ``Origin`` header, or its
``Referer`` when a browser sent no Origin, names the host it was sent to), and its form carries
the token derived from the browser's CSRF cookie (a random value, ``SameSite=Strict``,
``HttpOnly``) with the app's secret: a signed double-submit token, compared in constant time.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from pgq_sa.web import _forms as forms
from pgq_sa.web import _signing as signing
from pgq_sa.web._errors import Forbidden

COOKIE = "pgqsa_csrf"
FIELD = "csrf"


class Refused(Exception):
    """A state-changing request failed the cross-site checks (a 403 with this message)."""


def cookie_value(request: Request) -> tuple[str, bool]:
    """The browser's CSRF cookie, or a new one (``True``: the response must set it)."""
    current = request.cookies.get(COOKIE, "")
    if 20 <= len(current) <= 100 and current.replace("-", "").replace("_", "").isalnum():
        return current, False
    return secrets.token_urlsafe(32), True


def token(secret: bytes, cookie: str) -> str:
    """The form token that goes with ``cookie``."""
    return signing.sign(secret, "csrf", cookie)


def _origin_host(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc
    referer = request.headers.get("referer")
    if referer:
        return urlsplit(referer).netloc
    return None


def check(request: Request, form: dict[str, list[str]], secret: bytes) -> None:
    """Raise :class:`Refused` unless the POST is same-origin and carries the right token."""
    host = request.headers.get("host", "")
    sent_from = _origin_host(request)
    if sent_from is None:
        raise Refused("cross-site check failed: the request has no Origin or Referer header")
    if sent_from.lower() != host.lower():
        raise Refused(f"cross-site check failed: a request from {sent_from!r} to {host!r}")
    cookie = request.cookies.get(COOKIE)
    given = form.get(FIELD, [""])[0]
    if not cookie or not given or not signing.verify(secret, "csrf", cookie, given):
        raise Refused(
            "the form's security token is missing or stale (cookies blocked, or the page is "
            "old): reload the page and try again"
        )


async def checked_form(request: Request, secret: bytes) -> dict[str, list[str]]:
    """The POSTed form, once it passed :func:`check` (else a 403 page saying why)."""
    values = await forms.form(request)
    try:
        check(request, values, secret)
    except Refused as error:
        raise Forbidden(str(error)) from None
    return values
