"""The audit log (DESIGN §4): who or what did which action on which object, with what result, when.

Every service keeps its records in its own database, in the table ``audit_log``, written in the
same transaction as the change they describe (:func:`record`). What goes in is recorded:

* every admin action (the admin command writes to its own audit database, see ``docs/identity.md``);
* every use of a key for personal data (intake's contact reads, found or not);
* every case change (routing), and every configuration reload a service sees (loaded, refused,
  removed; :func:`install_reload_audit`).

An auditor (scope ``audit:read``) reads one tenant's records at ``GET /v1/audit/<service>``
(:func:`audit_router`): filtered, newest first, cursor-paginated. The paths differ per service
because no two services serve the same path (DESIGN §1).

No personal data goes in: actors are ``key:<id>``, ``person:<subject id>`` or ``service:<name>``,
objects are ids (``signal:<id>``, ``case:<id>``, ``tenant:<code>``). :func:`record` refuses values
that look like an e-mail address or a phone number, so a slip shows up in tests, not in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Table
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.db import UtcDateTime, stage_insert
from civicsignals.common.problems import Problem, problem_responses
from civicsignals.common.tenants import ReloadEvent, TenantRegistry

log = logging.getLogger(__name__)

AUDIT_SCOPE = "audit:read"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<!\w)(?:\+\d{2}|0)[\d \-]{8,}\d(?!\w)")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuditRecord(SQLModel, table=True):
    """One audited action. ``detail`` is a short note (file and line of a refused reload, key ids
    added by one): never personal data."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UtcDateTime, default_factory=_utcnow, index=True)
    tenant: str = Field(index=True, max_length=64)
    service: str = Field(default="", max_length=64)
    actor: str = Field(max_length=200)
    action: str = Field(index=True, max_length=100)
    object: str = Field(max_length=200)
    result: str = Field(max_length=50)
    detail: str | None = Field(default=None, max_length=1000)


AUDIT_TABLE: Table = AuditRecord.__table__  # type: ignore[attr-defined]


class AuditRecordPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    tenant: str
    service: str
    actor: str
    action: str
    object: str
    result: str
    detail: str | None = None


class AuditPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": 1042,
                            "at": "2026-11-28T09:14:03Z",
                            "tenant": "gouda",
                            "service": "intake",
                            "actor": "service:notifier",
                            "action": "contact.read",
                            "object": "signal:01JD8X3Q4T6V9B2N5M7K0P1R3S",
                            "result": "ok",
                            "detail": None,
                        }
                    ],
                    "next_cursor": "1041",
                }
            ]
        }
    )

    items: list[AuditRecordPublic]
    next_cursor: str | None = None


def check_no_personal_data(**values: str | None) -> None:
    """Refuse e-mail addresses and phone numbers in audit fields (a bug, never an operator error)."""
    for name, value in values.items():
        if value and (_EMAIL.search(value) or _PHONE.search(value)):
            raise ValueError(
                f"audit field {name!r} looks like it holds personal data; record ids, not people"
            )


