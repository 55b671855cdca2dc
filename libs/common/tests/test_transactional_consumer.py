"""The transactional consumer: a fetched batch applied in one transaction, on a real nats-server
and a real SQLite database. A failing batch is settled event by event; nothing is applied twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from opentelemetry import trace
from sqlalchemy import Column, MetaData, String, Table, event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import bus as bus_module
from civicsignals.common.bus import (
    DLQ_STREAM,
    STREAM,
    Bus,
    ConsumerSpec,
    NotReady,
    PermanentError,
    stream_messages,
)
from civicsignals.common.db import create_engine, session_factory
from civicsignals.common.events import CloudEvent
from civicsignals.common.inbox import CONFLICT_TRIES, ProcessedEvent, TransactionalConsumer
from civicsignals.common.telemetry import tracer

from .conftest import received_event

pytestmark = pytest.mark.timeout(60)

DURABLE = "tests-transactional"
SUBJECT = "civic.gouda.signal.received"
APPLIED = Table("applied", MetaData(), Column("event_id", String, primary_key=True))

Behaviour = Callable[[CloudEvent, Msg], Awaitable[None]]


class Database:
    """A real SQLite file with the inbox and a table that records each applied event."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = session_factory(engine)
        self.commits = 0
        event.listen(engine.sync_engine, "commit", self._count)

    def _count(self, _connection: Any) -> None:
        self.commits += 1

    async def applied(self) -> list[str]:
        async with self.engine.connect() as connection:
            return [row[0] for row in await connection.execute(select(APPLIED.c.event_id))]


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: ProcessedEvent.__table__.create(sync))  # type: ignore[attr-defined]
        await connection.run_sync(APPLIED.metadata.create_all)
    yield Database(engine)
    await engine.dispose()


@contextlib.asynccontextmanager
async def running(
    bus: Bus,
    database: Database,
    behaviour: Behaviour | None = None,
    seen: list[tuple[str, int]] | None = None,
) -> AsyncIterator[TransactionalConsumer]:
    async def apply(session: AsyncSession, event: CloudEvent, msg: Msg) -> None:
        if seen is not None:
            seen.append((event.id, trace.get_current_span().get_span_context().trace_id))
        await session.exec(insert(APPLIED).values(event_id=event.id))
        if behaviour is not None:
            await behaviour(event, msg)

    spec = ConsumerSpec(DURABLE, "civic.*.signal.received", apply=apply, max_deliver=5, ack_wait_s=10.0)
    consumer = TransactionalConsumer(bus, spec, database.sessions)
    async with consuming(consumer):
        yield consumer


@contextlib.asynccontextmanager
async def consuming(consumer: TransactionalConsumer) -> AsyncIterator[None]:
    """Run ``consumer`` for the block; stop it afterwards."""
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _settled(bus: Bus, last_seq: int) -> bool:
    try:
        info = await bus.js.consumer_info(STREAM, DURABLE)
    except NotFoundError:  # the consumer's task has not created it yet
        return False
    return info.ack_floor.stream_seq >= last_seq and info.num_ack_pending == 0 and info.num_pending == 0


@pytest.fixture
def short_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "redelivery_delay", lambda num_delivered: 0.3 * num_delivered)


def test_a_spec_takes_either_a_handler_or_apply() -> None:
    async def handler(_event: CloudEvent, _msg: Msg) -> None: ...

    async def apply(_session: AsyncSession, _event: CloudEvent, _msg: Msg) -> None: ...

    with pytest.raises(ValueError, match="exactly one"):
        ConsumerSpec(DURABLE, SUBJECT)
    with pytest.raises(ValueError, match="exactly one"):
        ConsumerSpec(DURABLE, SUBJECT, handler, apply=apply)


async def test_a_fetched_batch_commits_in_one_transaction(
    bus: Bus, database: Database, wait_until: Any
) -> None:
    events = [received_event(number) for number in range(30)]
    for item in events:
        await bus.publish(SUBJECT, item)

    async with running(bus, database):
        await wait_until(lambda: _settled(bus, len(events)), message="every message acked")

    assert sorted(await database.applied()) == sorted(item.id for item in events)
    assert database.commits == 1  # the 30 messages were fetched (batch size 50) and committed together


async def test_an_event_processed_before_is_acked_and_not_applied_again(
    bus: Bus, database: Database, wait_until: Any
) -> None:
    before, fresh = received_event(1), received_event(2)
    async with database.sessions() as session, session.begin():
        session.add(ProcessedEvent(consumer=DURABLE, event_id=before.id))
    await bus.publish(SUBJECT, before)
    await bus.publish(SUBJECT, fresh)
    await bus.publish(SUBJECT, fresh.model_copy())  # a duplicate: JetStream drops it (same Nats-Msg-Id)

    async with running(bus, database):
        await wait_until(lambda: _settled(bus, 2), message="both acked")

    assert await database.applied() == [fresh.id]


