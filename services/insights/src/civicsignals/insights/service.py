"""Queries on the read model: plain functions on a session, no HTTP and no bus.

Every figure on the dashboard, in the API and in the exports comes from one of these functions, so
a number on a chart and the CSV beside it are the same number.
"""

from __future__ import annotations

import base64
import binascii
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.insights.apply import CASES, DAILY, FEEDBACK, NOTES, ROLLUP, SIGNALS
from civicsignals.insights.models import DIMENSIONS, ROLLUP_DIMENSIONS, ROLLUP_TOTAL, UNCLASSIFIED
from civicsignals.insights.projection import ENDED

INTERVALS = ("day", "week", "month")
DEPARTMENT_COLUMNS = (
    "department",
    "cases",
    "open",
    "resolved",
    "overdue",
    "sla_judged",
    "sla_met",
    "sla_compliance",
    "median_resolution_hours",
    "feedback",
    "mean_score",
    "satisfied_share",
)


@dataclass(frozen=True)
class Filters:
    """What the dashboard is looking at: a period (inclusive) and any of the dimensions."""

    start: date
    end: date
    topic: str | None = None
    subtopic: str | None = None
    channel: str | None = None
    kind: str | None = None
    language: str | None = None
    area: str | None = None
    mode: str | None = None
    zone: tzinfo = UTC
    """The zone of the days (the service's); case times are compared with its midnights."""

    def dimension_values(self) -> dict[str, str]:
        return {f.name: v for f in fields(self) if f.name in DIMENSIONS and (v := getattr(self, f.name))}

    def as_query(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), **self.dimension_values()}

    def narrowed(self, **values: str | None) -> Filters:
        """The same view with some dimensions set (or, with None, cleared)."""
        return replace(self, **values)  # type: ignore[arg-type]

    def conditions(self, table: Table, tenant: str) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [
            table.c.tenant == tenant,
            table.c.day >= self.start,
            table.c.day <= self.end,
        ]
        for name, value in self.dimension_values().items():
            conditions.append(table.c[name] == value)
        return conditions


def period_start(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


# -- the cube ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a query reads its counts: a rollup (when it can) or the full cube."""

    columns: dict[str, Any]
    conditions: list[ColumnElement[bool]]

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]


def _source(tenant: str, filters: Filters, *wanted: str | None) -> Source:
    """Aggregate navigation: the narrowest table that has every dimension the query filters or
    groups by. Topic and mode are in every rollup row; one more dimension picks its rollup; the
    full cube serves the rest."""
    needed = ({*filters.dimension_values(), *(w for w in wanted if w)}) - {"topic", "mode"}
    if len(needed) <= 1 and needed <= set(ROLLUP_DIMENSIONS):
        dimension = next(iter(needed)) if needed else ROLLUP_TOTAL
        columns = {
            "day": ROLLUP.c.day,
            "topic": ROLLUP.c.topic,
            "mode": ROLLUP.c.mode,
            dimension: ROLLUP.c.value,
        }
        columns["count"] = ROLLUP.c["count"]
        conditions: list[ColumnElement[bool]] = [
            ROLLUP.c.tenant == tenant,
            ROLLUP.c.dimension == dimension,
            ROLLUP.c.day >= filters.start,
            ROLLUP.c.day <= filters.end,
        ]
        conditions += [columns[name] == value for name, value in filters.dimension_values().items()]
        return Source(columns, conditions)
    columns = {name: DAILY.c[name] for name in ("day", "count", *DIMENSIONS)}
    return Source(columns, filters.conditions(DAILY, tenant))


async def trend(
    session: AsyncSession,
    tenant: str,
    filters: Filters,
    *,
    interval: str = "day",
    group_by: str | None = None,
) -> list[tuple[date, str | None, int]]:
    """Signals per period (and per value of ``group_by``), oldest first; empty periods are zeros."""
    source = _source(tenant, filters, group_by)
    columns: list[Any] = [source["day"]]
    if group_by:
        columns.append(source[group_by])
    query = select(*columns, func.sum(source["count"])).where(*source.conditions).group_by(*columns)
    counts: dict[tuple[date, str | None], int] = defaultdict(int)
    groups: set[str | None] = set()
    for row in await _rows(session, query):
        group = row[1] if group_by else None
        counts[(period_start(row[0], interval), group)] += int(row[-1])
        groups.add(group)
    if not groups:
        groups = {None} if not group_by else set()
    periods = []
    cursor = period_start(filters.start, interval)
    while cursor <= filters.end:
        periods.append(cursor)
        cursor = _next_period(cursor, interval)
    return [(p, g, counts.get((p, g), 0)) for g in sorted(groups, key=lambda g: g or "") for p in periods]


