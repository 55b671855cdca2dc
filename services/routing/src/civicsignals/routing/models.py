"""Routing's tables (cases and their history) and API schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Column, UniqueConstraint
from sqlmodel import JSON, SQLModel
from sqlmodel import Field as SQLField

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import CaseStatus, utcnow


class CaseBase(SQLModel):
    tenant: str = SQLField(index=True)
    signal_id: str = SQLField(unique=True, index=True)
    tracking_code: str
    topic: str = SQLField(index=True)
    subtopic: str | None = None
    confidence: float
    needs_review: bool = False
    kind: str
    channel: str | None = None
    language: str | None = None
    text: str | None = SQLField(default=None, description="redacted")
    status: str = SQLField(default="received", index=True)
    responsible: str = SQLField(index=True)
    informed: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    partners: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    priority: str = "normal"
    rule_id: str
    service_promise: str | None = None
    due_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime, index=True)
    updated_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    sequence: int = 0


class Case(CaseBase, table=True):
    __tablename__ = "case"

    id: str = SQLField(primary_key=True)


class CaseHistory(SQLModel, table=True):
    """Append-only: every transition of a case, with the actor's role and its notes."""

    __tablename__ = "case_history"
    __table_args__ = (UniqueConstraint("case_id", "sequence"),)

    id: int | None = SQLField(default=None, primary_key=True)
    case_id: str = SQLField(index=True, foreign_key="case.id")
    sequence: int
    from_status: str | None = None
    to_status: str
    at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    actor: str
    public_note: str | None = None
    internal_note: str | None = None


class HistoryPublic(BaseModel):
    sequence: int
    from_status: CaseStatus | None
    to_status: CaseStatus
    at: datetime
    actor: str
    public_note: str | None
    internal_note: str | None


class CasePublic(CaseBase):
    id: str


class CaseDetail(CasePublic):
    history: list[HistoryPublic]


class CasePage(BaseModel):
    items: list[CasePublic]
    next_cursor: str | None