def record(
    session: AsyncSession,
    *,
    tenant: str,
    actor: str,
    action: str,
    object: str,
    result: str,
    service: str = "",
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    """Add an audit record to ``session``'s transaction; it commits with the change it describes
    (staged as a row, not an ORM object: :func:`~civicsignals.common.db.stage_insert`)."""
    check_no_personal_data(actor=actor, object=object, detail=detail)
    row = {
        "at": at or _utcnow(),
        "tenant": tenant,
        "service": service,
        "actor": actor,
        "action": action,
        "object": object,
        "result": result,
        "detail": detail[:1000] if detail else None,
    }
    stage_insert(session, AUDIT_TABLE, row)


async def query(
    session: AsyncSession,
    tenant: str,
    *,
    actor: str | None = None,
    action: str | None = None,
    object: str | None = None,
    result: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: int | None = None,
    limit: int = 50,
) -> tuple[list[AuditRecord], int | None]:
    """One tenant's records, newest first; ``action`` ending in ``*`` matches a prefix."""
    statement = select(AuditRecord).where(col(AuditRecord.tenant) == tenant)
    if actor:
        statement = statement.where(col(AuditRecord.actor) == actor)
    if action:
        if action.endswith("*"):
            statement = statement.where(col(AuditRecord.action).startswith(action[:-1]))
        else:
            statement = statement.where(col(AuditRecord.action) == action)
    if object:
        statement = statement.where(col(AuditRecord.object) == object)
    if result:
        statement = statement.where(col(AuditRecord.result) == result)
    if since is not None:
        statement = statement.where(col(AuditRecord.at) >= since)
    if until is not None:
        statement = statement.where(col(AuditRecord.at) < until)
    if cursor is not None:
        statement = statement.where(col(AuditRecord.id) < cursor)
    statement = statement.order_by(col(AuditRecord.id).desc()).limit(limit + 1)
    rows = list((await session.exec(statement)).all())
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


class ReloadAudit:
    """Records what a service's tenant registry reports (loads, refusals, removals) as audit records.

    The registry reports from whatever thread refreshed it; events wait in a bounded queue and are
    written by :meth:`flush`, which the audit route calls and the background job runs every second.
    """

    def __init__(
        self, registry: TenantRegistry, sessions: Any, service: str, *, max_pending: int = 1000
    ) -> None:
        self.sessions = sessions
        self.service = service
        self.pending: deque[tuple[datetime, ReloadEvent]] = deque(maxlen=max_pending)
        registry.add_listener(self._on_reload)

    def _on_reload(self, event: ReloadEvent) -> None:
        self.pending.append((_utcnow(), event))

    async def flush(self) -> int:
        written = 0
        if not self.pending:
            return 0
        async with self.sessions() as session, session.begin():
            while self.pending:
                at, event = self.pending.popleft()
                record(
                    session,
                    tenant=event.tenant,
                    actor=f"service:{self.service}",
                    action="config.reload",
                    object=f"tenant:{event.tenant}",
                    result=event.result,
                    service=self.service,
                    detail=_scrub(event.detail),
                    at=at,
                )
                written += 1
        return written

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit: cannot write reload records yet")
            await asyncio.sleep(interval_s)


def _scrub(detail: str) -> str:
    """A refused file's message may quote the offending value; keep it out if it looks personal."""
    return _PHONE.sub("<number>", _EMAIL.sub("<email>", detail))


def install_reload_audit(app: FastAPI) -> ReloadAudit:
    """Audit the configuration reloads of ``app``'s service; call once after ``create_service_app``."""
    runtime = app.state.runtime
    audit = ReloadAudit(runtime.tenants, runtime.sessions, runtime.service)
    app.state.reload_audit = audit
    runtime.add_background(audit.run)
    return audit


AuditReader = Annotated[Principal, Depends(scope_dependency(AUDIT_SCOPE))]


def audit_router(service: str, *, path: str | None = None) -> APIRouter:
    """``GET /v1/audit/<service>``: the caller's tenant's audit records (scope ``audit:read``)."""
    router = APIRouter(tags=["audit"])

    @router.get(
        path or f"/v1/audit/{service}",
        response_model=AuditPage,
        summary=f"Audit records of {service} for the caller's municipality, newest first",
        responses=problem_responses(
            {
                401: "Missing or invalid credentials",
                403: "The caller lacks the scope audit:read",
                422: "An invalid filter, with a JSON pointer to it",
            }
        ),
    )
    async def list_audit(
        request: Request,
        principal: AuditReader,
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z0-9_.:-]+\*?$")] = None,
        object: Annotated[str | None, Query(max_length=200)] = None,
        result: Annotated[str | None, Query(max_length=50)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> AuditPage:
        """Each record says who (``key:<id>``, ``person:<subject>``, ``service:<name>``) did what to
        which object, with what result and when; filters combine; ``action=case.*`` matches a prefix."""
        position: int | None = None
        if cursor is not None:
            if not cursor.isdigit():
                raise Problem(
                    422,
                    "the cursor is not one this API gave out",
                    slug="invalid-cursor",
                    errors=[{"pointer": "/cursor", "detail": "not a cursor of this list"}],
                )
            position = int(cursor)
        reload_audit: ReloadAudit | None = getattr(request.app.state, "reload_audit", None)
        if reload_audit is not None:
            with contextlib.suppress(Exception):
                await reload_audit.flush()
        async with request.app.state.runtime.sessions() as session:
            rows, next_cursor = await query(
                session,
                principal.tenant,
                actor=actor,
                action=action,
                object=object,
                result=result,
                since=since,
                until=until,
                cursor=position,
                limit=limit,
            )
        return AuditPage(
            items=[AuditRecordPublic.model_validate(row) for row in rows],
            next_cursor=str(next_cursor) if next_cursor is not None else None,
        )

    return router


def mount_audit(app: FastAPI) -> None:
    """Everything a service adds for the audit log: the route and the reload records."""
    service = app.state.runtime.service
    app.include_router(audit_router(service))
    install_reload_audit(app)
