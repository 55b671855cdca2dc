"""The read model: built by the live consumers, idempotent under redelivery, equal after a rebuild."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta

from civicsignals.common.bus import DLQ_CONSUMER_HEADER, DLQ_STREAM, STREAM, Bus, stream_messages
from civicsignals.common.events import CloudEvent
from civicsignals.insights import flows, service, synthetic
from civicsignals.insights.service import Filters

from .conftest import Insights, publish_all, subject_of


def _stream(days: int = 20, per_day: float = 8, seed: int = 7) -> list[CloudEvent]:
    start = date.today() - timedelta(days=days)
    return list(synthetic.generate("gouda", start, days, per_day, seed=seed, now=datetime.now(UTC)))


async def test_live_consumers_build_the_model_and_a_rebuild_gives_the_same(
    insights: Insights, bus: Bus, wait_until
) -> None:
    events = _stream()
    # The durable consumers each read one kind, so they see a signal's events in any order; the
    # rebuild reads the stream in order. Equal tables prove the projection does not care.
    await publish_all(bus, events)
    await wait_until(
        lambda: _done(insights, len(events)), timeout=60, message="consumers to apply every event"
    )
    live = await insights.snapshot()
    signals = {
        e.data["signal_id"]
        for e in events
        if e.type.endswith(("signal.received.v1", "conversation.received.v1"))
    }
    assert sum(row[-1] for row in live["insights_daily"]) == len(signals)
    assert len(live["insights_signal"]) == len(signals)
    assert live["insights_case"] and live["insights_feedback"] and live["insights_case_note"]

    await _rollups_agree_with_the_cube(insights)

    report = await flows.rebuild(insights.ctx, batch_size=97)
    assert report.stream_messages == len(events)
    assert report.applied == len(events)
    assert await insights.snapshot() == live


async def _rollups_agree_with_the_cube(insights: Insights) -> None:
    """Each rollup is the cube summed over every other dimension, and the queries that read it
    answer as the cube would."""
    from sqlalchemy import func, select

    from civicsignals.insights.apply import DAILY, ROLLUP
    from civicsignals.insights.models import ROLLUP_DIMENSIONS

    async with insights.ctx.runtime.sessions() as session:
        connection = await session.connection()
        for dimension in ROLLUP_DIMENSIONS:
            cube = select(
                DAILY.c.day, DAILY.c.topic, DAILY.c[dimension], DAILY.c.mode, func.sum(DAILY.c["count"])
            )
            cube = cube.group_by(DAILY.c.day, DAILY.c.topic, DAILY.c[dimension], DAILY.c.mode)
            rollup = select(
                ROLLUP.c.day, ROLLUP.c.topic, ROLLUP.c.value, ROLLUP.c.mode, ROLLUP.c["count"]
            ).where(ROLLUP.c.dimension == dimension)
            expected = sorted(tuple(r) for r in (await connection.execute(cube)).all())
            assert sorted(tuple(r) for r in (await connection.execute(rollup)).all()) == expected, dimension
        totals = select(DAILY.c.day, DAILY.c.topic, DAILY.c.mode, func.sum(DAILY.c["count"]))
        totals = totals.group_by(DAILY.c.day, DAILY.c.topic, DAILY.c.mode)
        total_rows = select(ROLLUP.c.day, ROLLUP.c.topic, ROLLUP.c.mode, ROLLUP.c["count"]).where(
            ROLLUP.c.dimension == "all"
        )
        assert sorted(tuple(r) for r in (await connection.execute(total_rows)).all()) == sorted(
            tuple(r) for r in (await connection.execute(totals)).all()
        )
        period = Filters(start=date.today() - timedelta(days=30), end=date.today())
        by_language = await service.trend(session, "gouda", period, group_by="language")
        # Two dimensions besides topic: the full cube answers; the totals must match the rollup's.
        by_language_on_phone = await service.trend(
            session, "gouda", period.narrowed(channel="phone"), group_by="language"
        )
        on_phone = await service.trend(session, "gouda", period.narrowed(channel="phone"))
    assert sum(n for *_, n in by_language_on_phone) == sum(n for *_, n in on_phone) > 0
    assert sum(n for *_, n in by_language) >= sum(n for *_, n in on_phone)


async def _done(insights: Insights, expected: int) -> bool:
    return await insights.processed() >= expected


async def test_redelivered_events_change_nothing(insights: Insights, bus: Bus, wait_until) -> None:
    events = _stream(days=10, seed=11)
    await insights.apply(events)
    once = await insights.snapshot()
    # Straight through the projection again, in another order and other batches ...
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    await insights.apply(shuffled, batch=41)
    assert await insights.snapshot() == once
    # ... and through the bus: the same CloudEvents under new Nats-Msg-Ids, so JetStream's duplicate
    # window cannot drop them and the consumers see each event a second time.
    for event in events:
        await bus.js.publish(subject_of(event), event.to_json(), headers={"Nats-Msg-Id": f"again-{event.id}"})
    await wait_until(
        lambda: _consumers_idle(insights, bus), timeout=60, message="consumers to work through the redelivery"
    )
    assert await insights.snapshot() == once
    assert await insights.processed() == len(events)


async def _consumers_idle(insights: Insights, bus: Bus) -> bool:
    for kind in flows.projection.EVENT_KINDS:
        try:
            info = await bus.js.consumer_info(STREAM, kind.consumer)
        except Exception:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def test_a_signal_moves_cells_when_classified_and_reclassified(insights: Insights) -> None:
    rng = random.Random(5)
    received_at = datetime.now(UTC).replace(hour=10) - timedelta(days=1)
    events = synthetic.signal_events(rng, "gouda", received_at, topic="afval", passive=False)
    received, classified = events[0], events[1]
    filters = Filters(
        start=received_at.date() - timedelta(days=1), end=received_at.date() + timedelta(days=1)
    )
    await insights.apply([classified])  # classified first: not counted until it was received
    async with insights.ctx.runtime.sessions() as session:
        assert await service.breakdown(session, "gouda", filters, "topic") == []
    await insights.apply([received])
    async with insights.ctx.runtime.sessions() as session:
        assert await service.breakdown(session, "gouda", filters, "topic") == [("afval", 1)]
    reclassified = CloudEvent(
        source="/civicsignals/routing",
        type="nl.civicsignals.signal.reclassified.v1",
        subject=received.data["signal_id"],
        tenant="gouda",
        data={
            "signal_id": received.data["signal_id"],
            "case_id": "c1",
            "topic": "wonen",
            "subtopic": "woningzoeken",
            "previous_topic": "afval",
            "actor": "department",
        },
    )
    await insights.apply([reclassified, classified])  # a later model classification does not undo a person's
    async with insights.ctx.runtime.sessions() as session:
        assert await service.breakdown(session, "gouda", filters, "topic") == [("wonen", 1)]
    snapshot = await insights.snapshot()
    assert all(row[-1] > 0 for row in snapshot["insights_daily"])  # the emptied cell is gone


async def test_poison_messages_go_to_the_dead_letter_stream(insights: Insights, bus: Bus, wait_until) -> None:
    good = _stream(days=2, per_day=3, seed=2)
    received = next(e for e in good if e.type.endswith("signal.received.v1"))
    broken = received.model_copy(
        update={"id": "01BROKENEVENT0000000000000", "data": {**received.data, "kind": "shout"}}
    )
    await bus.js.publish(subject_of(received), broken.to_json(), headers={"Nats-Msg-Id": broken.id})
    await bus.js.publish(subject_of(received), b"not json", headers={"Nats-Msg-Id": "garbage-1"})
    await publish_all(bus, good)
    await wait_until(lambda: _done(insights, len(good)), timeout=60, message="the good events")

    async def dead() -> list[str]:
        return [m.headers.get(DLQ_CONSUMER_HEADER, "") for m in await stream_messages(bus.js, DLQ_STREAM)]

    letters = await wait_until(lambda: _at_least(dead, 2), timeout=30, message="two dead letters")
    assert letters.count("insights-signal-received") == 2
    assert await insights.processed() == len(good)


async def _at_least(get, count: int):
    found = await get()
    return found if len(found) >= count else None


def test_events_contain_no_personal_fields() -> None:
    """The read model keeps no reporter, contact or tracking code: check the columns themselves."""
    from civicsignals.insights.apply import CASES, FEEDBACK, SIGNALS

    columns = {c.name for table in (SIGNALS, CASES, FEEDBACK) for c in table.columns}
    assert not columns & {"tracking_code", "reporter", "email", "phone", "name", "lat", "lon", "address"}
    assert json.dumps(sorted(columns))  # the list itself is what a reviewer reads when this fails


def test_the_rebuild_command_replays_the_stream_into_an_empty_model(
    nats_server, tmp_path, monkeypatch, capsys
) -> None:
    import asyncio
    import sqlite3

    from civicsignals.insights.cli import main

    events = _stream(days=5, per_day=6, seed=13)
    signals = len(
        {e.data["signal_id"] for e in events if e.type.endswith("received.v1") and "signal_id" in e.data}
    )

    async def publish() -> None:
        publisher = Bus(nats_server.url, service="tests", duplicate_window_s=120.0)
        await publisher.connect(retry_forever=False)
        await publisher.ensure_streams()
        await publish_all(publisher, events)
        await publisher.close()

    asyncio.run(publish())
    database = tmp_path / "insights.db"
    monkeypatch.setenv("CIVIC_INSIGHTS_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("CIVIC_INSIGHTS_NATS_URL", nats_server.url)
    monkeypatch.setenv("CIVIC_INSIGHTS_DATA_DIR", str(tmp_path / "data"))
    for _ in range(2):  # a second rebuild starts from empty tables again, so nothing doubles
        main(["rebuild"])
        report = json.loads(capsys.readouterr().out)
        assert report["applied"] == report["stream_messages"] == len(events)
        with sqlite3.connect(database) as connection:
            assert connection.execute("SELECT count(*) FROM insights_signal").fetchone()[0] == signals
            assert connection.execute("SELECT sum(count) FROM insights_daily").fetchone()[0] == signals
