"""The transactional outbox (DESIGN §2): an event row commits with the change it describes.

A service never publishes straight to NATS from a request. It adds the event to the outbox in the
same database transaction as its own change, and :class:`OutboxRelay` publishes committed rows and
marks them sent. When NATS or the process dies between the commit and the publish, the row is
still there and goes out later; when it dies between the publish and the mark, the relay
publishes the row again with the same ``Nats-Msg-Id``, and JetStream's duplicate window drops the
copy. So every committed event reaches the stream exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from datetime import datetime, timedelta
from typing import Any, Protocol

from prometheus_client import Counter, Gauge
from sqlalchemy import Table, delete, func, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.bus import MSG_ID_HEADER
from civicsignals.common.db import SessionFactory, UtcDateTime, is_postgres, stage_insert
from civicsignals.common.events import CloudEvent, utcnow
from civicsignals.common.tasks import cancel_requested
from civicsignals.common.telemetry import inject_trace_headers

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("civic_outbox_published_total", "Events the outbox relay published", ["service"])
OUTBOX_FAILURES = Counter("civic_outbox_publish_failures_total", "Failed outbox publishes", ["service"])
OUTBOX_PENDING = Gauge("civic_outbox_pending", "Outbox rows not yet published", ["service"])


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"

    id: str = Field(primary_key=True, description="the CloudEvent id, also the Nats-Msg-Id")
    subject: str
    payload: str
    headers: str = "{}"
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    published_at: datetime | None = Field(default=None, index=True, sa_type=UtcDateTime)
    attempts: int = 0


OUTBOX_TABLE: Table = OutboxMessage.__table__  # type: ignore[attr-defined]


def outbox_row(subject: str, event: CloudEvent) -> dict[str, Any]:
    """An outbox row's columns for ``event``, with the current trace context: for writers that
    insert rows themselves (intake's group commit, notifier's recorded attempts) and for
    :func:`enqueue`."""
    headers: dict[str, str] = {}
    inject_trace_headers(headers)
    return {
        "id": event.id,
        "subject": subject,
        "payload": event.model_dump_json(),
        "headers": json.dumps(headers),
        "created_at": utcnow(),
        "published_at": None,
        "attempts": 0,
    }


def enqueue(session: AsyncSession, subject: str, event: CloudEvent) -> None:
    """Add an event to the outbox in the caller's transaction, with the current trace context.

    The row is staged (:func:`~civicsignals.common.db.stage_insert`): it is written with one
    INSERT for all of the transaction's events at its next flush or its commit, not as an ORM
    object, and commits or rolls back with the caller's changes as before.
    """
    stage_insert(session, OUTBOX_TABLE, outbox_row(subject, event))


class Publisher(Protocol):
    """What the relay needs of the bus; :class:`civicsignals.common.bus.Bus` provides it."""

    async def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str]) -> None: ...


class OutboxRelay:
    """Publishes committed outbox rows, oldest first, and marks them published."""

    def __init__(
        self,
        sessions: SessionFactory,
        publisher: Publisher,
        *,
        service: str,
        database_url: str,
        batch_size: int = 200,
        poll_interval_s: float = 0.5,
        linger_s: float = 0.0,
        keep_published: timedelta = timedelta(days=1),
        fault: str = "none",
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._service = service
        self._skip_locked = is_postgres(database_url)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._linger_s = linger_s
        self._keep_published = keep_published
        self._wakeup = asyncio.Event()
        self._last_prune = utcnow()
        self._last_gauge = 0.0
        self._fault = fault

    def wake(self) -> None:
        """Called after a commit that added events, so they go out without waiting for the poll."""
        self._wakeup.set()

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published; raises the first failure after
        marking the rows that did go out."""
        published = 0
        if self._fault == "hold":
            return 0
        async with self._sessions() as session, session.begin():
            # The four columns, not ORM objects: the relay never changes a row through the session,
            # and building objects cost intake about a tenth of a millisecond of CPU per signal.
            query = (
                select(OutboxMessage.id, OutboxMessage.subject, OutboxMessage.payload, OutboxMessage.headers)
                .where(col(OutboxMessage.published_at).is_(None))
                .order_by(col(OutboxMessage.id))
                .limit(self._batch_size)
            )
            if self._skip_locked:
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.exec(query)).all())
            # All rows of the batch are sent at once (in order on the one connection) and their acks
            # awaited together: one round trip per batch, not per row. The event id as Nats-Msg-Id
            # lets JetStream drop the copy that a relay sends again after dying between the publish
            # and the mark (DESIGN §2); a row whose publish failed stays and goes again later.
            outcomes = await asyncio.gather(
                *(
                    self._publisher.publish_raw(
                        subject, payload.encode(), {**json.loads(headers), MSG_ID_HEADER: event_id}
                    )
                    for event_id, subject, payload, headers in rows
                ),
                return_exceptions=True,
            )
            sent_ids = [row[0] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            for outcome in failures:
                if not isinstance(outcome, Exception):
                    raise outcome  # a cancellation (or a dying process): nothing is marked
            failure = next((outcome for outcome in failures if isinstance(outcome, Exception)), None)
            if sent_ids and self._fault == "exit_after_publish":
                log.error("outbox relay: fault injection, exiting after publishing and before marking")
                os._exit(70)
            if sent_ids:
                await session.exec(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.id).in_(sent_ids))
                    .values(published_at=utcnow(), attempts=OutboxMessage.attempts + 1)
                )
                published = len(sent_ids)
        OUTBOX_PUBLISHED.labels(self._service).inc(published)
        if failure is not None:
            OUTBOX_FAILURES.labels(self._service).inc()
            raise failure
        return published

    async def pending(self) -> int:
        async with self._sessions() as session:
            result = await session.exec(
                select(func.count())
                .select_from(OutboxMessage)
                .where(col(OutboxMessage.published_at).is_(None))
            )
            return int(result.one())

    async def _count_pending(self) -> None:
        """Set ``civic_outbox_pending``, at most once a second (a count, not a per-pass cost)."""
        if time.monotonic() - self._last_gauge >= 1.0:
            self._last_gauge = time.monotonic()
            OUTBOX_PENDING.labels(self._service).set(await self.pending())

    async def prune(self) -> int:
        """Forget rows published long ago; the stream keeps the events, the outbox need not."""
        cutoff = utcnow() - self._keep_published
        async with self._sessions() as session, session.begin():
            result = await session.exec(delete(OutboxMessage).where(col(OutboxMessage.published_at) < cutoff))
            return int(result.rowcount or 0)

    async def run(self) -> None:
        """Relay until cancelled, backing off while the bus is unreachable."""
        backoff = self._poll_interval_s
        while True:
            # Cleared before the pass, not after it: a wake() that arrives while a pass runs (its
            # rows committed after the pass looked) must trigger another pass, not be lost.
            self._wakeup.clear()
            try:
                count = await self.relay_once()
                backoff = self._poll_interval_s
                await self._count_pending()
                if count == self._batch_size:
                    continue
                if utcnow() - self._last_prune > timedelta(hours=1):
                    self._last_prune = utcnow()
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if cancel_requested():  # a cancel that the database driver turned into an error
                    raise asyncio.CancelledError from exc
                log.warning(
                    "outbox relay: publish failed, retrying in %.1fs: %s", backoff, type(exc).__name__
                )
                # While NATS is away the backlog is what operators need to see grow.
                with contextlib.suppress(Exception):
                    await self._count_pending()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation,
            # and then the service never finishes stopping.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wakeup.wait()
            if self._linger_s and self._wakeup.is_set():
                # Woken by a commit: let the next commits' events join this pass. Each pass marks
                # its rows in a write transaction, and on SQLite every one queues for the one
                # write lock (notifier's relay made a fifth of its write transactions).
                await asyncio.sleep(self._linger_s)
