"""What every page and action shares: the database, the renderer, the mode, the live watcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse

from pgq_sa._dashboard import Access
from pgq_sa.web._auth import Auth
from pgq_sa.web._db import Database
from pgq_sa.web._errors import Forbidden
from pgq_sa.web._live import Watcher
from pgq_sa.web._render import Renderer

ACTIONS = ("cancel", "retry", "pause", "schedules")
WHAT = {
    "cancel": "cancel jobs",
    "retry": "retry jobs",
    "pause": "pause or resume queues",
    "schedules": "enable or disable schedules",
}


@dataclass
class Site:
    db: Database
    render: Renderer
    auth: Auth
    secret: bytes
    read_only: bool
    watcher: Watcher

    async def context(self, request: Request, section: str) -> dict[str, Any]:
        """What the base template needs: the section, the mode and what the role may do."""
        access = await self.db.access()
        return {
            "section": section,
            "access": access,
            "can": {action: self.allows(access, action) for action in ACTIONS},
            "read_only": self.read_only,
            "role_read_only": not self.read_only and not access.writes,
            "workflow_actions": self.workflow_actions,
            "auth_kind": self.auth.kind,
        }

    def allows(self, access: Access, action: str) -> bool:
        return not self.read_only and bool(getattr(access, action))

    async def require(self, action: str) -> None:
        """Refuse an action on the server, whatever the page showed."""
        if self.read_only:
            raise Forbidden("this dashboard is read-only: it takes no action")
        access = await self.db.access()
        if not getattr(access, action):
            raise Forbidden(
                f"the database role {access.role!r} may not {WHAT[action]} in schema "
                f"{self.db.queue.schema!r}: grant it the worker privileges "
                f"(pgq-sa db grant --worker {access.role})"
            )

    @property
    def workflow_actions(self) -> bool:
        """Can the queue cancel and retry whole workflows (the workflow feature)?"""
        suffix = "_async" if isinstance(self.db.bind, AsyncEngine) else ""
        queue = self.db.queue
        return all(hasattr(queue, f"{a}_workflow{suffix}") for a in ("cancel", "retry"))

    def page(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        return self.render(request, template, context, status)
