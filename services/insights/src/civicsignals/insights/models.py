"""Insights' read model: tables built only from events, and the API schemas.

No personal data lives here (DESIGN §2, §4): signal text arrives redacted and is kept only for the
drill-down list, and is dropped when the person's data is erased on request; locations are reduced
to an area code; there are no reporters, no tracking codes and no contact data. Every table can
be emptied and rebuilt by replaying the ``CIVIC`` stream (``civicsignals-insights rebuild``), which
yields the same aggregates.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Index
from sqlmodel import JSON, Column, SQLModel
from sqlmodel import Field as SQLField

from civicsignals.common.db import UtcDateTime

# Dimensions of the cube, in the order of its primary key.
DIMENSIONS: tuple[str, ...] = ("topic", "subtopic", "channel", "kind", "language", "area", "mode")
NONE = ""  # a missing subtopic (primary key columns cannot be NULL)
UNKNOWN = "unknown"
UNCLASSIFIED = "unclassified"


class SignalFact(SQLModel, table=True):
    """One signal (or conversation), with coarse fields only, for drill-down and re-aggregation.

    Columns come in two groups: what each event said (kept with the id of the event that said it,
    so the outcome does not depend on the order events arrive in) and the effective dimensions
    derived from them, under which the signal is counted in :class:`DailyVolume`.
    """

    __tablename__ = "insights_signal"
    __table_args__ = (
        Index("ix_insights_signal_tenant_day", "tenant", "day"),
        Index("ix_insights_signal_tenant_received", "tenant", "received_at"),
    )

    signal_id: str = SQLField(primary_key=True)
    tenant: str
    # from signal.received / conversation.received (the earliest such event wins)
    received_event: str | None = None
    received_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    channel: str = UNKNOWN
    kind_received: str | None = None
    language_received: str | None = None
    area: str = UNKNOWN
    text: str | None = SQLField(default=None, description="redacted at intake, at most 500 characters")
    is_conversation: bool = False
    # from signal.erased (the earliest erasure): the person's data was erased on request, so the
    # text is dropped and no reception event applied later brings it back; every count stays
    erased_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    # from signal.classified (rank 1) and signal.reclassified (rank 2): highest rank, then latest id
    topic_rank: int = 0
    topic_event: str | None = None
    topic_value: str | None = None
    subtopic_value: str | None = None
    classified_event: str | None = None
    kind_classified: str | None = None
    language_classified: str | None = None
    # effective dimensions
    counted: bool = False
    day: date | None = None
    topic: str = UNCLASSIFIED
    subtopic: str = NONE
    kind: str = UNKNOWN
    language: str = UNKNOWN
    mode: str = "active"


class DailyVolume(SQLModel, table=True):
    """The cube: signals per local day and every dimension the dashboard filters or groups by."""

    __tablename__ = "insights_daily"
    __table_args__ = (Index("ix_insights_daily_tenant_topic_day", "tenant", "topic", "day"),)

    tenant: str = SQLField(primary_key=True)
    day: date = SQLField(primary_key=True)
    topic: str = SQLField(primary_key=True)
    subtopic: str = SQLField(primary_key=True)
    channel: str = SQLField(primary_key=True)
    kind: str = SQLField(primary_key=True)
    language: str = SQLField(primary_key=True)
    area: str = SQLField(primary_key=True)
    mode: str = SQLField(primary_key=True)
    count: int = 0


ROLLUP_DIMENSIONS: tuple[str, ...] = ("subtopic", "channel", "kind", "language", "area")
ROLLUP_TOTAL = "all"  # the rollup's rows with no dimension besides topic and mode (value "")


class DailyRollup(SQLModel, table=True):
    """Narrow views of the cube, kept beside it for speed: per day, topic, mode and *one* other
    dimension. A trend, breakdown or cross table that needs at most one dimension besides topic and
    mode reads a few thousand rows here instead of scanning the cube (see ``service._source``).
    Every signal counts once under each ``dimension``, and once more under ``all`` (value ``""``),
    the smallest rows for plain totals.
    """

    __tablename__ = "insights_rollup"

    tenant: str = SQLField(primary_key=True)
    dimension: str = SQLField(primary_key=True)
    day: date = SQLField(primary_key=True)
    topic: str = SQLField(primary_key=True)
    value: str = SQLField(primary_key=True)
    mode: str = SQLField(primary_key=True)
    count: int = 0


class CaseFact(SQLModel, table=True):
    """One case: who is responsible, when it opened and was first resolved, its current status."""

    __tablename__ = "insights_case"
    __table_args__ = (Index("ix_insights_case_tenant_opened", "tenant", "opened_at"),)

    case_id: str = SQLField(primary_key=True)
    tenant: str
    signal_id: str = SQLField(index=True)
    department: str | None = None
    department_sequence: int = SQLField(
        default=-1, description="sequence of the status change that last named the responsible department"
    )
    priority: str | None = None
    routed_event: str | None = None
    due_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    opened_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    status: str = "received"
    status_sequence: int = -1
    resolved_at: datetime | None = SQLField(default=None, sa_type=UtcDateTime)
    overdue: bool = False


class CaseNote(SQLModel, table=True):
    """The public note of a transition to resolved or closed: what was done, for the public page."""

    __tablename__ = "insights_case_note"

    case_id: str = SQLField(primary_key=True)
    sequence: int = SQLField(primary_key=True)
    tenant: str = SQLField(index=True)
    at: datetime = SQLField(sa_type=UtcDateTime)
    note: str


class FeedbackFact(SQLModel, table=True):
    """A resident's satisfaction with how their signal was handled; the latest answer counts."""

    __tablename__ = "insights_feedback"

    signal_id: str = SQLField(primary_key=True)
    tenant: str = SQLField(index=True)
    case_id: str | None = None
    event_id: str
    at: datetime = SQLField(sa_type=UtcDateTime)
    satisfied: bool
    score: int


