"""The idempotent consumer (DESIGN §2): JetStream delivers at least once, we act once.

A handler calls :func:`claim` inside the same transaction as its own changes. If the event was
processed before, ``claim`` says so and the handler does nothing; otherwise the record commits with
the handler's changes, or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from nats.aio.msg import Msg
from prometheus_client import Histogram
from pydantic import ValidationError
from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import bus as bus_module
from civicsignals.common.bus import (
    EVENT_HANDLING,
    EVENTS_CONSUMED,
    Bus,
    Consumer,
    ConsumerSpec,
    NotReady,
    short_reason,
)
from civicsignals.common.db import SessionFactory, UtcDateTime, stage_insert
from civicsignals.common.events import CloudEvent, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_SIZE = Histogram(
    "civic_consumer_batch_size",
    "Events committed together by a transactional consumer",
    ["consumer"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


INBOX_TABLE: Table = ProcessedEvent.__table__  # type: ignore[attr-defined]


def record_processed(session: AsyncSession, consumer: str, event_ids: list[str]) -> None:
    """Record events as processed in the caller's transaction, staged as rows rather than ORM
    objects (:func:`~civicsignals.common.db.stage_insert`). A record that exists already (a
    redelivery racing this batch) fails the INSERT at the commit, and so the transaction."""
    now = utcnow()
    for event_id in event_ids:
        stage_insert(session, INBOX_TABLE, {"consumer": consumer, "event_id": event_id, "processed_at": now})


async def claim(session: AsyncSession, consumer: str, event_id: str) -> bool:
    """True when this consumer has not yet processed ``event_id``; records it in the transaction.

    Two deliveries of one event racing each other both see no record; the second commit then fails
    on the primary key and its transaction, with all its effects, rolls back.
    """
    existing = await session.exec(
        select(ProcessedEvent).where(ProcessedEvent.consumer == consumer, ProcessedEvent.event_id == event_id)
    )
    if existing.first() is not None:
        return False
    record_processed(session, consumer, [event_id])  # written with the caller's changes
    return True


async def claimed_before(session: AsyncSession, consumer: str, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` this consumer has processed before (one query for a whole batch)."""
    if not event_ids:
        return set()
    rows = await session.exec(
        select(ProcessedEvent.event_id).where(
            ProcessedEvent.consumer == consumer, col(ProcessedEvent.event_id).in_(event_ids)
        )
    )
    return set(rows.all())


CONFLICT_TRIES = 3
"""Tries of a batch (and of a single event) that fails on a unique constraint, each reading afresh
what another writer committed meanwhile (see :meth:`TransactionalConsumer._apply_batch`). One retry
still collided with notifier's other consumer a few times a minute under bench/pipeline's load."""


