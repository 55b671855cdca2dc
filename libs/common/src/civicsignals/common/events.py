"""The CloudEvents envelope and the event models of DESIGN §2.

Every message on the bus is a CloudEvent 1.0 in structured JSON mode. The ``data`` of each event
type is a pydantic model here, so that producers and consumers in different services agree on it
through one definition. Fields may be added within a ``v<N>``; none may be removed or renamed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from civicsignals.common.ids import new_id

SPEC_VERSION: Literal["1.0"] = "1.0"
TYPE_PREFIX = "nl.civicsignals"
CODE_PATTERN = re.compile(r"^[a-z0-9-]{1,63}$")

Kind = Literal["report", "complaint", "question", "feedback", "idea", "compliment"]
Channel = Literal["web", "app", "phone", "email", "chat", "social", "survey", "counter", "open311"]
CaseStatus = Literal[
    "received",
    "triage",
    "assigned",
    "in_progress",
    "waiting_on_resident",
    "forwarded",
    "resolved",
    "closed",
    "reopened",
    "rejected",
    "duplicate",
    "cancelled",
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
CHANNELS: tuple[str, ...] = Channel.__args__  # type: ignore[attr-defined]
CASE_STATUSES: tuple[str, ...] = CaseStatus.__args__  # type: ignore[attr-defined]


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_code(value: str, what: str = "code") -> str:
    """Tenant and department codes go into NATS subjects, so they must be ``[a-z0-9-]``."""
    if not CODE_PATTERN.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be lowercase letters, digits and dashes")
    return value


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope, with the ``tenant`` extension attribute."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(default_factory=new_id)
    source: str
    type: str
    subject: str
    time: datetime = Field(default_factory=utcnow)
    datacontenttype: Literal["application/json"] = "application/json"
    tenant: str
    data: dict[str, Any]

    @field_validator("tenant")
    @classmethod
    def _tenant_code(cls, value: str) -> str:
        return check_code(value, "tenant")

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a time zone")
        return value.astimezone(UTC)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> CloudEvent:
        """Read a received event; the defaults a producer gets (``id``, ``specversion``) are not
        filled in, so that a consumer never deduplicates or traces by an id it made up."""
        event = cls.model_validate_json(raw)
        missing = {"specversion", "id"} - event.model_fields_set
        if missing:
            raise ValueError(f"the CloudEvent lacks the required attribute(s) {', '.join(sorted(missing))}")
        return event


class EventData(BaseModel):
    """Base of every event's ``data``: it knows its type and the subject it travels on."""

    model_config = ConfigDict(extra="allow")

    aggregate: ClassVar[str]
    event: ClassVar[str]
    version: ClassVar[int] = 1

    @classmethod
    def event_type(cls) -> str:
        return f"{TYPE_PREFIX}.{cls.aggregate}.{cls.event}.v{cls.version}"

    @classmethod
    def bus_subject(cls, tenant: str) -> str:
        return f"civic.{check_code(tenant, 'tenant')}.{cls.aggregate}.{cls.event}"

    @classmethod
    def subscription(cls) -> str:
        """The subject filter that matches this event for every tenant (and, on the department
        feeds, ``civic.<tenant>.dept.<department>.<event>``, for every department)."""
        if cls.aggregate == "dept":
            return f"civic.*.dept.*.{cls.event}"
        return f"civic.*.{cls.aggregate}.{cls.event}"

    def subject_id(self) -> str:
        """The CloudEvent ``subject``: the signal or case the event is about."""
        if self.aggregate in ("case", "dept"):
            return str(getattr(self, "case_id", ""))
        return str(getattr(self, "signal_id", None) or getattr(self, "case_id", ""))


class CoarseLocation(BaseModel):
    """A location as it may travel on the bus: coordinates rounded to about 100 m, and the area."""

    lat: float | None = None
    lon: float | None = None
    area: str | None = None
    district: str | None = None


class SignalReceived(EventData):
    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "received"

    signal_id: str
    tracking_code: str
    kind: Kind
    channel: Channel
    text: str
    language: str | None = None
    location: CoarseLocation | None = None
    received_at: datetime
    has_contact: bool
    source: str
    occurred_at: datetime | None = None
    attachments: int = 0
    imported: bool = Field(
        default=False,
        description="history loaded by `civicsignals-intake import`: classify and count it, open no case",
    )