async def test_a_poison_event_in_a_batch_is_dead_lettered_alone(
    bus: Bus, database: Database, wait_until: Any
) -> None:
    events = [received_event(number) for number in range(10)]
    poison = events[4]

    async def refuse_poison(event: CloudEvent, _msg: Msg) -> None:
        if event.id == poison.id:
            raise PermanentError("unknown tenant")

    for item in events:
        await bus.publish(SUBJECT, item)
    await bus.js.publish(SUBJECT, b"{not a cloud event", headers={"Nats-Msg-Id": "malformed-1"})

    async with running(bus, database, refuse_poison):
        await wait_until(lambda: _settled(bus, len(events) + 1), message="every message settled")

    applied = await database.applied()
    assert sorted(applied) == sorted(item.id for item in events if item is not poison)
    dead = await stream_messages(bus.js, DLQ_STREAM)
    reasons = sorted(message.headers["Civic-Dlq-Reason"] for message in dead)
    assert len(dead) == 2
    assert reasons[0].startswith("PermanentError: unknown tenant")
    assert reasons[1].startswith("malformed CloudEvent")
    async with database.engine.connect() as connection:
        claimed = {row[0] for row in await connection.execute(text("SELECT event_id FROM inbox"))}
    assert poison.id not in claimed  # its claim rolled back with it
    assert len(claimed) == len(events) - 1


async def test_a_transient_failure_in_a_batch_delays_only_its_event(
    bus: Bus, database: Database, wait_until: Any, short_delays: None
) -> None:
    events = [received_event(number) for number in range(8)]
    flaky = events[2]

    async def fail_first_delivery(event: CloudEvent, msg: Msg) -> None:
        if event.id == flaky.id and msg.metadata.num_delivered == 1:
            raise RuntimeError("database busy")

    for item in events:
        await bus.publish(SUBJECT, item)

    async with running(bus, database, fail_first_delivery):
        await wait_until(lambda: _settled(bus, len(events)), message="every message acked")

    applied = await database.applied()
    assert sorted(applied) == sorted(item.id for item in events)
    assert len(applied) == len(set(applied))  # the flaky one once, after its redelivery


async def test_each_event_of_a_batch_continues_its_own_trace(
    bus: Bus, database: Database, wait_until: Any, spans: Any
) -> None:
    publishers = []
    events = [received_event(1), received_event(2)]
    for item in events:
        with tracer().start_as_current_span("POST /v1/signals") as span:
            await bus.publish(SUBJECT, item)
        publishers.append(span.get_span_context().trace_id)
    seen: list[tuple[str, int]] = []

    async with running(bus, database, seen=seen):
        await wait_until(lambda: _settled(bus, 2), message="both acked")

    assert dict(seen) == {item.id: trace_id for item, trace_id in zip(events, publishers, strict=True)}
    assert publishers[0] != publishers[1]


async def test_a_not_ready_event_waits_while_the_rest_of_its_batch_commits(
    bus: Bus, database: Database, wait_until: Any, short_delays: None
) -> None:
    events = [received_event(number) for number in range(6)]
    early = events[1]
    deliveries: list[int] = []

    async def wait_for_its_turn(event: CloudEvent, msg: Msg) -> None:
        if event.id == early.id:
            deliveries.append(msg.metadata.num_delivered)
            if msg.metadata.num_delivered < 3:
                raise NotReady("waits for another event")

    async def apply_after_check(session: AsyncSession, event: CloudEvent, msg: Msg) -> None:
        await wait_for_its_turn(event, msg)  # before any change, as NotReady requires
        await session.exec(insert(APPLIED).values(event_id=event.id))

    for item in events:
        await bus.publish(SUBJECT, item)
    spec = ConsumerSpec(DURABLE, "civic.*.signal.received", apply=apply_after_check, max_deliver=5)
    consumer = TransactionalConsumer(bus, spec, database.sessions)
    async with consuming(consumer):
        await wait_until(lambda: _settled(bus, len(events)), message="every message acked")

    assert sorted(await database.applied()) == sorted(item.id for item in events)
    assert deliveries == [1, 2, 3]
    assert database.commits == 2  # the batch without it, then it alone once ready (a wait commits nothing)


SHARED = Table("shared", APPLIED.metadata, Column("key", String, primary_key=True))
"""A row that two writers both create when they find it missing (made with APPLIED's tables)."""