async def _tried_again_on_conflict(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, tried again at once when it fails on a unique constraint, up to
    ``CONFLICT_TRIES`` in all (see :meth:`TransactionalConsumer._apply_batch`)."""
    for tries_left in reversed(range(CONFLICT_TRIES)):
        try:
            return await attempt()
        except IntegrityError:
            if not tries_left:
                raise
    raise AssertionError("CONFLICT_TRIES is at least 1")


class TransactionalConsumer(Consumer):
    """A consumer whose events change the service's database: a fetched batch in one transaction.

    One transaction per event costs a commit (and on SQLite a turn at the one write lock) per event;
    under load that, not the work, limits a consumer. Here the inbox claims and the ``apply`` of
    every event of a fetched batch commit together, and the messages are acked after the commit.
    Each event still gets its own consumer span, so the events it enqueues carry its trace.

    An ``apply`` that raises :class:`~civicsignals.common.bus.NotReady` (before changing anything)
    leaves its event out of the commit; it is redelivered after the usual delay. A batch that fails
    on a unique constraint (another writer's row, committed after this batch read it) is tried
    again whole. If it still fails, or fails otherwise, it rolls back and every message is handled
    again on its own, in a transaction of its own, so one poison or not-yet-ready event is settled
    alone (dead-lettered or redelivered later) and the rest commit. A crash before the commit leaves every message unacked:
    JetStream delivers them again and the inbox makes a second apply impossible.
    """

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        sessions: SessionFactory,
        *,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(bus, spec)
        if spec.apply is None:
            raise ValueError(f"consumer {spec.durable} has no apply")
        self._apply = spec.apply
        self._sessions = sessions
        self._on_commit = on_commit

    def _exclusive(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The spec's ``exclusive`` lock for one transaction, or nothing to wait for."""
        lock = self.spec.exclusive
        return lock if lock is not None else contextlib.nullcontext()

    def _committed(self) -> None:
        if self._on_commit is not None:
            self._on_commit()
        if self.spec.after_commit is not None:
            self.spec.after_commit()

    async def process(self, event: CloudEvent, msg: Msg) -> None:
        """One event in a transaction of its own (a batch of one, or a failed batch's retry)."""
        await _tried_again_on_conflict(lambda: self._process_once(event, msg))

    async def _process_once(self, event: CloudEvent, msg: Msg) -> None:
        durable = self.spec.durable
        async with self._exclusive(), self._sessions() as session, session.begin():
            if await claimed_before(session, durable, [event.id]):
                return
            if self.spec.prepare is not None:
                await self.spec.prepare(session, [event])
            await self._apply(session, event, msg)
            if self.spec.settle is not None:
                await self.spec.settle(session)
            record_processed(session, durable, [event.id])
        self._committed()

    async def handle_fetched(self, messages: list[Msg], limit: asyncio.Semaphore) -> None:
        batch: list[tuple[Msg, CloudEvent]] = []
        for msg in messages:
            try:
                batch.append((msg, CloudEvent.from_json(msg.data)))
            except (ValidationError, ValueError) as exc:
                await self.give_up(msg, f"malformed CloudEvent: {short_reason(exc)}", "unknown")
        if len(batch) <= 1:
            for msg, _ in batch:
                await self.handle(msg)
            return
        durable = self.spec.durable
        started = time.perf_counter()
        try:
            waiting = await _tried_again_on_conflict(lambda: self._apply_batch(batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info(
                "consumer %s: a batch of %d failed (%s); handling its events one by one",
                durable,
                len(batch),
                type(exc).__name__,
            )
            for msg, _ in batch:
                await self.handle(msg)
            return
        self._committed()
        committed = len(batch) - len(waiting)
        per_event = (time.perf_counter() - started) / max(1, committed)
        for msg, event in batch:
            if event.id in waiting:
                await self._later(msg)
            else:
                await msg.ack()
                EVENT_HANDLING.labels(durable).observe(per_event)  # the batch's time, shared out
        EVENTS_CONSUMED.labels(durable, "ok").inc(committed)
        BATCH_SIZE.labels(durable).observe(committed)

    async def _apply_batch(self, batch: list[tuple[Msg, CloudEvent]]) -> set[str]:
        """Apply and commit the events of ``batch`` in one transaction; the ids of those left out
        as not ready.

        The caller tries a batch that failed on a unique constraint (``IntegrityError``) again at
        once (``CONFLICT_TRIES`` in all) before it handles the events one by one: nearly always
        another writer committed, after this batch's ``prepare`` read, a row the batch creates too
        (notifier's ``signal.received`` and ``signal.routed`` consumers both create a signal's
        acknowledgement, whichever comes first; a redelivery races its first delivery's inbox
        record), and the next try reads that row and builds on it. Handled one by one instead,
        each event of the batch took a transaction of its own, and the one that had collided
        collided again and came back a second later (bench/pipeline: 25 batches in a one-minute
        run at 100 signals/s, the webhooks of those batches up to 1.4 s late).
        """
        durable = self.spec.durable
        waiting: set[str] = set()  # ids of the events left out as not ready
        applied: list[str] = []
        async with self._exclusive(), self._sessions() as session, session.begin():
            done = await claimed_before(session, durable, [event.id for _, event in batch])
            if self.spec.prepare is not None:
                await self.spec.prepare(session, [event for _, event in batch if event.id not in done])
            for msg, event in batch:
                if event.id in done:
                    continue  # processed before, or twice in this batch
                with self.consume_span(event, msg):
                    try:
                        await self._apply(session, event, msg)
                    except NotReady:
                        waiting.add(event.id)  # it changed nothing: the rest commits without it
                        continue
                done.add(event.id)
                applied.append(event.id)
            if applied and self.spec.settle is not None:
                await self.spec.settle(session)
            record_processed(session, durable, applied)
        return waiting

    async def _later(self, msg: Msg) -> None:
        """Redeliver a not-ready event after a short growing delay (or handle it alone at the end)."""
        if msg.metadata.num_delivered >= self.spec.max_deliver:
            await self.handle(msg)  # its last chance: settled (dead-lettered) as a single event would be
            return
        EVENTS_CONSUMED.labels(self.spec.durable, "retry").inc()
        await msg.nak(delay=bus_module.not_ready_delay(msg.metadata.num_delivered))
