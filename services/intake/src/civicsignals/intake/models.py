"""Intake's tables and its API schemas (the portal contract of DESIGN §5)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator
from sqlalchemy import Column, LargeBinary, UniqueConstraint
from sqlmodel import JSON, SQLModel
from sqlmodel import Field as SQLField

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import CaseStatus, Channel, Kind, utcnow

MAX_TEXT = 10_000
_PHONE = re.compile(r"^\+?[0-9 ()\-.]{6,20}$")


def _check_phone(value: str) -> str:
    if not _PHONE.fullmatch(value):
        raise ValueError("not a phone number: digits, spaces, dashes, brackets and a leading + only")
    return value


PhoneNumber = Annotated[str, AfterValidator(_check_phone)]


# --- API schemas -------------------------------------------------------------------------------


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    street: str | None = Field(default=None, max_length=200)
    number: str | None = Field(default=None, max_length=20)
    postcode: str | None = Field(default=None, max_length=10)
    city: str | None = Field(default=None, max_length=100)


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90, description="WGS84 latitude")
    lon: float = Field(ge=-180, le=180, description="WGS84 longitude")
    address: Address | None = None


class Reporter(BaseModel):
    """Who reported, only to keep them informed; never leaves intake unencrypted."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    phone: PhoneNumber | None = Field(default=None, max_length=20)
    consent: bool = Field(default=False, description="the reporter agrees to be contacted about this signal")

    def has_contact(self) -> bool:
        return bool(self.email or self.phone)


class SignalCreate(BaseModel):
    """What a portal posts. Only ``text`` and ``channel`` are required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "Er ligt al drie dagen een berg afval naast de container op de Kerkstraat.",
                    "channel": "web",
                    "kind": "report",
                    "language": "nl",
                    "occurred_at": "2026-11-28T09:00:00Z",
                    "location": {
                        "lat": 52.0116,
                        "lon": 4.7105,
                        "address": {
                            "street": "Kerkstraat",
                            "number": "12",
                            "postcode": "2801 AB",
                            "city": "Gouda",
                        },
                    },
                    "reporter": {"name": "A. Bewoner", "email": "bewoner@example.org", "consent": True},
                    "metadata": {"portal_reference": "F-1234"},
                }
            ]
        },
    )

    text: str = Field(min_length=1, max_length=MAX_TEXT)
    channel: Channel
    kind: Kind = "report"
    language: str | None = Field(
        default=None, pattern=r"^[a-z]{2}$", description="ISO 639-1; detected when absent"
    )
    occurred_at: datetime | None = None
    location: Location | None = None
    reporter: Reporter | None = None
    source: str | None = Field(default=None, max_length=100, description="the portal's name")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is empty")
        return value.strip()

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-28T09:00:00Z")
        return value.astimezone(UTC) if value else None


class SignalCreated(BaseModel):
    id: str
    tracking_code: str
    status_url: str


class HistoryEntry(BaseModel):
    status: CaseStatus
    at: datetime
    note: str | None = None


#: The resident's own moves in the case's life cycle (``RESIDENT_ACTIONS`` below).
ResidentAction = Literal["reply", "reopen", "withdraw"]


class TrackingPublic(BaseModel):
    """What anyone holding the tracking code may see: no personal data."""

    tracking_code: str
    status: CaseStatus
    kind: Kind
    received_at: datetime
    history: list[HistoryEntry]
    expected_by: datetime | None = None
    service_promise: str | None = None
    feedback_given: bool = False
    """Whether the resident answered the satisfaction form (a portal then stops asking)."""
    actions: list[ResidentAction] = Field(default_factory=list)
    """The moves the resident may make now (``POST …/updates``): a portal offers exactly these."""
    reopen_until: datetime | None = None
    """Until when the resident may reopen the ended case; after it, a new report is the way."""
    attachments: int = 0
    """How many photos and PDFs the signal has, so the resident sees theirs arrived (a count only:
    no file and no name is public; 0 once the person's data was erased)."""


class ContactPublic(BaseModel):
    """A reporter's contact as given to notifier (service key with ``contact:read`` only)."""

    signal_id: str
    tracking_code: str
    name: str | None
    email: str | None
    phone: str | None
    consent: bool
    language: str | None


#: The most signals one contact look-up may name: notifier asks for the mails it sends at once.
MAX_CONTACT_LOOKUP = 100


class ContactLookup(BaseModel):
    """The signals whose reporters' contacts notifier needs now (one request for many mails)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"signal_ids": ["01JDX3W6Q5TB7V0N8K2M4R6P9S"]}]},
    )

    signal_ids: list[str] = Field(min_length=1, max_length=MAX_CONTACT_LOOKUP)


class ContactsPublic(BaseModel):
    """Each signal asked for is in exactly one list: its contact, or ``missing`` when this tenant
    keeps none for it (never given, erased, or no such signal)."""

    contacts: list[ContactPublic]
    missing: list[str]


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    speaker: Literal["citizen", "agent"]
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class ConversationCreate(BaseModel):
    """A phone or chat transcript from the contact centre (a passive signal)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "channel": "phone",
                    "started_at": "2026-11-28T09:12:00Z",
                    "duration_s": 184,
                    "team": "kcc-fysiek",
                    "outcome": "melding aangemaakt",
                    "language": "nl",
                    "turns": [
                        {"speaker": "agent", "text": "Gemeente Gouda, goedemorgen, waarmee kan ik u helpen?"},
                        {
                            "speaker": "citizen",
                            "text": "De lantaarnpaal voor Kerkstraat 12 doet het al een week niet. "
                            "Mijn nummer is 06-12345678.",
                        },
                        {"speaker": "agent", "text": "Dank u, ik maak er een melding van."},
                    ],
                    "metadata": {"call_id": "K-20261128-0042"},
                }
            ]
        },
    )

    channel: Literal["phone", "chat"]
    turns: list[TurnIn] = Field(min_length=1, max_length=500)
    started_at: datetime
    duration_s: float = Field(ge=0, le=86_400)
    team: str | None = Field(default=None, max_length=100)
    outcome: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}$")
    source: str | None = Field(default=None, max_length=100)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("started_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-28T09:00:00Z")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _total_length(self) -> ConversationCreate:
        if sum(len(turn.text) for turn in self.turns) > 100_000:
            raise ValueError("the transcript is longer than 100,000 characters")
        return self


