"""Parsing what a request sends (query strings, form bodies) into checked values, before any
SQL: a bad value is a :class:`~pgq_sa.web._errors.BadRequest` naming the field and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs

from starlette.requests import Request

from pgq_sa import _validation as validation
from pgq_sa._dashboard import JobFilter
from pgq_sa._schema import JobStatus
from pgq_sa.web._errors import BadRequest

MAX_FORM_BYTES = 256 * 1024
MAX_ID = 2**63 - 1
PAGE_SIZES = (25, 50, 100, 200)
MAX_SELECTED = 500  # jobs one bulk action takes
FORM_TYPE = "application/x-www-form-urlencoded"


async def form(request: Request) -> dict[str, list[str]]:
    """The urlencoded body of a POST (bounded in size)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM_TYPE:
        raise BadRequest(f"send the form as {FORM_TYPE}, not {kind or 'nothing'}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest(f"the form is larger than {MAX_FORM_BYTES // 1024} KiB")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2_000)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"the form cannot be read: {error}") from None


def identifier(value: str, what: str) -> int:
    """A job or workflow id: digits only, 1 to 2^63-1."""
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{what} must be a whole number, got {value[:40]!r}")
    number = int(text) if len(text) <= 20 else MAX_ID + 1
    if not 1 <= number <= MAX_ID:
        raise BadRequest(f"{what} must be between 1 and {MAX_ID}, got {value[:40]!r}")
    return number


def one(values: Mapping[str, list[str]], name: str) -> str:
    found = values.get(name) or [""]
    return found[0]


def required(values: Mapping[str, list[str]], name: str) -> str:
    value = one(values, name)
    if not value:
        raise BadRequest(f"the form has no {name}")
    return value


def _named(value: str, check: object, what: str) -> str | None:
    if value == "":
        return None
    try:
        return check(value)  # type: ignore[operator, no-any-return]
    except (TypeError, ValueError) as error:
        raise BadRequest(f"{what}: {error}") from None


def task(value: str) -> str | None:
    return _named(value, validation.task_name, "task")


def queue(value: str) -> str | None:
    return _named(value, validation.queue_name, "queue")


def status(value: str) -> JobStatus | None:
    if value in ("", "any"):
        return None
    try:
        return JobStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in JobStatus)
        raise BadRequest(f"status must be one of {choices}, got {value[:40]!r}") from None


def page_size(value: str) -> int:
    if value == "":
        return 50
    if value not in {str(size) for size in PAGE_SIZES}:
        sizes = ", ".join(str(size) for size in PAGE_SIZES)
        raise BadRequest(f"limit must be one of {sizes}, got {value[:40]!r}")
    return int(value)


def cursor(value: str) -> int | None:
    return None if value == "" else identifier(value, "before")


def job_filter(query: Mapping[str, str]) -> JobFilter:
    """The jobs page's filters (status, task, queue, before, limit), each checked."""
    return JobFilter(
        status=status(query.get("status", "")),
        task=task(query.get("task", "").strip()),
        queue=queue(query.get("queue", "").strip()),
        before=cursor(query.get("before", "")),
        limit=page_size(query.get("limit", "")),
    )


def selected_ids(values: Mapping[str, list[str]]) -> list[int]:
    """The job ids ticked on a list (at least one, at most :data:`MAX_SELECTED`)."""
    raw = values.get("job", [])
    if not raw:
        raise BadRequest("select at least one job first")
    if len(raw) > MAX_SELECTED:
        raise BadRequest(f"select at most {MAX_SELECTED} jobs at a time")
    return sorted({identifier(v, "job id") for v in raw})


def dedupe_key(value: str) -> str:
    if value == "":
        raise BadRequest("type a dedupe key to search for")
    try:
        key = validation.dedupe_key(value)
    except (TypeError, ValueError) as error:
        raise BadRequest(f"dedupe key: {error}") from None
    if key is None:
        raise BadRequest("type a dedupe key to search for")
    return key


def local_path(value: str, root: str) -> str:
    """Where to go back after an action: a path inside the dashboard, else its overview."""
    safe = all(" " < c < "\x7f" for c in value) and "\\" not in value
    inside = not root or value == root or value.startswith(root + "/")
    if safe and value.startswith("/") and not value.startswith("//") and inside:
        return value
    return (root or "") + "/"