class SignalAttachmentAdded(EventData):
    """A photo or PDF was attached to a signal after it was received; only the count travels."""

    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "attachment_added"

    signal_id: str
    attachments: int = Field(ge=1, description="how many attachments the signal has now")


class SignalErased(EventData):
    """A person's data of this signal was erased at their request (AVG article 17).

    Every service that keeps something of the signal beyond what statistics need drops it, and
    tells whom it passed the signal on to (article 19): routing the departments the case reached,
    notifier the case's partners. Only ids travel; the signal itself, its kind, channel, times,
    area and status stay, so the statistics still add up.
    """

    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "erased"

    signal_id: str
    case_id: str | None = Field(default=None, description="the signal's case, when intake knew it")
    erased_at: datetime


class ConversationTurn(BaseModel):
    speaker: Literal["citizen", "agent"]
    text: str


class ConversationReceived(EventData):
    aggregate: ClassVar[str] = "conversation"
    event: ClassVar[str] = "received"

    signal_id: str
    channel: Literal["phone", "chat"]
    turns: list[ConversationTurn]
    started_at: datetime
    duration_s: float
    team: str | None = None
    outcome: str | None = None
    language: str | None = None


class Alternative(BaseModel):
    topic: str
    subtopic: str | None = None
    probability: float


class SignalClassified(EventData):
    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "classified"

    signal_id: str
    topic: str
    subtopic: str | None = None
    confidence: float
    alternatives: list[Alternative]
    language: str | None = None
    kind: Kind
    needs_review: bool
    model_version: str
    topics: list[Alternative] = Field(
        default_factory=list,
        description="every topic the signal carries, the main one first; a conversation may carry several",
    )
    imported: bool = Field(
        default=False, description="copied from signal.received: history that is classified but opens no case"
    )
    # Carried along so that routing can apply its conditions without asking intake.
    tracking_code: str | None = None
    channel: Channel | None = None
    text: str | None = None
    location: CoarseLocation | None = None
    received_at: datetime | None = None


class SignalReclassified(EventData):
    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "reclassified"

    signal_id: str
    case_id: str
    topic: str
    subtopic: str | None = None
    previous_topic: str | None = None
    previous_subtopic: str | None = None
    text: str | None = None
    actor: str


class SignalRouted(EventData):
    aggregate: ClassVar[str] = "signal"
    event: ClassVar[str] = "routed"

    signal_id: str
    case_id: str
    tracking_code: str
    responsible: str
    informed: list[str] = Field(default_factory=list)
    partners: list[str] = Field(default_factory=list)
    priority: str
    rule_id: str
    due_at: datetime | None = None
    service_promise: str | None = None
    # Copied from ``signal.classified``: the language the classifier detected, which notifier
    # writes to the resident in when the portal and intake gave none (intake's guess needs a
    # longer text). Absent in events from before this field.
    language: str | None = Field(
        default=None, description="the language the classifier detected; null when it could not tell"
    )


RESIDENT_ACTOR = "resident"
"""The ``actor`` of a case change the resident made themselves, from their tracking page through
intake (answering a question, reopening, withdrawing). Its public note is the resident's own words:
shown on their page, not in Open311's public lists, and erased with their data."""


class CaseStatusChanged(EventData):
    aggregate: ClassVar[str] = "case"
    event: ClassVar[str] = "status_changed"

    case_id: str
    signal_id: str
    tracking_code: str
    from_: CaseStatus | None = Field(default=None, alias="from")
    to: CaseStatus
    public_note: str | None = None
    actor: str
    sequence: int
    # Added by routing (issue 4): who is responsible now, which partners the case was forwarded to,
    # the partner of a ``forwarded`` change, and, for a merged duplicate's reporter, the survivor.
    responsible: str | None = None
    partners: list[str] = Field(default_factory=list)
    forwarded_to: str | None = None
    merged_into: str | None = Field(default=None, description="the surviving case of a merged duplicate")
    # What the resident is promised once the change is made: a reopened case gets a new due date,
    # and the resident's page shows it with the status in one step, whichever of ``signal.routed``
    # and this event a consumer applies first. Absent in events from before these fields.
    due_at: datetime | None = Field(default=None, description="the case's due date after the change")
    service_promise: str | None = None
    attachments: int = Field(
        default=0,
        description="photos and PDFs the signal has (at intake): a partner the case is forwarded to "
        "learns at once that there are some",
    )

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class FeedbackReceived(EventData):
    aggregate: ClassVar[str] = "feedback"
    event: ClassVar[str] = "received"

    signal_id: str
    case_id: str | None = None
    satisfied: bool
    score: int = Field(ge=1, le=5)
    comment: str | None = None


