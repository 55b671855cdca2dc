"""Routing's tables (cases, their history, partner updates, audit) and API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Column, UniqueConstraint
from sqlmodel import JSON, Relationship, SQLModel
from sqlmodel import Field as SQLField

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import CaseStatus, Channel, Kind, utcnow

CODE = r"^[a-z0-9-]{1,63}$"
NOTE = 4000


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
    area: str | None = SQLField(default=None, index=True)
    district: str | None = None
    text: str | None = SQLField(default=None, description="redacted")
    status: str = SQLField(default="received", index=True)
    responsible: str = SQLField(index=True)
    informed: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    partners: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    priority: str = SQLField(default="normal", index=True)
    rule_id: str
    rule_version: int = 1
    matched_rules: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    service_promise: str | None = None
    sla_days: int = 5
    sla_type: str = "working"
    due_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime, index=True)
    escalation_level: int = 0
    duplicate_of: str | None = SQLField(default=None, index=True)
    attachments: int = SQLField(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        description="photos and PDFs the signal has at intake (`signal.attachment_added`); "
        "open them with `GET /v1/signals/{signal_id}/attachments`",
    )
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime, index=True)
    updated_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    sequence: int = SQLField(default=0, description="raised by every change; the optimistic lock")
    erased_at: datetime | None = SQLField(
        default=None,
        sa_type=UtcDateTime,
        description="when the resident's data of the signal was erased on request (AVG article 17, "
        "`signal.erased`): the internal notes written before then are gone; null when never",
    )


class Case(CaseBase, table=True):
    __tablename__ = "case"

    id: str = SQLField(primary_key=True)


class CaseHistory(SQLModel, table=True):
    """Append-only: every change of a case, with the actor's role and its notes."""

    __tablename__ = "case_history"
    __table_args__ = (UniqueConstraint("case_id", "sequence"),)

    id: int | None = SQLField(default=None, primary_key=True)
    case_id: str = SQLField(index=True, foreign_key="case.id")
    sequence: int
    kind: str = "transition"
    from_status: str | None = None
    to_status: str
    at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    actor: str
    public_note: str | None = None
    internal_note: str | None = None
    details: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON))
    # Set only on a new case's first entry (``open_case``), never read: it tells the session to
    # insert the case before its history, so a consumer batch of new cases needs one flush at its
    # commit instead of one per case. Reading it would need a query, hence ``lazy="raise"``.
    case: Case = Relationship(sa_relationship_kwargs={"lazy": "raise"})


class PartnerUpdate(SQLModel, table=True):
    """The update ids a partner (or intake's Open311 route) already posted, so a retry changes nothing."""

    __tablename__ = "routing_partner_update"
    __table_args__ = (UniqueConstraint("tenant", "actor", "update_id"),)

    id: int | None = SQLField(default=None, primary_key=True)
    tenant: str
    actor: str
    update_id: str
    case_id: str = SQLField(index=True)
    sequence: int
    at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)


class SignalBeforeCase(SQLModel, table=True):
    """What routing heard of a signal that still had no case when it stopped waiting for one
    (``flows.CASE_WAIT``): its number of photos and its erasure, applied when the case opens.

    A signal normally has its case within seconds; this is for one whose classification came
    later (the classifier stopped for longer than the wait), so that its case still opens erased
    and with its attachments counted. The row goes when the case opens.
    """

    __tablename__ = "routing_signal_before_case"

    signal_id: str = SQLField(primary_key=True)
    tenant: str
    attachments: int = 0
    erased_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    recorded_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)


# -- API schemas -----------------------------------------------------------------------------------


class HistoryPublic(BaseModel):
    sequence: int
    kind: str
    from_status: CaseStatus | None
    to_status: CaseStatus
    at: datetime
    actor: str
    public_note: str | None
    internal_note: str | None
    details: dict[str, Any] = {}


class CasePublic(CaseBase):
    id: str
    overdue: bool = False


class CaseDetail(CasePublic):
    history: list[HistoryPublic]
    allowed_transitions: list[str] = Field(description="what the caller may move the case to from here")


class CasePage(BaseModel):
    items: list[CasePublic]
    next_cursor: str | None


class Notes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_note: str | None = Field(default=None, max_length=NOTE, description="shown to the resident")
    internal_note: str | None = Field(default=None, max_length=NOTE, description="for staff only")


class TransitionRequest(Notes):
    to: CaseStatus
    expected_sequence: int | None = Field(
        default=None, ge=0, description="the sequence the caller last saw; a 409 when the case moved since"
    )
    partner: str | None = Field(default=None, pattern=CODE, description="to forward to (status forwarded)")
    duplicate_of: str | None = Field(
        default=None, max_length=64, description="the surviving case (duplicate)"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "in_progress", "public_note": "We gaan ermee aan de slag."}]},
    )


class AssignmentRequest(Notes):
    responsible: str = Field(pattern=CODE)
    informed: list[str] | None = Field(default=None, max_length=20)
    expected_sequence: int | None = Field(default=None, ge=0)


class NoteRequest(Notes):
    @model_validator(mode="after")
    def _something(self) -> NoteRequest:
        if not self.public_note and not self.internal_note:
            raise ValueError("give a public_note or an internal_note")
        return self


class ReclassifyRequest(Notes):
    topic: str = Field(pattern=CODE)
    subtopic: str | None = Field(default=None, pattern=CODE)
    reroute: bool = Field(default=False, description="run the rules again and reassign when they say so")
    expected_sequence: int | None = Field(default=None, ge=0)


class CaseUpdateRequest(Notes):
    """A partner's (or intake's Open311 route's) update on a case."""

    status: CaseStatus | None = None
    update_id: str | None = Field(default=None, min_length=1, max_length=128, description="idempotency")
    external_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="alias of update_id"
    )
    on_behalf_of_resident: bool = Field(
        default=False, description="intake only: the reporter made this update (role resident)"
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"status": "resolved", "public_note": "De lekkage is verholpen.", "update_id": "wp-123"}
            ]
        },
    )


class CaseUpdateResult(BaseModel):
    case_id: str
    status: CaseStatus
    sequence: int
    replayed: bool = False


class SampleSignal(BaseModel):
    """A signal to run through the rules; only what the rules look at."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=CODE)
    subtopic: str | None = Field(default=None, pattern=CODE)
    kind: Kind = "report"
    channel: Channel | None = "web"
    language: str | None = None
    area: str | None = None
    district: str | None = None
    text: str | None = Field(default=None, max_length=10_000)
    confidence: float = Field(default=0.9, ge=0, le=1)
    needs_review: bool = False
    received_at: datetime | None = None


class RulesTestRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"signal": {"topic": "afval", "text": "Vuilniszakken naast de container", "confidence": 0.8}}
            ]
        },
    )

    signal: SampleSignal
    rules: str | None = Field(
        default=None, max_length=500_000, description="a draft rules.yaml to test instead of the active one"
    )


class RuleExplanation(BaseModel):
    rule_id: str
    line: int
    outcome: Literal["matched", "matched_continue", "not_matched", "skipped_unsure", "not_evaluated"]
    reasons: list[str]


class RulesTestResult(BaseModel):
    version: int
    digest: str
    rule_id: str
    matched: list[str]
    responsible: str
    informed: list[str]
    partners: list[str]
    priority: str
    sla: dict[str, Any]
    due_at: datetime
    service_promise: str | None
    triage_reason: str | None
    explanation: list[RuleExplanation]


class RulesInfo(BaseModel):
    version: int
    digest: str
    rules: int
    triage: str
    error: str | None = Field(
        description="the last refused change, when the active rules are an older version"
    )