class NotificationDaily(SQLModel, table=True):
    """Messages to residents and partners per day, channel and outcome."""

    __tablename__ = "insights_notification_daily"

    tenant: str = SQLField(primary_key=True)
    day: date = SQLField(primary_key=True)
    channel: str = SQLField(primary_key=True)
    outcome: str = SQLField(primary_key=True)
    count: int = 0


class EmergingIssue(SQLModel, table=True):
    """A series (topic, subtopic, area or topic in an area) that rose above its own baseline on a day.

    Not part of what ``rebuild`` empties: the issues were published, and rebuilding must not
    publish them again.
    """

    __tablename__ = "insights_emerging"
    __table_args__ = (Index("ix_insights_emerging_tenant_day", "tenant", "day"),)

    insight_id: str = SQLField(primary_key=True)
    tenant: str
    day: date
    series: str = SQLField(description="topic, subtopic, area or topic-area")
    topic: str | None = None
    subtopic: str | None = None
    area: str | None = None
    observed: int
    expected: float
    p_value: float
    score: float
    false_alarm_rate: float
    baseline: list[int] = SQLField(default_factory=list, sa_column=Column(JSON))
    published: bool = SQLField(default=False, description="first day of an episode: insight.emerging sent")
    detected_at: datetime = SQLField(sa_type=UtcDateTime)


class EmergingRun(SQLModel, table=True):
    """Which completed days were checked, so each is checked (and published) once."""

    __tablename__ = "insights_emerging_run"

    tenant: str = SQLField(primary_key=True)
    day: date = SQLField(primary_key=True)
    series_checked: int = 0
    found: int = 0
    checked_at: datetime = SQLField(sa_type=UtcDateTime)


READ_MODEL_TABLES: tuple[type[SQLModel], ...] = (
    SignalFact,
    DailyVolume,
    DailyRollup,
    CaseFact,
    CaseNote,
    FeedbackFact,
    NotificationDaily,
)


# -- API schemas ---------------------------------------------------------------------------------


class TrendPoint(BaseModel):
    period: date = Field(description="first day of the period (day, ISO week or month)")
    group: str | None = Field(description="the value of group_by, or null without grouping")
    count: int


class TrendResponse(BaseModel):
    tenant: str
    start: date
    end: date
    interval: str
    group_by: str | None
    filters: dict[str, str]
    points: list[TrendPoint]
    total: int


class EmergingPublic(BaseModel):
    insight_id: str
    day: date
    series: str
    topic: str | None
    subtopic: str | None
    area: str | None
    observed: int
    expected: float
    p_value: float
    score: float
    false_alarm_rate: float
    baseline: list[int] = Field(description="the same weekday in each of the preceding weeks, newest first")
    published: bool


class EmergingResponse(BaseModel):
    tenant: str
    method: dict[str, Any]
    items: list[EmergingPublic]


class SignalRow(BaseModel):
    signal_id: str
    received_at: datetime | None
    day: date | None
    topic: str
    subtopic: str
    channel: str
    kind: str
    language: str
    area: str
    mode: str
    text: str | None = Field(description="redacted at intake; null once the person's data was erased")


class SignalPage(BaseModel):
    items: list[SignalRow]
    next_cursor: str | None