class DepartmentFeedEvent(EventData):
    """An event of a department's feed, ``civic.<tenant>.dept.<department>.<event>`` (DESIGN §2):
    what a department's own system subscribes to (``civic.<tenant>.dept.<department>.>``), never
    with personal data."""

    aggregate: ClassVar[str] = "dept"

    @classmethod
    def department_subject(cls, tenant: str, department: str) -> str:
        return f"civic.{check_code(tenant, 'tenant')}.dept.{check_code(department, 'department')}.{cls.event}"


class DepartmentAssigned(DepartmentFeedEvent):
    """The department feed: what a department's own system receives when a case reaches it.

    Published on ``civic.<tenant>.dept.<department>.assigned`` (DESIGN §2), never with personal data.
    """

    event: ClassVar[str] = "assigned"

    case_id: str
    signal_id: str
    tracking_code: str
    department: str
    role: Literal["responsible", "informed"]
    topic: str
    subtopic: str | None = None
    kind: Kind
    priority: str
    due_at: datetime | None = None
    text: str | None = None
    location: CoarseLocation | None = None
    sequence: int | None = Field(
        default=None,
        description="the case's sequence after the change that brought it here (absent in older events): "
        "orders a reassignment against the case's status changes",
    )
    attachments: int = Field(
        default=0,
        description="photos and PDFs the signal has (at intake) when the case reaches the department",
    )


class DepartmentStatusChanged(DepartmentFeedEvent):
    event: ClassVar[str] = "status_changed"

    case_id: str
    signal_id: str
    department: str
    from_: CaseStatus | None = Field(default=None, alias="from")
    to: CaseStatus
    public_note: str | None = None
    actor: str
    sequence: int

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)


class DepartmentAttachmentAdded(DepartmentFeedEvent):
    """The department feed: the signal of a case the department is involved in has a new photo or
    PDF. Only the count travels (DESIGN §2); the department's system opens the files at intake."""

    event: ClassVar[str] = "attachment_added"

    case_id: str
    signal_id: str
    department: str
    role: Literal["responsible", "informed"]
    attachments: int = Field(ge=1, description="how many attachments the signal has now")


class DepartmentReleased(DepartmentFeedEvent):
    """The department feed: a case no longer involves this department. It was reassigned or
    rerouted to another department, or the department is no longer informed. The department's own
    system closes its copy of the work; the case's later changes no longer reach its feed, and
    its keys no longer open the case or the signal's photos. ``responsible`` and ``sequence`` say
    who holds the case now, as of which change (a later ``dept.<department>.assigned`` with a
    higher sequence brings it back)."""

    event: ClassVar[str] = "released"

    case_id: str
    signal_id: str
    department: str
    role: Literal["responsible", "informed"] = Field(
        description="what the department was on the case until now"
    )
    responsible: str = Field(description="the department responsible for the case after the change")
    sequence: int = Field(ge=1, description="the case's sequence after the change")
    change: Literal["assignment", "reclassification"] = Field(
        description="the kind of change: a reassignment by hand, or a reroute after a corrected topic"
    )


class DepartmentSignalErased(DepartmentFeedEvent):
    """The department feed: the person's data of a case's signal was erased on request. The
    department's own system drops what it copied of the case (its text, notes and photos) and
    keeps only what its statistics need (AVG articles 17 and 19)."""

    event: ClassVar[str] = "erased"

    case_id: str
    signal_id: str
    department: str
    erased_at: datetime