def _next_period(day: date, interval: str) -> date:
    if interval == "week":
        return day + timedelta(days=7)
    if interval == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day + timedelta(days=1)


async def _rows(session: AsyncSession, query: Any) -> Sequence[Any]:
    connection = await session.connection()
    return (await connection.execute(query)).all()


async def breakdown(
    session: AsyncSession, tenant: str, filters: Filters, dimension: str, *, limit: int = 50
) -> list[tuple[str, int]]:
    """Signals per value of one dimension, largest first."""
    source = _source(tenant, filters, dimension)
    total = func.sum(source["count"]).label("total")
    query = (
        select(source[dimension], total)
        .where(*source.conditions)
        .group_by(source[dimension])
        .order_by(total.desc(), source[dimension])
        .limit(limit)
    )
    return [(str(row[0]), int(row[1])) for row in await _rows(session, query)]


async def cross(
    session: AsyncSession, tenant: str, filters: Filters, rows_by: str, columns_by: str
) -> list[tuple[str, str, int]]:
    """Signals per pair of values (e.g. topic by language)."""
    source = _source(tenant, filters, rows_by, columns_by)
    query = (
        select(source[rows_by], source[columns_by], func.sum(source["count"]))
        .where(*source.conditions)
        .group_by(source[rows_by], source[columns_by])
    )
    return [(str(r[0]), str(r[1]), int(r[2])) for r in await _rows(session, query)]


# -- cases and satisfaction ----------------------------------------------------------------------


def _signal_filter(filters: Filters, tenant: str) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [SIGNALS.c.tenant == tenant]
    for name, value in filters.dimension_values().items():
        conditions.append(SIGNALS.c[name] == value)
    return conditions


def _window(filters: Filters) -> tuple[datetime, datetime]:
    """The period as instants: from local midnight of the first day to that after the last."""
    start = datetime.combine(filters.start, time(0), tzinfo=filters.zone).astimezone(UTC)
    end = datetime.combine(filters.end + timedelta(days=1), time(0), tzinfo=filters.zone).astimezone(UTC)
    return start, end


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600.0, 1)


