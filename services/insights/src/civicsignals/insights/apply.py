"""Applying a batch of events to the read model in one transaction.

One transaction per batch (not per event) is what makes the projection fast enough to replay a
year of a large municipality's stream: the inbox is checked with one query, the rows an event
touches are read with one query per table, updated in memory by :mod:`projection`, and written
back with one ``executemany`` per table; cube counts move by deltas (``count = count + n``).

Several replicas may apply batches at once on PostgreSQL: every row a batch changes is first
created if missing and then read ``FOR UPDATE`` in key order, so two transactions touching the
same signal wait for each other instead of losing an update. On SQLite (one process) the
service's apply lock serialises batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.events import CloudEvent, EventData, FeedbackReceived, utcnow
from civicsignals.common.inbox import ProcessedEvent
from civicsignals.insights import projection
from civicsignals.insights.models import (
    ROLLUP_DIMENSIONS,
    ROLLUP_TOTAL,
    CaseFact,
    CaseNote,
    DailyRollup,
    DailyVolume,
    FeedbackFact,
    NotificationDaily,
    SignalFact,
)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a SQLModel class, for bulk statements."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


SIGNALS = table_of(SignalFact)
DAILY = table_of(DailyVolume)
ROLLUP = table_of(DailyRollup)
CASES = table_of(CaseFact)
NOTES = table_of(CaseNote)
FEEDBACK = table_of(FeedbackFact)
NOTIFICATIONS = table_of(NotificationDaily)
INBOX = table_of(ProcessedEvent)
CUBE_KEY = ["tenant", "day", "topic", "subtopic", "channel", "kind", "language", "area", "mode"]
NOTIFICATION_KEY = ["tenant", "day", "channel", "outcome"]
ROLLUP_KEY = ["tenant", "dimension", "day", "topic", "value", "mode"]


@dataclass
class Parsed:
    """An event claimed by this batch, with its validated data."""

    consumer: str
    event: CloudEvent
    data: EventData
    target: str


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    by_target: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def parse(event: CloudEvent) -> Parsed | None:
    """Validate an event's data for its kind; None for kinds insights does not read.

    Raises pydantic's ValidationError for malformed data: the consumer dead-letters it.
    """
    kind = projection.KIND_BY_TYPE.get(event.type)
    if kind is None:
        return None
    return Parsed(kind.consumer, event, kind.model.model_validate(event.data), kind.target)


def _insert(conn: AsyncConnection, table: Table) -> Any:
    return pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)


async def apply_batch(session: AsyncSession, items: Sequence[Parsed], zone: tzinfo) -> BatchResult:
    """Apply events not yet processed by their consumer; the caller commits."""
    result = BatchResult()
    conn = await session.connection()
    fresh = await _claim(conn, items)
    result.duplicates = len(items) - len(fresh)
    if not fresh:
        return result
    groups: dict[str, list[Parsed]] = defaultdict(list)
    for item in fresh:
        groups[item.target].append(item)
    if groups["signal"]:
        await _apply_signals(conn, groups["signal"], zone)
    if groups["case"]:
        await _apply_cases(conn, groups["case"])
    if groups["feedback"]:
        await _apply_feedback(conn, groups["feedback"])
    if groups["notification"]:
        await _apply_notifications(conn, groups["notification"], zone)
    result.applied = len(fresh)
    for target, members in groups.items():
        result.by_target[target] = len(members)
    return result


async def _claim(conn: AsyncConnection, items: Sequence[Parsed]) -> list[Parsed]:
    """The idempotent-consumer record (``inbox``) for a whole batch, in one statement.

    ``INSERT … ON CONFLICT DO NOTHING RETURNING`` claims every event of the batch and says which
    claims are new. A concurrent claim of the same event by another replica waits for that
    transaction and then counts as seen, so each event is applied once.
    """
    wanted: dict[tuple[str, str], Parsed] = {}
    for item in items:
        wanted.setdefault((item.consumer, item.event.id), item)
    if not wanted:
        return []
    now = utcnow()
    statement = (
        _insert(conn, INBOX)
        .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        .returning(INBOX.c.consumer, INBOX.c.event_id)
    )
    rows = [{"consumer": c, "event_id": e, "processed_at": now} for c, e in sorted(wanted)]
    claimed = {(row.consumer, row.event_id) for row in await conn.execute(statement, rows)}
    return [item for key, item in wanted.items() if key in claimed]


def _chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def _lock_rows(
    conn: AsyncConnection, table: Table, key: str, placeholders: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Create missing rows, then read every row of the batch (``FOR UPDATE`` on PostgreSQL)."""
    ids = sorted(placeholders)
    await conn.execute(
        _insert(conn, table).on_conflict_do_nothing(index_elements=[key]), [placeholders[i] for i in ids]
    )
    found: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids, 500):
        query = select(table).where(table.c[key].in_(chunk)).order_by(table.c[key])
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for row in await conn.execute(query):
            found[row._mapping[key]] = dict(row._mapping)
    return found


async def _write_rows(
    conn: AsyncConnection, table: Table, key: str, rows: Iterable[dict[str, Any]], before: dict[str, Any]
) -> None:
    """Write back the rows that changed, in one ``executemany``."""
    changed = [row for row in rows if row != before[row[key]]]
    if not changed:
        return
    columns = [c.name for c in table.columns if c.name != key]
    statement = update(table).where(table.c[key] == bindparam("b_key"))
    await conn.execute(
        statement,
        [
            {"b_key": row[key], **{c: row[c] for c in columns}}
            for row in sorted(changed, key=lambda r: r[key])
        ],
    )


