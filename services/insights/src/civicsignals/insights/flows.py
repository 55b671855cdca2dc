"""Insights' orchestration: the consumers that build the read model, the emerging-issue check,
and the rebuild from the stream.

Consumers: one durable pull consumer per event kind (DESIGN §2), ``insights-<aggregate>-<event>``.
They fetch a batch, dead-letter what is not a valid event of their kind, apply the rest in one
transaction (:mod:`civicsignals.insights.apply`) and ack after the commit. When a batch fails, its
events are applied one at a time with the usual consumer rules (nak with a growing delay, or the
dead-letter stream), so one bad event cannot hold back the others.

``insights-signal-erased`` (``signal.erased``: the person's data of a signal was erased on
request, AVG article 17) is one of them: it drops the signal's redacted text, the only free text
insights keeps of a resident, from the drill-down list and its exports, and marks the signal as
erased, so that a reception event applied later (each kind has its own consumer) does not bring the
text back. Every count, topic, area, time, case and score stays: statistics need no text. An
erasure of a signal insights has not seen yet leaves an uncounted row with the mark alone, like a
classification that comes before its reception (see :mod:`civicsignals.insights.projection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import delete, func
from sqlalchemy import select as core_select
from sqlmodel import col, select

from civicsignals.common.bus import (
    EVENTS_CONSUMED,
    STREAM,
    Bus,
    Consumer,
    ConsumerSpec,
    PermanentError,
    short_reason,
)
from civicsignals.common.events import CloudEvent, InsightEmerging, make_event, utcnow
from civicsignals.common.inbox import ProcessedEvent
from civicsignals.common.outbox import enqueue
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.telemetry import tracer
from civicsignals.insights import emerging, projection
from civicsignals.insights.apply import DAILY, BatchResult, Parsed, apply_batch, parse, table_of
from civicsignals.insights.models import (
    READ_MODEL_TABLES,
    UNCLASSIFIED,
    UNKNOWN,
    EmergingIssue,
    EmergingRun,
)
from civicsignals.insights.names import NamesCache
from civicsignals.insights.settings import InsightsSettings

log = logging.getLogger(__name__)
SERVICE = "insights"


@dataclass
class InsightsContext:
    runtime: ServiceRuntime
    settings: InsightsSettings
    zone: ZoneInfo
    method: emerging.Method
    # One batch at a time per process: SQLite has one writer anyway, and on PostgreSQL the row
    # locks of apply.py keep several replicas apart.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Held while the emerging-issue check works on the database.
    detect_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    # The names of topics and subtopics the pages show, per tenant (read once per taxonomy file).
    names: NamesCache = field(default_factory=NamesCache)

    @classmethod
    def build(cls, runtime: ServiceRuntime, settings: InsightsSettings) -> InsightsContext:
        method = emerging.Method(
            false_alarm_rate=settings.emerging_false_alarm_rate,
            baseline_weeks=settings.emerging_baseline_weeks,
            min_count=settings.emerging_min_count,
        )
        return cls(runtime=runtime, settings=settings, zone=ZoneInfo(settings.timezone), method=method)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def today(self) -> date:
        return datetime.now(self.zone).date()

    async def quiesce(self, timeout_s: float = 10.0) -> None:
        """Before shutdown: say so, and wait for the batch and the check in progress to finish.

        The runtime stops by cancelling its tasks. A task cancelled in the middle of a database call
        can leave an aiosqlite connection waiting for ever, and a cancellation that a library
        swallows leaves a loop running; with ``stopping`` set, every loop ends at its next turn and
        no new database work starts.
        """
        self.stop_event.set()
        try:
            for lock in (self.lock, self.detect_lock):
                await asyncio.wait_for(lock.acquire(), timeout_s)
                lock.release()
        except TimeoutError:
            log.warning("insights: work still in progress at shutdown; stopping anyway")


async def apply_events(ctx: InsightsContext, items: Sequence[Parsed]) -> BatchResult:
    """Apply validated events in one transaction (each at most once per consumer)."""
    async with ctx.lock:
        if ctx.stopping:
            raise asyncio.CancelledError("insights is shutting down")
        async with ctx.runtime.sessions() as session, session.begin():
            return await apply_batch(session, items, ctx.zone)


class BatchConsumer(Consumer):
    """A durable pull consumer that applies what it fetched in one transaction."""

    def __init__(
        self, bus: Bus, spec: ConsumerSpec, ctx: InsightsContext, kind: projection.EventKind
    ) -> None:
        super().__init__(bus, spec)
        self.ctx = ctx
        self.kind = kind

    def running(self) -> bool:
        return super().running() and not self.ctx.stopping

    def read(self, event: CloudEvent) -> Parsed:
        """Validate an event for this consumer; raises what makes it a poison message."""
        if event.type != self.kind.model.event_type():
            raise PermanentError(
                f"{event.type} is not the {self.kind.model.event_type()} this consumer reads"
            )
        parsed = parse(event)
        if parsed is None:  # pragma: no cover - every kind of EVENT_KINDS parses
            raise PermanentError(f"insights does not read {event.type}")
        return parsed

    async def handle_fetched(self, messages: list[Msg], limit: asyncio.Semaphore) -> None:
        """Apply the fetched batch in one transaction (one by one if that fails)."""
        valid: list[tuple[Msg, Parsed]] = []
        for msg in messages:
            try:
                event = CloudEvent.from_json(msg.data)
            except (ValidationError, ValueError) as exc:
                await self.give_up(msg, f"malformed CloudEvent: {short_reason(exc)}", "unknown")
                continue
            try:
                valid.append((msg, self.read(event)))
            except (PermanentError, ValidationError) as exc:
                await self.give_up(msg, f"{type(exc).__name__}: {short_reason(exc)}", event.tenant)
        if not valid:
            return
        try:
            with tracer().start_as_current_span(f"apply {self.kind.model.event_type()}") as span:
                span.set_attribute("messaging.batch.message_count", len(valid))
                await apply_events(self.ctx, [parsed for _, parsed in valid])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "consumer %s: a batch of %d failed (%s); applying one by one",
                self.spec.durable,
                len(valid),
                type(exc).__name__,
            )
            for msg, _ in valid:
                await self.handle(msg)
            return
        for msg, _ in valid:
            await msg.ack()
        EVENTS_CONSUMED.labels(self.spec.durable, "ok").inc(len(valid))


def consumers(ctx: InsightsContext) -> list[BatchConsumer]:
    """One batch consumer per event kind insights reads."""
    result = []
    for kind in projection.EVENT_KINDS:

        async def _one(event: CloudEvent, _msg: Msg, kind: projection.EventKind = kind) -> None:
            parsed = parse(event)
            if parsed is None or parsed.consumer != kind.consumer:
                raise PermanentError(f"{event.type} is not read by {kind.consumer}")
            await apply_events(ctx, [parsed])

        spec = ConsumerSpec(
            kind.consumer,
            kind.model.subscription(),
            _one,
            max_deliver=ctx.settings.consumer_max_deliver,
            ack_wait_s=ctx.settings.consumer_ack_wait_s,
            batch_size=ctx.settings.apply_batch_size,
            max_ack_pending=max(1000, ctx.settings.apply_batch_size * 2),
        )
        result.append(BatchConsumer(ctx.runtime.bus, spec, ctx, kind))
    return result


# -- emerging issues -----------------------------------------------------------------------------

SeriesKey = tuple[str, str | None, str | None, str | None]  # (series, topic, subtopic, area)


def _series_of(topic: str, subtopic: str, area: str) -> list[SeriesKey]:
    keys: list[SeriesKey] = []
    classified = topic != UNCLASSIFIED
    located = area != UNKNOWN
    if classified:
        keys.append(("topic", topic, None, None))
        if subtopic:
            keys.append(("subtopic", topic, subtopic, None))
    if located:
        keys.append(("area", None, None, area))
    if classified and located:
        keys.append(("topic-area", topic, None, area))
    return keys


async def detect_day(ctx: InsightsContext, tenant: str, day: date) -> list[EmergingIssue]:
    """Check one completed day of one tenant, store what emerged and publish each new episode.

    Returns the issues found (also when the day was checked before: then those stored).
    """
    method = ctx.method
    async with ctx.runtime.sessions() as session, session.begin():
        if await session.get(EmergingRun, (tenant, day)) is not None:
            stored = await session.exec(
                select(EmergingIssue).where(
                    col(EmergingIssue.tenant) == tenant, col(EmergingIssue.day) == day
                )
            )
            return list(stored.all())
        connection = await session.connection()
        first = (
            await connection.execute(core_select(func.min(DAILY.c.day)).where(DAILY.c.tenant == tenant))
        ).scalar()
        weeks = 0 if first is None else min(method.baseline_weeks, (day - first).days // 7)
        days = [day, *emerging.baseline_days(day, weeks)]
        counts: dict[SeriesKey, dict[date, int]] = defaultdict(lambda: defaultdict(int))
        query = (
            core_select(
                DAILY.c.day, DAILY.c.topic, DAILY.c.subtopic, DAILY.c.area, func.sum(DAILY.c["count"])
            )
            .where(DAILY.c.tenant == tenant, DAILY.c.day.in_(days))
            .group_by(DAILY.c.day, DAILY.c.topic, DAILY.c.subtopic, DAILY.c.area)
        )
        for row_day, topic, subtopic, area, total in await connection.execute(query):
            for key in _series_of(topic, subtopic, area):
                counts[key][row_day] += int(total)
        yesterday = await session.exec(
            select(EmergingIssue).where(
                col(EmergingIssue.tenant) == tenant, col(EmergingIssue.day) == day - timedelta(days=1)
            )
        )
        ongoing = {(i.series, i.topic, i.subtopic, i.area) for i in yesterday.all()}
        found: list[EmergingIssue] = []
        window_start = datetime.combine(day, time(0), tzinfo=ctx.zone).astimezone(UTC)
        window_end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=ctx.zone).astimezone(UTC)
        checked = 0
        for key, by_day in sorted(counts.items(), key=lambda item: tuple(part or "" for part in item[0])):
            observed = by_day.get(day, 0)
            if observed < method.min_count:
                continue
            evaluation = emerging.evaluate(observed, [by_day.get(d, 0) for d in days[1:]], method)
            checked += 1
            if evaluation is None or not evaluation.alarm:
                continue
            series, topic, subtopic, area = key
            issue = EmergingIssue(
                insight_id=emerging.insight_id(tenant, day, series, topic, subtopic, area),
                tenant=tenant,
                day=day,
                series=series,
                topic=topic,
                subtopic=subtopic,
                area=area,
                observed=evaluation.observed,
                expected=evaluation.expected,
                p_value=evaluation.p_value,
                score=evaluation.score,
                false_alarm_rate=method.false_alarm_rate,
                baseline=list(evaluation.baseline),
                published=key not in ongoing,
                detected_at=utcnow(),
            )
            session.add(issue)
            found.append(issue)
            if issue.published:
                data = InsightEmerging(
                    insight_id=issue.insight_id,
                    topic=topic,
                    subtopic=subtopic,
                    area=area,
                    window_start=window_start,
                    window_end=window_end,
                    observed=issue.observed,
                    expected=issue.expected,
                    score=issue.score,
                    false_alarm_rate=issue.false_alarm_rate,
                    series=series,
                    p_value=issue.p_value,
                    baseline=issue.baseline,
                    method=method.describe()["test"],
                )
                enqueue(
                    session,
                    InsightEmerging.bus_subject(tenant),
                    make_event(tenant=tenant, service=SERVICE, data=data),
                )
        session.add(
            EmergingRun(tenant=tenant, day=day, series_checked=checked, found=len(found), checked_at=utcnow())
        )
    if any(issue.published for issue in found):
        ctx.runtime.events_committed()
    return found


async def tenants_with_data(ctx: InsightsContext) -> list[str]:
    async with ctx.runtime.sessions() as session:
        connection = await session.connection()
        result = await connection.execute(core_select(DAILY.c.tenant).distinct())
        return sorted(str(t) for t in result.scalars())


async def caught_up(ctx: InsightsContext) -> bool:
    """True when no consumer of insights has events waiting: a day is judged on all its events."""
    for kind in projection.EVENT_KINDS:
        try:
            info = await ctx.runtime.bus.js.consumer_info(STREAM, kind.consumer)
        except Exception:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def detect_completed_days(ctx: InsightsContext, today: date | None = None) -> int:
    """Check every tenant's completed days of the look-back period that were not checked yet."""
    today = today or ctx.today()
    found = 0
    async with ctx.detect_lock:
        if ctx.stopping:
            return 0
        for tenant in await tenants_with_data(ctx):
            for back in range(ctx.settings.emerging_lookback_days, 0, -1):
                found += len(await detect_day(ctx, tenant, today - timedelta(days=back)))
    return found