async def _median_seconds(
    session: AsyncSession, group: Any, conditions: list[ColumnElement[bool]], joined: Any
) -> dict[str, float]:
    """Median time from opening to first resolution per group, in seconds.

    PostgreSQL computes it (``percentile_cont``); SQLite, the embedded store of small municipalities,
    has no percentile, so there the durations are fetched and the median taken here.
    """
    connection = await session.connection()
    resolved = [*conditions, CASES.c.resolved_at.is_not(None), CASES.c.opened_at.is_not(None)]
    if connection.dialect.name == "postgresql":
        seconds = func.extract("epoch", CASES.c.resolved_at - CASES.c.opened_at)
        query = select(group, func.percentile_cont(0.5).within_group(seconds)).select_from(joined)
        result = await connection.execute(query.where(*resolved).group_by(group))
        return {str(row[0]): float(row[1]) for row in result if row[1] is not None}
    query = select(group, CASES.c.opened_at, CASES.c.resolved_at).select_from(joined).where(*resolved)
    durations: dict[str, list[float]] = defaultdict(list)
    for row in await connection.execute(query):
        opened, resolved_at = _aware(row[1]), _aware(row[2])
        durations[str(row[0])].append((resolved_at - opened).total_seconds())
    return {key: statistics.median(values) for key, values in durations.items()}


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def departments(session: AsyncSession, tenant: str, filters: Filters) -> list[dict[str, Any]]:
    """Per department, for the cases opened in the period: open cases, SLA compliance, median
    resolution time and satisfaction.

    SLA compliance counts the cases that had a due date and were either resolved or are past it:
    met when first resolved by the due date.
    """
    start, end = _window(filters)
    now = datetime.now(UTC)
    joined = CASES.join(FEEDBACK, FEEDBACK.c.signal_id == CASES.c.signal_id, isouter=True)
    if filters.dimension_values():  # the signal's dimensions are needed only to filter by them
        joined = joined.join(SIGNALS, SIGNALS.c.signal_id == CASES.c.signal_id)
    conditions: list[ColumnElement[bool]] = [
        CASES.c.tenant == tenant,
        CASES.c.opened_at >= start,
        CASES.c.opened_at < end,
    ]
    for name, value in filters.dimension_values().items():
        conditions.append(SIGNALS.c[name] == value)
    department = func.coalesce(CASES.c.department, "unassigned").label("department")
    has_due = CASES.c.due_at.is_not(None)
    judged = and_(has_due, or_(CASES.c.resolved_at.is_not(None), CASES.c.due_at < now))
    met = and_(has_due, CASES.c.resolved_at.is_not(None), CASES.c.resolved_at <= CASES.c.due_at)
    query = (
        select(
            department,
            func.count(),
            func.sum(case((CASES.c.status.not_in(ENDED), 1), else_=0)),
            func.sum(case((CASES.c.resolved_at.is_not(None), 1), else_=0)),
            func.sum(case((judged, 1), else_=0)),
            func.sum(case((met, 1), else_=0)),
            func.count(FEEDBACK.c.score),
            func.avg(FEEDBACK.c.score),
            func.sum(case((FEEDBACK.c.satisfied.is_(True), 1), else_=0)),
            func.sum(case((CASES.c.overdue.is_(True), 1), else_=0)),
        )
        .select_from(joined)
        .where(*conditions)
        .group_by(department)
        .order_by(department)
    )
    medians = await _median_seconds(session, department, conditions, joined)
    result = []
    for row in await _rows(session, query):
        name, cases, open_, resolved, judged_n, met_n, feedback_n, mean_score, satisfied, overdue = row
        result.append(
            {
                "department": name,
                "cases": int(cases),
                "open": int(open_ or 0),
                "resolved": int(resolved or 0),
                "overdue": int(overdue or 0),
                "sla_judged": int(judged_n or 0),
                "sla_met": int(met_n or 0),
                "sla_compliance": round(int(met_n) / int(judged_n), 3) if judged_n else None,
                "median_resolution_hours": _hours(medians.get(str(name))),
                "feedback": int(feedback_n or 0),
                "mean_score": round(float(mean_score), 2) if mean_score is not None else None,
                "satisfied_share": round(int(satisfied) / int(feedback_n), 3) if feedback_n else None,
            }
        )
    return result


async def satisfaction_by_topic(session: AsyncSession, tenant: str, filters: Filters) -> list[dict[str, Any]]:
    """Feedback on the signals of the period, per topic."""
    query = (
        select(
            SIGNALS.c.topic,
            func.count(),
            func.avg(FEEDBACK.c.score),
            func.sum(case((FEEDBACK.c.satisfied.is_(True), 1), else_=0)),
        )
        .select_from(FEEDBACK.join(SIGNALS, SIGNALS.c.signal_id == FEEDBACK.c.signal_id))
        .where(*_signal_filter(filters, tenant), SIGNALS.c.day >= filters.start, SIGNALS.c.day <= filters.end)
        .group_by(SIGNALS.c.topic)
        .order_by(SIGNALS.c.topic)
    )
    return [
        {
            "topic": str(topic),
            "feedback": int(n),
            "mean_score": round(float(mean), 2) if mean is not None else None,
            "satisfied_share": round(int(satisfied or 0) / int(n), 3) if n else None,
        }
        for topic, n, mean, satisfied in await _rows(session, query)
    ]


# -- drill-down ----------------------------------------------------------------------------------


def encode_cursor(received_at: datetime | None, signal_id: str) -> str:
    stamp = received_at.isoformat() if received_at else ""
    return base64.urlsafe_b64encode(f"{stamp}|{signal_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for a cursor this service did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, signal_id = raw.split("|", 1)
        return _aware(datetime.fromisoformat(stamp)), signal_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor of this list") from exc


async def signals(
    session: AsyncSession, tenant: str, filters: Filters, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], str | None]:
    """The (redacted) signals behind a number, newest first, cursor-paginated (without text once
    the person's data of a signal was erased; ``erased_at`` says so)."""
    conditions = [*filters.conditions(SIGNALS, tenant), SIGNALS.c.counted.is_(True)]
    if cursor:
        at, signal_id = decode_cursor(cursor)
        conditions.append(
            or_(
                SIGNALS.c.received_at < at, and_(SIGNALS.c.received_at == at, SIGNALS.c.signal_id < signal_id)
            )
        )
    names = ("signal_id", "received_at", "day", *DIMENSIONS, "text", "erased_at")
    columns = [SIGNALS.c[name] for name in names]
    query = (
        select(*columns)
        .where(*conditions)
        .order_by(SIGNALS.c.received_at.desc(), SIGNALS.c.signal_id.desc())
        .limit(limit + 1)
    )
    rows = [dict(row._mapping) for row in await _rows(session, query)]
    for row in rows:
        row["received_at"] = _aware(row["received_at"]) if row["received_at"] else None
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["received_at"], rows[-1]["signal_id"])
    return rows, next_cursor


