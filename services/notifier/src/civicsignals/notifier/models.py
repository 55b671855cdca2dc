"""Notifier's tables and API schemas.

Notifier keeps partners, their endpoints (secrets sealed), what it knows of each signal (language,
whether there is a contact, the partners its case went to, the departments that hold its case now),
and every delivery with each attempt.
It never keeps a resident's address: that is fetched from intake when a mail is sent, and dropped.

Table names carry the prefix ``notifier_``: every service's models share one SQLModel metadata in a
test process, and a name another service also used would clash there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import check_code, utcnow
from civicsignals.common.ids import new_id

WEBHOOK_EVENT_TYPES = ("signal.routed", "case.status_changed", "signal.attachment_added")
"""What a partner endpoint can subscribe to (the short form of the CloudEvent type). Each of them
passes the partner a case's data (or the ids with which it reads that data at intake)."""

ERASURE_EVENT_TYPE = "signal.erased"
"""Not a subscription, and so not in ``WEBHOOK_EVENT_TYPES``: AVG article 19 asks to tell every
recipient of a person's data that it was erased, so every endpoint subscribed to any of
``WEBHOOK_EVENT_TYPES`` gets it, whatever its list says. Listing it would suggest that leaving it
out stops it; an endpoint that names it is refused like any unknown type."""

DeliveryStatus = Literal["scheduled", "sending", "delivered", "failed", "skipped"]
Channel = Literal["email", "webhook"]


# --- tables --------------------------------------------------------------------------------------


class Partner(SQLModel, table=True):
    """A partner organisation of one tenant (housing corporation, welfare organisation …)."""

    __tablename__ = "notifier_partner"
    __table_args__ = (UniqueConstraint("tenant", "code"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    tenant: str = Field(index=True)
    code: str = Field(description="the code routing rules name in `partners` (signal.routed)")
    name: str
    contact_email: str | None = Field(
        default=None, description="the partner's technical contact, told when an endpoint is disabled"
    )
    language: str = "nl"
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Endpoint(SQLModel, table=True):
    """A URL of a partner that receives signed webhooks for some event types."""

    __tablename__ = "notifier_endpoint"

    id: str = Field(default_factory=new_id, primary_key=True)
    tenant: str = Field(index=True)
    partner_id: str = Field(index=True, foreign_key="notifier_partner.id")
    url: str = Field(sa_column=Column(Text, nullable=False))
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    secrets: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False),
        description="[{sealed, created_at, expires_at}]: the current secret first; sealed with SecretBox",
    )
    failing_since: datetime | None = Field(
        default=None, sa_type=UtcDateTime, description="first failure after the last success"
    )
    last_success_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class SignalLink(SQLModel, table=True):
    """What notifier learnt of a signal from the bus: enough to address mails and fan out webhooks."""

    __tablename__ = "notifier_signal"

    signal_id: str = Field(primary_key=True)
    tenant: str = Field(index=True)
    tracking_code: str | None = None
    language: str | None = None
    has_contact: bool | None = None
    case_id: str | None = Field(default=None, index=True)
    partners: list[str] | None = Field(
        default=None, sa_column=Column(JSON), description="set once signal.routed was seen"
    )
    service_promise: str | None = None
    due_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    holders: list[str] | None = Field(
        default=None,
        sa_column=Column(JSON),
        description="the departments that hold the case now (responsible and informed), as of "
        "``holders_sequence``: whose department-bound keys read the signal's deliveries. NULL until "
        "signal.routed or case.departments_changed was seen (and for signals routed before "
        "migration 0003): no department-bound key sees them",
    )
    holders_sequence: int = Field(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        description="the case's sequence ``holders`` are of (signal.routed is 1); a change of a lower "
        "or equal sequence, arriving later, changes nothing",
    )
    erased_at: datetime | None = Field(
        default=None,
        sa_type=UtcDateTime,
        description="when intake erased the person's data of the signal (signal.erased): no resident "
        "mail is scheduled from then on, whatever event comes later",
    )