async def detection_loop(ctx: InsightsContext) -> None:
    """Background job: check completed days every ``emerging_interval_s``."""
    while not ctx.stopping:
        try:
            if await caught_up(ctx):
                await detect_completed_days(ctx)
            else:
                log.info("insights: consumers still catching up; emerging-issue check postponed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("insights: the emerging-issue check failed; trying again next round")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop_event.wait(), ctx.settings.emerging_interval_s)


# -- rebuild -------------------------------------------------------------------------------------


@dataclass
class RebuildReport:
    stream_messages: int = 0
    applied: int = 0
    skipped: int = 0
    malformed: int = 0


async def clear_read_model(ctx: InsightsContext) -> None:
    """Empty every read-model table and forget which events insights processed."""
    async with ctx.lock, ctx.runtime.sessions() as session, session.begin():
        connection = await session.connection()
        for model in READ_MODEL_TABLES:
            await connection.execute(delete(table_of(model)))
        inbox = table_of(ProcessedEvent)
        await connection.execute(delete(inbox).where(inbox.c.consumer.like("insights-%")))


async def rebuild(
    ctx: InsightsContext, *, batch_size: int = 1000, idle_timeout_s: float = 5.0
) -> RebuildReport:
    """Drop the read model and replay the ``CIVIC`` stream from its start.

    An ephemeral ordered consumer reads the stream in sequence order up to its last message at the
    start of the rebuild. Stop the service (or its consumers) first: events consumed meanwhile
    would be applied twice by nobody — the inbox sees to that — but the dashboard would show a
    half-built model until the rebuild ends.
    """
    report = RebuildReport()
    bus = ctx.runtime.bus
    info = await bus.js.stream_info(STREAM)
    last = info.state.last_seq
    await clear_read_model(ctx)
    if info.state.messages == 0:
        return report
    subscription = await bus.js.subscribe(
        "civic.>", stream=STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    pending: list[Parsed] = []

    async def _flush() -> None:
        if pending:
            result = await apply_events(ctx, pending)
            report.applied += result.applied
            pending.clear()

    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=idle_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                log.warning("rebuild: the stream went quiet before its last message; stopping there")
                break
            report.stream_messages += 1
            sequence = msg.metadata.sequence.stream
            try:
                parsed = parse(CloudEvent.from_json(msg.data))
            except (ValidationError, ValueError):
                report.malformed += 1
                parsed = None
            if parsed is None:
                report.skipped += 1
            else:
                pending.append(parsed)
                if len(pending) >= batch_size:
                    await _flush()
            if sequence >= last:
                break
        await _flush()
    finally:
        await subscription.unsubscribe()
    return report