class ConversationCreated(BaseModel):
    signal_id: str


class AttachmentPublic(BaseModel):
    """What intake tells the portal about a stored attachment (never the uploader's file name)."""

    id: str
    signal_id: str
    media_type: str
    size: int
    sha256: str
    attachments: int = Field(description="how many attachments the signal has now")


class AttachmentInfo(BaseModel):
    """One stored attachment, as staff see it in a signal's list (the file is its own resource)."""

    id: str
    media_type: str
    size: int
    sha256: str
    created_at: datetime


class AttachmentList(BaseModel):
    signal_id: str
    items: list[AttachmentInfo]


class FeedbackCreate(BaseModel):
    """The satisfaction form on the public tracking page."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"satisfied": True, "score": 4, "comment": "Snel opgelost, dank!"}]},
    )

    satisfied: bool
    score: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=2000)


class FeedbackAccepted(BaseModel):
    tracking_code: str
    satisfied: bool
    score: int


# What a resident may do from their page, the case status it asks routing for, and the statuses
# it is offered in: routing's lifecycle lets the ``resident`` role make exactly these moves, and
# has the final say (a case that moved meanwhile answers 409).
RESIDENT_ACTIONS: dict[ResidentAction, tuple[CaseStatus, frozenset[str]]] = {
    "reply": ("in_progress", frozenset({"waiting_on_resident"})),
    "reopen": ("reopened", frozenset({"resolved", "closed"})),
    "withdraw": (
        "cancelled",
        frozenset({"triage", "assigned", "in_progress", "waiting_on_resident", "forwarded"}),
    ),
}


class ResidentUpdateCreate(BaseModel):
    """The resident answers the question they were asked, reports that the problem is back, or
    withdraws their signal; the text (redacted) becomes the public note of the change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"action": "reply", "text": "De container staat achter het gemeentehuis."}]
        },
    )

    action: ResidentAction
    text: str | None = Field(
        default=None, max_length=4000, description="required to reply and to reopen; optional to withdraw"
    )

    @property
    def note(self) -> str | None:
        return self.text.strip() if self.text and self.text.strip() else None


class ResidentUpdateAccepted(BaseModel):
    """Routing made the change; the tracking page shows it as soon as the case's event is back."""

    tracking_code: str
    action: ResidentAction
    status: CaseStatus


class ResidentAttachmentAccepted(BaseModel):
    """A resident's photo or PDF, stored with their signal (no ids, no file name: a public answer)."""

    tracking_code: str
    media_type: str
    size: int
    attachments: int = Field(description="how many attachments the signal has now")


class PersonSelection(BaseModel):
    """One person, as a privacy officer knows them from their request: exactly one of the three.

    An e-mail address or phone number finds every signal whose reporter gave it (the sealed
    contacts are opened one by one: there is no index of anyone's e-mail); a tracking code finds
    that one signal, also after its contact was erased or removed by retention.
    """

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"email": "bewoner@example.org"}]}
    )

    email: EmailStr | None = None
    phone: PhoneNumber | None = Field(default=None, max_length=20)
    tracking_code: str | None = Field(default=None, min_length=8, max_length=20)