class CaseDepartmentsChanged(EventData):
    """Which departments hold a case now, after a change that moved it between departments (a
    reassignment, a reroute after a correction, an escalation that informs more of them).

    The department feeds tell each department what it gains (``assigned``) and loses
    (``released``); this event names the whole set as of ``sequence`` in one place, so a consumer
    that keeps the latest one (intake, to decide whose keys may still open the signal's photos;
    notifier, whose keys read its delivery log) is right whatever order it applies events in.
    ``signal.routed`` is the set at sequence 1; no event repeats it.
    """

    aggregate: ClassVar[str] = "case"
    event: ClassVar[str] = "departments_changed"

    case_id: str
    signal_id: str
    sequence: int = Field(ge=1, description="the case's sequence after the change")
    responsible: str
    informed: list[str] = Field(default_factory=list)
    left: list[str] = Field(
        default_factory=list, description="departments that held the case before this change and no longer do"
    )
    change: Literal["assignment", "reclassification", "escalation"] = Field(
        description="the kind of change that moved the case"
    )


def case_holders(responsible: str, informed: Sequence[str]) -> list[str]:
    """The departments that hold a case, as ``signal.routed`` (sequence 1) and
    ``case.departments_changed`` name them: the responsible one first, then the informed ones,
    each once. Whoever keeps them keeps only the set of the highest sequence seen: the two events
    travel on different consumers and come in any order."""
    return list(dict.fromkeys([responsible, *informed]))


class CaseOverdue(EventData):
    """A case passed its due date without being resolved; published once per case and escalation."""

    aggregate: ClassVar[str] = "case"
    event: ClassVar[str] = "overdue"

    case_id: str
    signal_id: str
    tracking_code: str
    responsible: str
    priority: str
    due_at: datetime
    escalated_to: list[str] = Field(default_factory=list)
    escalation_level: int = 1


class NotificationDelivered(EventData):
    """A resident message or partner webhook was accepted by its receiver."""

    aggregate: ClassVar[str] = "notification"
    event: ClassVar[str] = "delivered"

    delivery_id: str
    signal_id: str | None = None
    case_id: str | None = None
    channel: Literal["email", "webhook", "sms"]
    template: str | None = None
    partner: str | None = None
    about_event: str | None = Field(default=None, description="the type of the event the message was about")
    attempts: int


class NotificationFailed(EventData):
    """A delivery was given up on (or an endpoint was disabled); no address or URL in it."""

    aggregate: ClassVar[str] = "notification"
    event: ClassVar[str] = "failed"

    delivery_id: str
    signal_id: str | None = None
    case_id: str | None = None
    channel: Literal["email", "webhook", "sms"]
    template: str | None = None
    partner: str | None = None
    about_event: str | None = Field(default=None, description="the type of the event the message was about")
    attempts: int
    reason: str


class InsightEmerging(EventData):
    """A topic or area whose volume rose above its own baseline (insights, DESIGN §1)."""

    aggregate: ClassVar[str] = "insight"
    event: ClassVar[str] = "emerging"

    insight_id: str
    topic: str | None = None
    subtopic: str | None = None
    area: str | None = None
    window_start: datetime
    window_end: datetime
    observed: int
    expected: float
    score: float
    false_alarm_rate: float

    def subject_id(self) -> str:
        return self.insight_id


DataT = TypeVar("DataT", bound=EventData)


def make_event(*, tenant: str, service: str, data: EventData, subject: str | None = None) -> CloudEvent:
    """Wrap event data in a CloudEvent from ``/civicsignals/<service>``."""
    return CloudEvent(
        source=f"/civicsignals/{service}",
        type=data.event_type(),
        subject=subject or data.subject_id(),
        tenant=tenant,
        data=data.model_dump(mode="json", by_alias=True, exclude_none=False),
    )


def read_data(event: CloudEvent, model: type[DataT]) -> DataT:
    """Validate an event's data as ``model``; raises pydantic's ValidationError when it does not fit."""
    if event.type != model.event_type():
        raise ValueError(f"expected event type {model.event_type()}, got {event.type}")
    return model.model_validate(event.data)


ALL_EVENT_MODELS: tuple[type[EventData], ...] = (
    SignalReceived,
    SignalAttachmentAdded,
    SignalErased,
    ConversationReceived,
    SignalClassified,
    SignalReclassified,
    SignalRouted,
    CaseStatusChanged,
    FeedbackReceived,
    DepartmentAssigned,
    DepartmentStatusChanged,
    DepartmentAttachmentAdded,
    DepartmentReleased,
    DepartmentSignalErased,
    CaseDepartmentsChanged,
    CaseOverdue,
    NotificationDelivered,
    NotificationFailed,
    InsightEmerging,
)