class Delivery(SQLModel, table=True):
    """One message (an e-mail or a webhook) and where it stands; each try is an :class:`Attempt`.

    ``next_attempt_at`` is when the scheduler picks it up: the end of a coalescing window, the next
    step of the retry schedule, or, while ``sending``, the end of the lease of the attempt under way
    (so a delivery whose process died is picked up again).
    """

    __tablename__ = "notifier_delivery"

    id: str = Field(default_factory=new_id, primary_key=True)
    message_id: str = Field(
        unique=True, description="webhook-id / Message-ID: the same on every retry and after a crash"
    )
    tenant: str = Field(index=True)
    channel: str = Field(description="email or webhook")
    template: str | None = Field(default=None, description="e-mail template")
    event_id: str = Field(description="the (latest) event this message is about")
    event_type: str = Field(description="short type of that event, e.g. signal.routed")
    event_time: datetime = Field(sa_type=UtcDateTime, description="when that event happened (latency)")
    signal_id: str | None = Field(default=None, index=True)
    case_id: str | None = Field(default=None, index=True)
    partner_id: str | None = Field(default=None, index=True)
    partner_code: str | None = None
    endpoint_id: str | None = Field(default=None, index=True)
    payload: str = Field(
        sa_column=Column(Text, nullable=False),
        description="webhook: the CloudEvent body exactly as signed; e-mail: the template values (JSON)",
    )
    coalesce_key: str | None = Field(
        default=None,
        unique=True,
        description="set while an e-mail still takes in later changes of its case; cleared when claimed",
    )
    sequence: int = Field(default=0, description="latest case sequence merged into this e-mail")
    status: str = Field(default="scheduled", index=True)
    status_reason: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime, index=True)
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Attempt(SQLModel, table=True):
    """One try of one delivery, recorded before it is made and completed after."""

    __tablename__ = "notifier_attempt"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(index=True, foreign_key="notifier_delivery.id")
    number: int
    started_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    outcome: str = Field(
        default="in_flight",
        description="in_flight, delivered, retry, throttled, gone, failed, skipped, abandoned (its process died)",
    )
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


# The tables themselves, for the hot paths that write with Core statements (see dispatch.py).
DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
ATTEMPTS: Table = Attempt.__table__  # type: ignore[attr-defined]
ENDPOINTS: Table = Endpoint.__table__  # type: ignore[attr-defined]
SIGNAL_LINKS: Table = SignalLink.__table__  # type: ignore[attr-defined]


# --- API schemas ---------------------------------------------------------------------------------


class PartnerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = PydanticField(
        min_length=1, max_length=63, description="as named in routing rules", examples=["woonpartners"]
    )
    name: str | None = PydanticField(default=None, min_length=1, max_length=200, examples=["Woonpartners"])
    contact_email: EmailStr | None = PydanticField(
        default=None, description="told when an endpoint is disabled", examples=["it@woonpartners.example"]
    )
    language: Literal["nl", "en"] = "nl"

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        return check_code(value, "partner code")


class PartnerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = PydanticField(default=None, min_length=1, max_length=200)
    contact_email: EmailStr | None = None
    language: Literal["nl", "en"] | None = None


class PartnerPublic(BaseModel):
    id: str
    code: str
    name: str
    contact_email: str | None
    language: str
    created_at: datetime
    updated_at: datetime


class PartnerList(BaseModel):
    items: list[PartnerPublic]


def _check_event_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for index, item in enumerate(value):
        if item not in WEBHOOK_EVENT_TYPES:
            raise ValueError(f"item {index}: {item!r} is not one of {', '.join(WEBHOOK_EVENT_TYPES)}")
    return sorted(set(value))


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = PydanticField(
        min_length=1, max_length=2000, examples=["https://hooks.woonpartners.example/civic"]
    )
    event_types: list[str] = PydanticField(
        default_factory=lambda: sorted(WEBHOOK_EVENT_TYPES),
        examples=[["signal.routed", "case.status_changed"]],
    )
    enabled: bool = True
    secret: str | None = PydanticField(
        default=None, description="a whsec_ secret of your own; one is generated when absent"
    )

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return _check_event_types(value) or []


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = PydanticField(default=None, min_length=1, max_length=2000)
    event_types: list[str] | None = None
    enabled: bool | None = PydanticField(default=None, description="true re-enables a disabled endpoint")

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return _check_event_types(value)


class SecretInfo(BaseModel):
    """A secret as listed: never the secret itself, only when it was made and until when it is valid."""

    created_at: datetime
    expires_at: datetime | None


class EndpointPublic(BaseModel):
    id: str
    partner_id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    secrets: list[SecretInfo]
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointPublic):
    secret: str = PydanticField(description="the signing secret; shown only now")


