"""The projection: how each event changes the read model, without a database or a bus.

Rows are plain dicts keyed by column name. Each event updates the raw fields it carries, together
with the id of the event that set them, under rules that do not depend on arrival order:

- what a signal *is* (channel, kind, area, time received) comes from the earliest
  ``signal.received`` / ``conversation.received``;
- its topic comes from the highest-ranked classification (a person's ``signal.reclassified``
  outranks the model's ``signal.classified``), the latest one within a rank;
- a case's status is the one with the highest ``sequence``, its department the one named by the
  status change with the highest ``sequence`` that names one (else by ``signal.routed``); it opened
  at its earliest event and was resolved at its earliest transition to ``resolved`` or ``closed``;
- feedback: the latest answer counts;
- an erasure (``signal.erased``) drops the signal's text, and a reception applied after it keeps
  the text out (the signal is still counted as received): whichever comes first, no text.

So the durable consumers (one per event kind, each in its own order) and a replay of the stream in
stream order arrive at the same rows, and therefore at the same aggregates. The effective
dimensions of a signal are then derived from its raw fields (:func:`derive`), and a change to
them moves the signal's count from one cube cell to another (:func:`cube_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from civicsignals.common.events import (
    CaseOverdue,
    CaseStatusChanged,
    CloudEvent,
    CoarseLocation,
    ConversationReceived,
    EventData,
    FeedbackReceived,
    NotificationDelivered,
    NotificationFailed,
    SignalClassified,
    SignalErased,
    SignalReceived,
    SignalReclassified,
    SignalRouted,
)
from civicsignals.insights.models import NONE, UNCLASSIFIED, UNKNOWN

Row = dict[str, Any]
CubeKey = tuple[str, date, str, str, str, str, str, str, str]
"""(tenant, day, topic, subtopic, channel, kind, language, area, mode)"""

TEXT_LIMIT = 500
RESOLVED = frozenset({"resolved", "closed"})
ENDED = frozenset({"resolved", "closed", "rejected", "duplicate", "cancelled"})


@dataclass(frozen=True)
class EventKind:
    """One event kind insights consumes: its durable consumer and what it updates."""

    consumer: str
    model: type[EventData]
    target: str  # "signal", "case", "feedback" or "notification"


EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind("insights-signal-received", SignalReceived, "signal"),
    EventKind("insights-conversation-received", ConversationReceived, "signal"),
    EventKind("insights-signal-classified", SignalClassified, "signal"),
    EventKind("insights-signal-reclassified", SignalReclassified, "signal"),
    EventKind("insights-signal-erased", SignalErased, "signal"),
    EventKind("insights-signal-routed", SignalRouted, "case"),
    EventKind("insights-case-status-changed", CaseStatusChanged, "case"),
    EventKind("insights-case-overdue", CaseOverdue, "case"),
    EventKind("insights-feedback-received", FeedbackReceived, "feedback"),
    EventKind("insights-notification-delivered", NotificationDelivered, "notification"),
    EventKind("insights-notification-failed", NotificationFailed, "notification"),
)
KIND_BY_TYPE: dict[str, EventKind] = {kind.model.event_type(): kind for kind in EVENT_KINDS}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _language(value: str | None) -> str | None:
    """``en-GB`` and ``EN`` count as ``en``: the dashboard shows languages, not locales."""
    if not value:
        return None
    code = value.split("-")[0].split("_")[0].strip().lower()[:8]
    return code or None


def _area(location: CoarseLocation | None) -> str:
    if location is None:
        return UNKNOWN
    return (location.area or location.district or UNKNOWN)[:64]


def _earlier(current: str | None, candidate: str) -> bool:
    return current is None or candidate < current


def _later(current: str | None, candidate: str) -> bool:
    return current is None or candidate > current


# -- signals -------------------------------------------------------------------------------------


def new_signal(tenant: str, signal_id: str) -> Row:
    return {
        "signal_id": signal_id,
        "tenant": tenant,
        "received_event": None,
        "received_at": None,
        "channel": UNKNOWN,
        "kind_received": None,
        "language_received": None,
        "area": UNKNOWN,
        "text": None,
        "is_conversation": False,
        "erased_at": None,
        "topic_rank": 0,
        "topic_event": None,
        "topic_value": None,
        "subtopic_value": None,
        "classified_event": None,
        "kind_classified": None,
        "language_classified": None,
        "counted": False,
        "day": None,
        "topic": UNCLASSIFIED,
        "subtopic": NONE,
        "kind": UNKNOWN,
        "language": UNKNOWN,
        "mode": "active",
    }


def signal_id_of(data: EventData) -> str:
    return str(data.signal_id)  # type: ignore[attr-defined]


def apply_signal(row: Row, event: CloudEvent, data: EventData) -> None:
    """Update a signal's raw fields from one event (idempotent: applying it twice changes nothing)."""
    if isinstance(data, SignalReceived):
        if _earlier(row["received_event"], event.id):
            row.update(
                received_event=event.id,
                received_at=_utc(data.received_at),
                channel=data.channel,
                kind_received=data.kind,
                language_received=_language(data.language),
                area=_area(data.location),
                text=_kept_text(row, data.text),
            )
    elif isinstance(data, ConversationReceived):
        row["is_conversation"] = True
        if _earlier(row["received_event"], event.id):
            said = " ".join(turn.text for turn in data.turns if turn.speaker == "citizen")
            row.update(
                received_event=event.id,
                received_at=_utc(data.started_at),
                channel=data.channel,
                kind_received=None,
                language_received=_language(data.language),
                area=UNKNOWN,
                text=_kept_text(row, said),
            )
    elif isinstance(data, SignalClassified):
        if _later(row["classified_event"], event.id):
            row.update(
                classified_event=event.id,
                kind_classified=data.kind,
                language_classified=_language(data.language),
            )
        _take_topic(row, 1, event.id, data.topic, data.subtopic)
    elif isinstance(data, SignalReclassified):
        _take_topic(row, 2, event.id, data.topic, data.subtopic)
    elif isinstance(data, SignalErased):
        erased_at = _utc(data.erased_at)
        if row["erased_at"] is None or erased_at < row["erased_at"]:
            row["erased_at"] = erased_at
        row["text"] = None


