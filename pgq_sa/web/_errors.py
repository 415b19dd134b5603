"""What a page answers instead of its content: a status, a title and a message for people."""

from __future__ import annotations


class PageError(Exception):
    """Answer with ``status`` and a page saying ``message`` (never a traceback)."""

    status = 400
    title = "Bad request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PageError):
    pass


class NotFound(PageError):
    status = 404
    title = "Not found"


class Forbidden(PageError):
    status = 403
    title = "Not allowed"