class EndpointList(BaseModel):
    items: list[EndpointPublic]


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: float | None = PydanticField(
        default=None, ge=0, le=30 * 86400, description="how long the previous secret stays valid"
    )
    secret: str | None = PydanticField(default=None, description="a whsec_ secret of your own")


class SecretRotated(BaseModel):
    secret: str = PydanticField(description="the new signing secret; shown only now")
    previous_valid_until: datetime | None


class AttemptPublic(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: float | None


class DeliveryPublic(BaseModel):
    """A delivery as the log shows it: no address, no URL, no body. The same for every reader
    (an admin of the whole log, or a ``cases:read`` key asking about one signal): what a
    resident's mail was and how it went, never where it went or what it said."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    message_id: str
    channel: str = PydanticField(description="email or webhook")
    template: str | None = PydanticField(
        description="an e-mail's template: acknowledgement, status_update, resolution, reopening "
        "(to the resident), endpoint_disabled (to a partner's contact); null for a webhook"
    )
    event_id: str
    event_type: str
    signal_id: str | None
    case_id: str | None
    partner: str | None = PydanticField(validation_alias="partner_code")
    partner_id: str | None
    endpoint_id: str | None
    status: str = PydanticField(
        description="scheduled, sending, delivered (e-mail: accepted by the SMTP server; webhook: "
        "a 2xx), failed (given up), skipped (not sent: no contact, no consent, erased …)"
    )
    status_reason: str | None
    attempts: int = PydanticField(description="how many times it was tried")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime = PydanticField(description="when notifier scheduled it")
    delivered_at: datetime | None = PydanticField(description="when it was delivered (see status)")


class DeliveryDetail(DeliveryPublic):
    attempt_log: list[AttemptPublic]


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None = PydanticField(
        description="pass as ``cursor`` for the next (older) page; null on the last page"
    )


class TemplateInfo(BaseModel):
    name: str
    language: str
    source: Literal["tenant", "default"]


class TemplateList(BaseModel):
    items: list[TemplateInfo]
    variables: dict[str, list[str]]


class TemplatePreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Literal["nl", "en", "tr", "pl", "ar"] = PydanticField(
        default="nl", description="a partner's template (endpoint_disabled) is in nl and en only"
    )
    values: dict[str, Any] = PydanticField(
        default_factory=dict, description="values to use instead of the example values"
    )
    text: str | None = PydanticField(
        default=None, max_length=100_000, description="a draft of the text template to preview instead"
    )
    html: str | None = PydanticField(
        default=None, max_length=200_000, description="a draft of the HTML template to preview instead"
    )


class TemplatePreview(BaseModel):
    name: str
    language: str
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Claimed:
    """What an attempt needs of its delivery, read while claiming it."""

    id: str
    message_id: str
    tenant: str
    channel: str
    template: str | None
    event_type: str
    event_time: datetime
    signal_id: str | None
    case_id: str | None
    partner_id: str | None
    partner_code: str | None
    endpoint_id: str | None
    payload: str
    number: int
    endpoint: Endpoint | None = None
    """A webhook's endpoint as it was at the claim (read with the claim, not once per attempt)."""
    claimed_at: float = dataclass_field(default_factory=time.monotonic)

    @classmethod
    def of(cls, delivery: Mapping[str, Any], *, number: int, endpoint: Endpoint | None) -> Claimed:
        """The claim of a delivery given by its columns (a row read by the dispatcher's claim, or
        the row a consumer stages as it creates the delivery claimed)."""
        return cls(
            **{name: delivery[name] for name in CLAIMED_COLUMNS},
            number=number,
            endpoint=endpoint,
        )


CLAIMED_COLUMNS = (
    "id",
    "message_id",
    "tenant",
    "channel",
    "template",
    "event_type",
    "event_time",
    "signal_id",
    "case_id",
    "partner_id",
    "partner_code",
    "endpoint_id",
    "payload",
)
"""The delivery's columns that its claim carries to the attempt."""


def in_flight_attempt(delivery_id: str, number: int, started_at: datetime) -> dict[str, Any]:
    """The ``attempt`` row a claim writes: attempt ``number`` under way since ``started_at``."""
    return {
        "delivery_id": delivery_id,
        "number": number,
        "started_at": started_at,
        "finished_at": None,
        "outcome": "in_flight",
        "status_code": None,
        "error": None,
        "duration_ms": None,
    }