def _kept_text(row: Row, text: str) -> str | None:
    """The text a reception event leaves on the row: none once the signal was erased (the erasure
    may be applied before the reception: each event kind has its own consumer)."""
    return None if row["erased_at"] is not None else text[:TEXT_LIMIT]


def _take_topic(row: Row, rank: int, event_id: str, topic: str, subtopic: str | None) -> None:
    if rank > row["topic_rank"] or (rank == row["topic_rank"] and _later(row["topic_event"], event_id)):
        row.update(topic_rank=rank, topic_event=event_id, topic_value=topic, subtopic_value=subtopic)


def derive(row: Row, zone: tzinfo) -> None:
    """Set the effective dimensions under which the signal is counted.

    A signal is counted once it was received (a classification alone says nothing about when or
    through which door it came). The language is the one the classifier detected in the text, else
    the one the portal declared: what matters for "answer in English" is the language people wrote
    or spoke in.
    """
    received_at: datetime | None = row["received_at"]
    row["counted"] = received_at is not None
    row["day"] = received_at.astimezone(zone).date() if received_at is not None else None
    row["topic"] = (row["topic_value"] or UNCLASSIFIED)[:64]
    row["subtopic"] = (row["subtopic_value"] or NONE)[:64] if row["topic_value"] else NONE
    row["kind"] = row["kind_received"] or row["kind_classified"] or UNKNOWN
    row["language"] = row["language_classified"] or row["language_received"] or UNKNOWN
    row["mode"] = "passive" if row["is_conversation"] else "active"


def cube_key(row: Row) -> CubeKey | None:
    """The cell of :class:`~civicsignals.insights.models.DailyVolume` the signal counts in, if any."""
    if not row["counted"] or row["day"] is None:
        return None
    return (
        row["tenant"],
        row["day"],
        row["topic"],
        row["subtopic"],
        row["channel"],
        row["kind"],
        row["language"],
        row["area"],
        row["mode"],
    )


# -- cases ---------------------------------------------------------------------------------------


def new_case(tenant: str, case_id: str, signal_id: str) -> Row:
    return {
        "case_id": case_id,
        "tenant": tenant,
        "signal_id": signal_id,
        "department": None,
        "department_sequence": -1,
        "priority": None,
        "routed_event": None,
        "due_at": None,
        "opened_at": None,
        "status": "received",
        "status_sequence": -1,
        "resolved_at": None,
        "overdue": False,
    }


def case_id_of(data: EventData) -> str:
    return str(data.case_id)  # type: ignore[attr-defined]


def _min_time(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate < current else current


def apply_case(row: Row, event: CloudEvent, data: EventData) -> Row | None:
    """Update a case from one event; returns a public note row when the event resolved it."""
    at = _utc(event.time)
    row["opened_at"] = _min_time(row["opened_at"], at)
    if isinstance(data, SignalRouted):
        if _later(row["routed_event"], event.id):
            row.update(
                routed_event=event.id,
                priority=data.priority,
                due_at=_utc(data.due_at) if data.due_at else None,
            )
            if row["department_sequence"] < 0:  # a later reassignment outranks the routing
                row["department"] = data.responsible
    elif isinstance(data, CaseStatusChanged):
        if data.sequence > row["status_sequence"]:
            row.update(status=data.to, status_sequence=data.sequence)
        responsible = getattr(data, "responsible", None)
        if responsible and data.sequence > row["department_sequence"]:
            row.update(department=responsible, department_sequence=data.sequence)
        if data.to in RESOLVED:
            row["resolved_at"] = _min_time(row["resolved_at"], at)
            if data.public_note and data.public_note.strip():
                return {
                    "case_id": row["case_id"],
                    "sequence": data.sequence,
                    "tenant": row["tenant"],
                    "at": at,
                    "note": data.public_note.strip()[:1000],
                }
    elif isinstance(data, CaseOverdue):
        row["overdue"] = True
    return None


# -- feedback and notifications ------------------------------------------------------------------


def feedback_row(tenant: str, event: CloudEvent, data: FeedbackReceived) -> Row:
    return {
        "signal_id": data.signal_id,
        "tenant": tenant,
        "case_id": data.case_id,
        "event_id": event.id,
        "at": _utc(event.time),
        "satisfied": data.satisfied,
        "score": data.score,
    }


def newer_feedback(current: Row | None, candidate: Row) -> bool:
    return current is None or candidate["event_id"] > current["event_id"]


def notification_key(
    tenant: str, event: CloudEvent, data: EventData, zone: tzinfo
) -> tuple[str, date, str, str]:
    outcome = "delivered" if isinstance(data, NotificationDelivered) else "failed"
    channel = str(getattr(data, "channel", UNKNOWN))
    return (tenant, _utc(event.time).astimezone(zone).date(), channel, outcome)