def colliding_consumer(
    bus: Bus, database: Database, collisions: int, tries: list[bool], deliveries: list[int]
) -> TransactionalConsumer:
    """A consumer whose batch creates the row ``ack`` unless its prepare read it, while another
    writer deletes that row before the first ``collisions`` prepares read and creates it again
    before their commits: notifier's two consumers that both create a signal's acknowledgement,
    whichever event comes first."""

    async def other_writer(statement: Any) -> None:
        async with database.engine.begin() as other:
            await other.execute(statement)

    async def prepare(session: AsyncSession, _events: list[CloudEvent]) -> None:
        collide = len(tries) < collisions
        if collide:
            await other_writer(SHARED.delete().where(SHARED.c.key == "ack"))
        found = await session.scalar(select(SHARED.c.key).where(SHARED.c.key == "ack"))
        session.info["ack exists"] = found is not None
        tries.append(found is not None)
        if collide:  # between this read and the batch's commit
            await other_writer(insert(SHARED).values(key="ack"))

    async def apply(session: AsyncSession, event: CloudEvent, msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if not session.info["ack exists"]:
            await session.exec(insert(SHARED).values(key="ack"))
            session.info["ack exists"] = True
        await session.exec(insert(APPLIED).values(event_id=event.id))

    spec = ConsumerSpec(DURABLE, "civic.*.signal.received", apply=apply, prepare=prepare, max_deliver=5)
    return TransactionalConsumer(bus, spec, database.sessions)


async def test_a_batch_that_collides_with_a_concurrent_writer_is_tried_again_whole(
    bus: Bus, database: Database, wait_until: Any
) -> None:
    """Another writer commits a row the batch creates too, after the batch's prepare read that it
    was missing. The second try reads it and builds on it: one more transaction, not one per
    event and a redelivery."""
    commits_before = database.commits
    events = [received_event(number) for number in range(6)]
    tries: list[bool] = []
    deliveries: list[int] = []

    for item in events:
        await bus.publish(SUBJECT, item)
    consumer = colliding_consumer(bus, database, 1, tries, deliveries)
    async with consuming(consumer):
        await wait_until(lambda: _settled(bus, len(events)), message="every message acked")

    assert sorted(await database.applied()) == sorted(item.id for item in events)
    assert tries == [False, True]  # the whole batch once more, having read the other writer's row
    # The other writer's two (its delete found nothing) and the batch's second try.
    assert database.commits - commits_before == 3
    assert set(deliveries) == {1}  # nothing went back for redelivery


async def test_a_batch_that_keeps_colliding_is_settled_event_by_event(
    bus: Bus, database: Database, wait_until: Any
) -> None:
    """The tries are bounded: a batch that collides on every one of them (another writer commits
    the row anew each time) is handled one event at a time, as any failed batch, and each event
    is still applied once."""
    events = [received_event(number) for number in range(4)]
    tries: list[bool] = []
    deliveries: list[int] = []
    for item in events:
        await bus.publish(SUBJECT, item)
    consumer = colliding_consumer(bus, database, CONFLICT_TRIES, tries, deliveries)
    async with consuming(consumer):
        await wait_until(lambda: _settled(bus, len(events)), message="every message acked")

    applied = await database.applied()
    assert sorted(applied) == sorted(item.id for item in events)
    assert len(applied) == len(set(applied))
    # Every try of the batch collided; then each event alone, reading the row it now finds.
    assert tries == [False] * CONFLICT_TRIES + [True] * len(events)


@pytest.mark.parametrize("shared_lock", [True, False], ids=["one-lock", "no-lock"])
async def test_consumers_sharing_an_exclusive_lock_take_turns_with_their_transactions(
    bus: Bus, database: Database, wait_until: Any, shared_lock: bool
) -> None:
    """Two consumers of one process given the same ``exclusive`` lock never have a transaction
    open at once (what intake's consumers of signal rows rely on with SQLite). Without the lock,
    the second begins while the first is still inside its transaction: the test can tell."""
    lock = asyncio.Lock() if shared_lock else None
    log: list[str] = []
    release = asyncio.Event()

    async def first(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        log.append("first began")
        await release.wait()
        await session.exec(insert(APPLIED).values(event_id=event.id))
        log.append("first applied")

    async def second(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        log.append("second began")
        await session.exec(insert(APPLIED).values(event_id=event.id))
        log.append("second applied")

    specs = [
        ConsumerSpec("tests-first", "civic.gouda.signal.received", apply=first, exclusive=lock),
        ConsumerSpec("tests-second", "civic.utrecht.signal.received", apply=second, exclusive=lock),
    ]
    await bus.publish("civic.gouda.signal.received", received_event(1))
    async with (
        consuming(TransactionalConsumer(bus, specs[0], database.sessions)),
        consuming(TransactionalConsumer(bus, specs[1], database.sessions)),
    ):
        await wait_until(lambda: "first began" in log, message="the first transaction open")
        await bus.publish("civic.utrecht.signal.received", received_event(2, tenant="utrecht"))
        if shared_lock:
            await asyncio.sleep(1.0)  # ample time for the second to begin, were it not held back
        else:
            await wait_until(lambda: "second began" in log, message="the second began")
        release.set()
        await wait_until(lambda: len(log) == 4, message="both applied")

    if shared_lock:
        assert log == ["first began", "first applied", "second began", "second applied"]
    else:
        assert log[:2] == ["first began", "second began"]
    assert len(await database.applied()) == 2