class ErasureRequest(PersonSelection):
    """An erasure request (AVG article 17); ``dry_run`` only shows which signals it would erase."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"email": "bewoner@example.org", "dry_run": True}]},
    )

    dry_run: bool = Field(default=False, description="find the signals, erase nothing")
    signal_ids: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="the signals the dry run listed and the officer confirmed: erase only when the "
        "person's signals are exactly these (else 409 signals-changed with the current list)",
    )


class PersonSignal(BaseModel):
    """One signal an erasure found: enough for the privacy officer to check it is the person's."""

    signal_id: str
    tracking_code: str
    received_at: datetime
    erased_before: datetime | None = Field(description="when an earlier erasure already erased it")


class ErasureCounts(BaseModel):
    signals: int
    contacts: int
    attachment_files: int


class ErasureOutcome(BaseModel):
    """What an erasure request found and erased; the other services follow through ``signal.erased``."""

    dry_run: bool
    signals: list[PersonSignal]
    erased: ErasureCounts | None = Field(description="null in a dry run")


#: Two mails of a signal as the access document lists them (``mails``), for the API's examples.
MAIL_RECORD_EXAMPLE: list[dict[str, Any]] = [
    {
        "created_at": "2026-11-28T09:03:15Z",
        "template": "acknowledgement",
        "status": "delivered",
        "delivered_at": "2026-11-28T09:03:16Z",
        "attempts": 1,
    },
    {
        "created_at": "2026-11-28T10:00:02Z",
        "template": "status_update",
        "status": "delivered",
        "delivered_at": "2026-11-28T10:01:03Z",
        "attempts": 2,
    },
]


class AccessDocumentPublic(BaseModel):
    """A person's access document (format ``civicsignals.intake.access.v1``, as the command writes
    it); ``explanation`` says in Dutch and English what each part of a signal holds."""

    format: str
    tenant: str
    generated_at: str
    selected_by: dict[str, str]
    summary: dict[str, str]
    explanation: dict[str, dict[str, str]]
    signal_count: int
    case_notes_included: bool = Field(
        description="true: each signal's case_notes holds the internal notes routing keeps of its case "
        "(the API answers only such documents; the command writes false with --without-case-notes)"
    )
    mails_included: bool = Field(
        description="true: each signal's mails lists the e-mails notifier sent (or tried to send, or "
        "left unsent) about it, oldest first: {created_at, template, status, delivered_at, attempts}, "
        "never the address, which notifier does not keep (the API answers only such documents; the "
        "command writes false, and every mails null, with --without-mail-record)",
        examples=[True],
    )
    signals: list[dict[str, Any]] = Field(
        description="one part per signal, oldest first; besides what intake keeps, each part holds "
        "case_notes (routing's) and mails (notifier's)",
        examples=[
            [
                {
                    "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                    "tracking_code": "7KQ2-M9XD-4HTC",
                    "case_notes": [],
                    "mails": MAIL_RECORD_EXAMPLE,
                }
            ]
        ],
    )


# --- tables ------------------------------------------------------------------------------------


class Signal(SQLModel, table=True):
    __tablename__ = "signal"
    __table_args__ = (UniqueConstraint("tenant", "external_id", name="uq_signal_tenant_external_id"),)

    id: str = SQLField(primary_key=True)
    tenant: str = SQLField(index=True)
    tracking_code: str = SQLField(unique=True, index=True)
    kind: str
    channel: str
    text: str
    text_redacted: str
    language: str | None = None
    occurred_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    received_at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow, index=True)
    lat: float | None = None
    lon: float | None = None
    address: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSON))
    extra: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column("metadata", JSON))
    source: str
    has_contact: bool = False
    status: str = "received"
    status_sequence: int = 0
    case_id: str | None = None
    expected_by: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    service_promise: str | None = None
    # Derived from the tenant's areas.geojson when the signal has a point inside one of them.
    area: str | None = None
    district: str | None = None
    attachments: int = 0
    # Set by `civicsignals-intake import`: the id in the municipality's old system, unique per tenant.
    external_id: str | None = None
    imported: bool = False
    # A category given by the sender (an Open311 service_code, an import's category): a hint only,
    # classification still runs; topic/subtopic are what the classifier decided.
    service_code: str | None = None
    topic: str | None = None
    subtopic: str | None = None
    responsible: str | None = None
    # The case's sequence at which ``responsible`` was learnt: a reassignment without a status change
    # comes only on the departments' feed, and must neither be undone by nor undo a later change.
    responsible_sequence: int = SQLField(default=0, sa_column_kwargs={"server_default": "0"})
    # Every department the case ever reached (responsible, informed, escalated to), from routing's
    # events: the recipients an access request lists (AVG article 15).
    departments: list[str] | None = SQLField(default=None, sa_column=Column(JSON))
    # The departments that hold the case now (responsible and informed), as of the case's
    # ``holders_sequence``: whose department-bound keys may open the signal's attachments. A
    # department the case left loses them. NULL for signals routed before migration 0006 until
    # their case moves again: ``departments`` decides for them, as it did.
    holders: list[str] | None = SQLField(default=None, sa_column=Column(JSON))
    holders_sequence: int = SQLField(default=0, sa_column_kwargs={"server_default": "0"})
    partners: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    status_updated_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime, index=True)
    erased_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)