async def _apply_signals(conn: AsyncConnection, items: list[Parsed], zone: tzinfo) -> None:
    placeholders: dict[str, dict[str, Any]] = {}
    for item in items:
        signal_id = projection.signal_id_of(item.data)
        placeholders.setdefault(signal_id, projection.new_signal(item.event.tenant, signal_id))
    rows = await _lock_rows(conn, SIGNALS, "signal_id", placeholders)
    before = {signal_id: dict(row) for signal_id, row in rows.items()}
    deltas: dict[projection.CubeKey, int] = defaultdict(int)
    for item in items:
        row = rows[projection.signal_id_of(item.data)]
        old = projection.cube_key(row)
        projection.apply_signal(row, item.event, item.data)
        projection.derive(row, zone)
        new = projection.cube_key(row)
        if old != new:
            if old is not None:
                deltas[old] -= 1
            if new is not None:
                deltas[new] += 1
    await _write_rows(conn, SIGNALS, "signal_id", rows.values(), before)
    await add_counts(conn, DAILY, CUBE_KEY, deltas)
    await add_counts(conn, ROLLUP, ROLLUP_KEY, rollup_deltas(deltas))


def rollup_deltas(deltas: dict[projection.CubeKey, int]) -> dict[tuple[Any, ...], int]:
    """The same moves in :class:`DailyRollup`: once under each of its dimensions."""
    moved: dict[tuple[Any, ...], int] = defaultdict(int)
    for key, delta in deltas.items():
        if not delta:
            continue
        values = dict(zip(CUBE_KEY, key, strict=True))
        tenant, day, topic, mode = values["tenant"], values["day"], values["topic"], values["mode"]
        for dimension in ROLLUP_DIMENSIONS:
            moved[(tenant, dimension, day, topic, values[dimension], mode)] += delta
        moved[(tenant, ROLLUP_TOTAL, day, topic, "", mode)] += delta
    return moved


async def add_counts(
    conn: AsyncConnection, table: Table, key_columns: list[str], deltas: dict[Any, int]
) -> None:
    """Move counts by deltas (``count = count + n``), then drop cells that fell to zero."""
    moved = sorted((key, delta) for key, delta in deltas.items() if delta)
    if not moved:
        return
    insert = _insert(conn, table)
    statement = insert.on_conflict_do_update(
        index_elements=key_columns, set_={"count": table.c["count"] + insert.excluded["count"]}
    )
    await conn.execute(
        statement, [{**dict(zip(key_columns, key, strict=True)), "count": d} for key, d in moved]
    )
    emptied = [key for key, delta in moved if delta < 0]
    if emptied:
        # Cells a signal moved out of (it was classified, say) would otherwise stay as zeros that
        # depend on the order events came in; dropping them keeps live and replayed tables equal.
        condition = and_(*(table.c[c] == bindparam(f"k_{c}") for c in key_columns), table.c["count"] <= 0)
        await conn.execute(
            delete(table).where(condition),
            [{f"k_{c}": v for c, v in zip(key_columns, key, strict=True)} for key in emptied],
        )


async def _apply_cases(conn: AsyncConnection, items: list[Parsed]) -> None:
    placeholders: dict[str, dict[str, Any]] = {}
    for item in items:
        case_id = projection.case_id_of(item.data)
        signal_id = projection.signal_id_of(item.data)
        placeholders.setdefault(case_id, projection.new_case(item.event.tenant, case_id, signal_id))
    rows = await _lock_rows(conn, CASES, "case_id", placeholders)
    before = {case_id: dict(row) for case_id, row in rows.items()}
    notes = []
    for item in items:
        note = projection.apply_case(rows[projection.case_id_of(item.data)], item.event, item.data)
        if note is not None:
            notes.append(note)
    await _write_rows(conn, CASES, "case_id", rows.values(), before)
    if notes:
        await conn.execute(
            _insert(conn, NOTES).on_conflict_do_nothing(index_elements=["case_id", "sequence"]), notes
        )


async def _apply_feedback(conn: AsyncConnection, items: list[Parsed]) -> None:
    latest: dict[str, dict[str, Any]] = {}
    for item in items:
        candidate = projection.feedback_row(item.event.tenant, item.event, cast(FeedbackReceived, item.data))
        if projection.newer_feedback(latest.get(candidate["signal_id"]), candidate):
            latest[candidate["signal_id"]] = candidate
    insert = _insert(conn, FEEDBACK)
    columns = [c.name for c in FEEDBACK.columns if c.name != "signal_id"]
    statement = insert.on_conflict_do_update(
        index_elements=["signal_id"],
        set_={c: insert.excluded[c] for c in columns},
        where=FEEDBACK.c.event_id < insert.excluded.event_id,
    )
    await conn.execute(statement, [latest[k] for k in sorted(latest)])


async def _apply_notifications(conn: AsyncConnection, items: list[Parsed], zone: tzinfo) -> None:
    deltas: dict[tuple[Any, ...], int] = defaultdict(int)
    for item in items:
        deltas[projection.notification_key(item.event.tenant, item.event, item.data, zone)] += 1
    await add_counts(conn, NOTIFICATIONS, NOTIFICATION_KEY, deltas)
