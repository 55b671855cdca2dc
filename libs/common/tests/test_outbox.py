"""The transactional outbox (DESIGN §2) against a real nats-server, on SQLite and PostgreSQL.

What must hold: an event commits with the change or not at all; a committed event reaches the
``CIVIC`` stream exactly once, whatever dies in between (NATS, or the relay after publishing
but before marking); events go out in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlmodel import SQLModel, select

from civicsignals.common.bus import STREAM, Bus, stream_messages
from civicsignals.common.db import SessionFactory, create_engine, is_postgres, session_factory, transaction
from civicsignals.common.events import CloudEvent, SignalReceived, make_event, utcnow
from civicsignals.common.outbox import OutboxMessage, OutboxRelay, enqueue
from civicsignals.common.telemetry import tracer
from civicsignals.devstack.nats import NatsServer

pytestmark = pytest.mark.timeout(60)


class _Rollback(Exception):
    pass


class _SimulatedCrash(BaseException):
    """The process dies: no ``except Exception`` in the relay gets to handle it."""


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(
            lambda sync: SQLModel.metadata.create_all(sync, tables=[OutboxMessage.__table__])  # type: ignore[attr-defined]
        )
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def _event(number: int, tenant: str = "gouda") -> tuple[str, CloudEvent]:
    data = SignalReceived(
        signal_id=f"signal-{number}",
        tracking_code="7KQ2-M9XD-4HTC",
        kind="report",
        channel="web",
        text=f"melding {number}",
        received_at=utcnow(),
        has_contact=False,
        source="tests",
    )
    return data.bus_subject(tenant), make_event(tenant=tenant, service="intake", data=data)


async def _enqueue(sessions: SessionFactory, count: int, start: int = 0) -> list[str]:
    """Commit ``count`` events, each in its own transaction; returns their ids in order."""
    ids = []
    for number in range(start, start + count):
        subject, event = _event(number)
        async with transaction(sessions) as session:
            enqueue(session, subject, event)
        ids.append(event.id)
    return ids


async def _stream(bus: Bus) -> list[Any]:
    return await stream_messages(bus.js, STREAM)


async def _msg_ids(bus: Bus) -> list[str]:
    return [message.headers["Nats-Msg-Id"] for message in await _stream(bus)]


async def _rows(sessions: SessionFactory) -> dict[str, OutboxMessage]:
    async with sessions() as session:
        return {row.id: row for row in (await session.exec(select(OutboxMessage))).all()}


def _relay(sessions: SessionFactory, bus: Any, database_url: str, **options: Any) -> OutboxRelay:
    return OutboxRelay(sessions, bus, service="tests", database_url=database_url, **options)


async def test_rolled_back_event_is_never_relayed(
    sessions: SessionFactory, bus: Bus, database_url: str
) -> None:
    subject, event = _event(1)
    with pytest.raises(_Rollback):
        async with transaction(sessions) as session:
            enqueue(session, subject, event)
            raise _Rollback

    relay = _relay(sessions, bus, database_url)
    assert await relay.relay_once() == 0
    assert await relay.pending() == 0
    assert await _rows(sessions) == {}
    assert await _stream(bus) == []


async def test_a_staged_row_is_written_at_the_flush_or_the_commit_and_only_then(
    sessions: SessionFactory, database_url: str
) -> None:
    """``enqueue`` stages the row on the session: a flush with ORM changes writes it (so it is
    readable in the transaction), a commit without any writes it too, and a session whose
    transaction ended without a commit keeps nothing for its next one."""
    first, second, third = _event(1), _event(2), _event(3)
    async with sessions() as session:
        async with session.begin():
            enqueue(session, *first)
            session.add(OutboxMessage(id="orm-row", subject="civic.test", payload="{}"))
            await session.flush()
            seen = set((await session.exec(select(OutboxMessage.id))).all())
            assert seen == {first[1].id, "orm-row"}
        async with session.begin():
            enqueue(session, *second)  # no ORM change in this transaction: no flush, the commit writes it
        await session.begin()
        enqueue(session, *third)
        await session.rollback()
        async with session.begin():
            pass  # commits nothing left over from the rolled-back transaction
    assert set(await _rows(sessions)) == {first[1].id, "orm-row", second[1].id}
    async with sessions() as session, session.begin():
        await session.begin_nested()
        with pytest.raises(RuntimeError, match="SAVEPOINT"):
            enqueue(session, *third)


async def test_committed_event_is_published_with_its_id_and_trace_and_marked(
    sessions: SessionFactory, bus: Bus, database_url: str, spans: Any
) -> None:
    traced_subject, traced = _event(1)
    with tracer().start_as_current_span("POST /v1/signals") as span:
        async with transaction(sessions) as session:
            enqueue(session, traced_subject, traced)
        context = span.get_span_context()
    untraced_subject, untraced = _event(2)
    async with transaction(sessions) as session:
        enqueue(session, untraced_subject, untraced)

    relay = _relay(sessions, bus, database_url)
    assert await relay.pending() == 2
    assert await relay.relay_once() == 2
    assert await relay.pending() == 0

    first, second = await _stream(bus)
    assert first.subject == "civic.gouda.signal.received"
    assert first.headers["Nats-Msg-Id"] == traced.id
    assert first.headers["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert CloudEvent.from_json(first.data) == traced
    assert second.headers["Nats-Msg-Id"] == untraced.id
    assert "traceparent" not in second.headers
    assert CloudEvent.from_json(second.data) == untraced

    rows = await _rows(sessions)
    assert all(row.published_at is not None and row.attempts == 1 for row in rows.values())
    assert json.loads(rows[traced.id].headers)["traceparent"] == first.headers["traceparent"]

    # Nothing left to do: a second pass publishes nothing.
    assert await relay.relay_once() == 0
    assert len(await _stream(bus)) == 2


async def test_relay_keeps_rows_while_nats_is_down_and_publishes_them_after_a_restart(
    sessions: SessionFactory, bus: Bus, nats_server: NatsServer, database_url: str, wait_until: Any
) -> None:
    ids = await _enqueue(sessions, 3)
    # A short JetStream timeout, so that a publish to a server that is gone fails quickly.
    bus._js = bus.nc.jetstream(timeout=1.0)
    relay = _relay(sessions, bus, database_url)

    nats_server.stop()
    await wait_until(lambda: not bus.connected, message="the client to notice the server is gone")
    with pytest.raises(Exception):  # noqa: B017 - whatever nats-py raises, the relay must not hide it
        await relay.relay_once()
    assert await relay.pending() == 3
    assert all(row.published_at is None for row in (await _rows(sessions)).values())

    nats_server.restart()
    await wait_until(lambda: bus.connected, timeout=10, message="the client to reconnect")
    published = 0
    while await relay.pending():
        with contextlib.suppress(Exception):
            published += await relay.relay_once()
    assert published == 3
    # Publishes the client buffered while the server was down may arrive as well: the duplicate
    # window keeps one message per event.
    assert await _msg_ids(bus) == ids


async def test_crash_between_publish_and_mark_yields_one_message_per_event(
    sessions: SessionFactory, bus: Bus, database_url: str
) -> None:
    ids = await _enqueue(sessions, 4)

    class CrashAfterPublishing:
        """Publishes for real, then the process dies before the relay marks anything."""

        def __init__(self, crash_after: int) -> None:
            self.crash_after = crash_after
            self.published = 0

        async def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
            await bus.publish_raw(subject, payload, headers)
            self.published += 1
            if self.published == self.crash_after:
                raise _SimulatedCrash

    crashing = _relay(sessions, CrashAfterPublishing(crash_after=4), database_url)
    with pytest.raises(_SimulatedCrash):
        await crashing.relay_once()
    assert await _msg_ids(bus) == ids
    assert await crashing.pending() == 4  # the mark never committed

    relay = _relay(sessions, bus, database_url)
    assert await relay.relay_once() == 4
    assert await relay.pending() == 0
    assert await _msg_ids(bus) == ids  # each event once, in order

    # A crash part-way through a batch as well.
    more = await _enqueue(sessions, 3, start=4)
    crashing = _relay(sessions, CrashAfterPublishing(crash_after=2), database_url)
    with pytest.raises(_SimulatedCrash):
        await crashing.relay_once()
    assert await relay.relay_once() == 3
    assert await _msg_ids(bus) == ids + more


async def test_events_go_out_in_id_order_across_batches(
    sessions: SessionFactory, bus: Bus, database_url: str
) -> None:
    ids = await _enqueue(sessions, 4)
    # Several events in one transaction too.
    async with transaction(sessions) as session:
        for number in range(4, 7):
            subject, event = _event(number)
            enqueue(session, subject, event)
            ids.append(event.id)
    assert ids == sorted(ids)

    relay = _relay(sessions, bus, database_url, batch_size=3)
    assert [await relay.relay_once() for _ in range(4)] == [3, 3, 1, 0]
    assert await _msg_ids(bus) == ids


async def test_running_relay_publishes_after_wake_and_rides_out_an_outage(
    sessions: SessionFactory, bus: Bus, nats_server: NatsServer, database_url: str, wait_until: Any
) -> None:
    bus._js = bus.nc.jetstream(timeout=1.0)
    relay = _relay(sessions, bus, database_url, poll_interval_s=30.0)
    task = asyncio.create_task(relay.run())
    try:
        ids = await _enqueue(sessions, 1)
        relay.wake()  # the poll interval is long: only the wake-up can explain a prompt publish
        await wait_until(lambda: _msg_ids(bus), timeout=5, message="the woken relay to publish")

        nats_server.stop()
        await wait_until(lambda: not bus.connected, message="the client to notice the server is gone")
        ids += await _enqueue(sessions, 2, start=1)
        relay.wake()
        await asyncio.sleep(0.3)
        nats_server.start()

        async def all_published() -> bool:
            return await relay.pending() == 0 and await _msg_ids(bus) == ids

        await wait_until(all_published, timeout=15, message="the relay to catch up after the outage")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("linger_s", [0.0, 0.5])
async def test_a_lingering_relay_sends_the_events_of_commits_close_together_in_one_pass(
    sessions: SessionFactory, bus: Bus, database_url: str, wait_until: Any, linger_s: float
) -> None:
    """With ``linger_s`` the relay waits after a wake-up, so three commits 50 ms apart are
    published and marked in one pass (one ``published_at``); without it the first goes alone."""
    relay = _relay(sessions, bus, database_url, poll_interval_s=30.0, linger_s=linger_s)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.1)  # the relay's first pass (nothing to send) is over
        ids: list[str] = []
        for number in range(3):
            ids += await _enqueue(sessions, 1, start=number)
            relay.wake()
            await asyncio.sleep(0.05)

        async def all_published() -> bool:
            return await relay.pending() == 0 and await _msg_ids(bus) == ids

        await wait_until(all_published, timeout=10, message="every event published")
        rows = await _rows(sessions)
        with_the_first = {row.id for row in rows.values() if row.published_at == rows[ids[0]].published_at}
        assert with_the_first == (set(ids) if linger_s else {ids[0]})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_prune_forgets_published_rows_only(
    sessions: SessionFactory, bus: Bus, database_url: str
) -> None:
    await _enqueue(sessions, 2)
    relay = _relay(sessions, bus, database_url, keep_published=timedelta(0))
    assert await relay.relay_once() == 2
    pending = await _enqueue(sessions, 1, start=2)

    assert await relay.prune() == 2
    assert list(await _rows(sessions)) == pending
    assert await relay.pending() == 1


async def test_two_relays_never_publish_the_same_row_at_once_on_postgres(
    sessions: SessionFactory, bus: Bus, database_url: str
) -> None:
    """Several replicas relay safely: rows one relay holds are skipped by the other (SKIP LOCKED)."""
    if not is_postgres(database_url):
        pytest.skip("row locks are PostgreSQL's; the SQLite run has one process and one relay")
    ids = await _enqueue(sessions, 4)
    holding = asyncio.Event()
    release = asyncio.Event()

    class Recording:
        def __init__(self, hold: bool) -> None:
            self.hold = hold
            self.ids: list[str] = []

        async def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
            if self.hold:
                holding.set()
                await release.wait()
            self.ids.append(headers["Nats-Msg-Id"])
            await bus.publish_raw(subject, payload, headers)

    slow, fast = Recording(hold=True), Recording(hold=False)
    first = asyncio.create_task(_relay(sessions, slow, database_url, batch_size=2).relay_once())
    await asyncio.wait_for(holding.wait(), timeout=5)
    assert await _relay(sessions, fast, database_url, batch_size=2).relay_once() == 2
    release.set()
    assert await asyncio.wait_for(first, timeout=5) == 2

    assert slow.ids == ids[:2]
    assert fast.ids == ids[2:]
    assert sorted(await _msg_ids(bus)) == ids


async def test_the_pending_gauge_shows_the_backlog_growing_while_nats_is_down(
    sessions: SessionFactory, bus: Bus, nats_server: NatsServer, database_url: str, wait_until: Any
) -> None:
    """``civic_outbox_pending`` is what an operator watches during an outage; it used to be set
    only after a pass that published, so it stood still for as long as NATS was away."""
    bus._js = bus.nc.jetstream(timeout=0.5)
    relay = _relay(sessions, bus, database_url, poll_interval_s=0.2)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("civic_outbox_pending", {"service": "tests"})

    task = asyncio.create_task(relay.run())
    try:
        await wait_until(lambda: gauge() == 0, timeout=10, message="the gauge to show an empty outbox")
        nats_server.stop()
        await wait_until(lambda: not bus.connected, message="the client to notice the server is gone")
        await _enqueue(sessions, 3)
        relay.wake()
        await wait_until(lambda: gauge() == 3, timeout=15, message="the gauge to show the backlog")
        nats_server.start()
        await wait_until(lambda: gauge() == 0, timeout=20, message="the gauge to show the backlog gone")
        assert await relay.pending() == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