class Contact(SQLModel, table=True):
    """A reporter's contact data, sealed with AES-GCM (DESIGN §4)."""

    __tablename__ = "contact"

    signal_id: str = SQLField(primary_key=True, foreign_key="signal.id")
    tenant: str = SQLField(index=True)
    key_id: str
    nonce: bytes = SQLField(sa_column=Column(LargeBinary, nullable=False))
    ciphertext: bytes = SQLField(sa_column=Column(LargeBinary, nullable=False))
    consent: bool = False
    created_at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow)


class StatusEntry(SQLModel, table=True):
    __tablename__ = "status_entry"
    __table_args__ = (UniqueConstraint("signal_id", "sequence"),)

    id: int | None = SQLField(default=None, primary_key=True)
    signal_id: str = SQLField(index=True, foreign_key="signal.id")
    sequence: int
    status: str
    at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow)
    note: str | None = None
    actor: str | None = SQLField(
        default=None,
        description="who made the change, as a role (`resident`, `department:<code>` ...; null before "
        "migration 0005): the resident's own words are erased with their data",
    )


class Attachment(SQLModel, table=True):
    """A photo or PDF of a signal; the bytes live on the attachments volume, never in the database.

    The uploader's file name is not kept: names like ``jan-jansen-paspoort.pdf`` are personal data.
    """

    __tablename__ = "attachment"

    id: str = SQLField(primary_key=True)
    signal_id: str = SQLField(index=True, foreign_key="signal.id")
    tenant: str = SQLField(index=True)
    media_type: str
    size: int
    sha256: str
    created_at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow)


class Conversation(SQLModel, table=True):
    """A phone or chat transcript (a passive signal). Only the redacted turns are stored."""

    __tablename__ = "conversation"

    id: str = SQLField(primary_key=True, description="the conversation's signal id")
    tenant: str = SQLField(index=True)
    channel: str
    started_at: datetime = SQLField(sa_type=UtcDateTime)
    duration_s: float
    team: str | None = None
    outcome: str | None = None
    language: str | None = None
    turns: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSON))
    source: str
    extra: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column("metadata", JSON))
    received_at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow, index=True)


class Feedback(SQLModel, table=True):
    """A resident's answer to the satisfaction form: one per signal."""

    __tablename__ = "feedback"

    signal_id: str = SQLField(primary_key=True, foreign_key="signal.id")
    tenant: str = SQLField(index=True)
    satisfied: bool
    score: int
    comment: str | None = None
    at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow)


class IdempotencyRecord(SQLModel, table=True):
    """One ``Idempotency-Key`` of one tenant: in flight while ``status_code`` is empty.

    ``resource_id`` is the id of the object the request creates, chosen when the key is claimed:
    a retry that finds the claim abandoned looks that object up first, so a crash between the
    object's commit and the key's completion never makes a second object.
    """

    __tablename__ = "idempotency_key"

    tenant: str = SQLField(primary_key=True)
    key: str = SQLField(primary_key=True)
    request_hash: str
    resource_id: str | None = SQLField(default=None, max_length=40)
    status_code: int | None = None
    response: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSON))
    created_at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow)


class AuditRecord(SQLModel, table=True):
    """Who or what did which action on which object, and with what result (DESIGN §4)."""

    __tablename__ = "audit"

    id: int | None = SQLField(default=None, primary_key=True)
    at: datetime = SQLField(sa_type=UtcDateTime, default_factory=utcnow, index=True)
    tenant: str = SQLField(index=True)
    actor: str
    action: str
    object: str
    result: str
    detail: str | None = SQLField(default=None, max_length=200)
    """A short note, never personal data: for an erasure from the privacy desk, how the officer
    proved it was them just before (migration ``0007``)."""