# -- transparency --------------------------------------------------------------------------------


@dataclass
class TransparencyRow:
    topic: str
    reported: int | None
    closed: int | None
    median_days: float | None
    satisfied_share: float | None
    mean_score: float | None
    notes: list[str]


async def transparency(
    session: AsyncSession,
    tenant: str,
    start: date,
    end: date,
    *,
    min_cell: int = 5,
    notes_per_topic: int = 3,
    zone: tzinfo = UTC,
) -> list[TransparencyRow]:
    """ "You said, we did": per topic, what was reported and what was done.

    Small-cell suppression: a topic with fewer than ``min_cell`` signals is not shown on its own
    (topics below it are pooled into "other topics", itself shown only at ``min_cell`` or more);
    a figure computed from fewer than ``min_cell`` cases or answers is shown as ``None``. There
    is no grand total, so no suppressed figure can be found by subtraction.
    """
    filters = Filters(start=start, end=end, zone=zone)
    reported = dict(await breakdown(session, tenant, filters, "topic", limit=10_000))
    reported.pop(UNCLASSIFIED, None)
    window_start, window_end = _window(filters)
    resolved_in_period = and_(
        CASES.c.tenant == tenant,
        CASES.c.resolved_at >= window_start,
        CASES.c.resolved_at < window_end,
    )
    joined = CASES.join(SIGNALS, SIGNALS.c.signal_id == CASES.c.signal_id)
    closed = {
        str(t): int(n)
        for t, n in await _rows(
            session,
            select(SIGNALS.c.topic, func.count())
            .select_from(joined)
            .where(resolved_in_period)
            .group_by(SIGNALS.c.topic),
        )
    }
    medians = await _median_seconds(session, SIGNALS.c.topic, [resolved_in_period], joined)
    satisfaction = {row["topic"]: row for row in await satisfaction_by_topic(session, tenant, filters)}
    notes: dict[str, list[str]] = defaultdict(list)
    note_query = (
        select(SIGNALS.c.topic, NOTES.c.note)
        .select_from(
            NOTES.join(CASES, CASES.c.case_id == NOTES.c.case_id).join(
                SIGNALS, SIGNALS.c.signal_id == CASES.c.signal_id
            )
        )
        .where(NOTES.c.tenant == tenant, NOTES.c.at >= window_start, NOTES.c.at < window_end)
        .order_by(NOTES.c.at.desc())
        .limit(2000)
    )
    for topic, note in await _rows(session, note_query):
        if len(notes[str(topic)]) < notes_per_topic and note not in notes[str(topic)]:
            notes[str(topic)].append(str(note))

    def shown(value: int | None) -> int | None:
        return value if value is not None and value >= min_cell else None

    rows: list[TransparencyRow] = []
    other = 0
    for topic, count in sorted(reported.items(), key=lambda item: (-item[1], item[0])):
        if count < min_cell:
            other += count
            continue
        closed_n = closed.get(topic, 0)
        feedback = satisfaction.get(topic)
        enough_feedback = feedback is not None and feedback["feedback"] >= min_cell
        rows.append(
            TransparencyRow(
                topic=topic,
                reported=count,
                closed=shown(closed_n),
                median_days=round(medians[topic] / 86400, 1)
                if closed_n >= min_cell and topic in medians
                else None,
                satisfied_share=feedback["satisfied_share"] if enough_feedback and feedback else None,
                mean_score=feedback["mean_score"] if enough_feedback and feedback else None,
                notes=notes.get(topic, []) if closed_n >= min_cell else [],
            )
        )
    if other:
        rows.append(TransparencyRow("other topics", shown(other), None, None, None, None, []))
    return rows
