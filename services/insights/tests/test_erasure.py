"""Erasure on request (AVG article 17) in insights: ``signal.erased`` drops the signal's text from
the read model, the drill-down list and its exports, and changes no count, topic, case or score.

Through the live consumers over a real NATS server, on SQLite and PostgreSQL; the projection's
order rules without a database.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from itertools import permutations
from typing import Any

from sqlalchemy import select

from civicsignals.common.bus import DLQ_CONSUMER_HEADER, DLQ_STREAM, STREAM, Bus, stream_messages
from civicsignals.common.events import (
    Alternative,
    CaseStatusChanged,
    CloudEvent,
    CoarseLocation,
    ConversationReceived,
    ConversationTurn,
    EventData,
    FeedbackReceived,
    SignalClassified,
    SignalErased,
    SignalReceived,
    SignalRouted,
    make_event,
)
from civicsignals.common.ids import new_id
from civicsignals.insights import flows, projection
from civicsignals.insights.apply import SIGNALS

from .conftest import Insights, publish_all, subject_of
from .test_projection import _signal_row

TODAY = date.today()
PERIOD = {"from": (TODAY - timedelta(days=10)).isoformat(), "to": TODAY.isoformat()}
ERASED_NOTE_NL = "(tekst gewist op verzoek van de melder)"
NOTE = "De container is geleegd en de plek schoongemaakt."


def _event(data: EventData, service: str, at: datetime) -> CloudEvent:
    event = make_event(tenant="gouda", service=service, data=data)
    event.time = at
    return event


def _received(signal_id: str, text: str, at: datetime) -> CloudEvent:
    return _event(
        SignalReceived(
            signal_id=signal_id,
            tracking_code=f"T{signal_id[-10:]}",
            kind="report",
            channel="web",
            text=text,
            language="nl",
            location=CoarseLocation(lat=52.01, lon=4.71, area="noord"),
            received_at=at,
            has_contact=True,
            source="portal",
        ),
        "intake",
        at,
    )


def _conversation(signal_id: str, said: str, at: datetime) -> CloudEvent:
    return _event(
        ConversationReceived(
            signal_id=signal_id,
            channel="phone",
            turns=[
                ConversationTurn(speaker="citizen", text=said),
                ConversationTurn(speaker="agent", text="Ik zoek het voor u uit."),
            ],
            started_at=at,
            duration_s=120.0,
            team="kcc",
        ),
        "intake",
        at,
    )


def _classified(signal_id: str, at: datetime) -> CloudEvent:
    return _event(
        SignalClassified(
            signal_id=signal_id,
            topic="afval",
            subtopic="container",
            confidence=0.8,
            alternatives=[Alternative(topic="afval", subtopic="container", probability=0.8)],
            language="nl",
            kind="report",
            needs_review=False,
            model_version="test",
        ),
        "classifier",
        at + timedelta(seconds=5),
    )


def _life(signal_id: str, reception: CloudEvent, at: datetime) -> list[CloudEvent]:
    """A signal's events: received, classified, routed, resolved with a public note, and the
    resident's feedback with a comment."""
    case_id = new_id()
    tracking = f"T{signal_id[-10:]}"

    def status(sequence: int, old: str, new: str, note: str | None, minutes: int) -> CloudEvent:
        return _event(
            CaseStatusChanged(
                case_id=case_id,
                signal_id=signal_id,
                tracking_code=tracking,
                **{"from": old},
                to=new,
                public_note=note,
                actor="department",
                sequence=sequence,
            ),
            "routing",
            at + timedelta(minutes=minutes),
        )

    routed = SignalRouted(
        signal_id=signal_id,
        case_id=case_id,
        tracking_code=tracking,
        responsible="afval-en-reiniging",
        priority="normal",
        rule_id="afval",
        due_at=at + timedelta(days=5),
    )
    feedback = FeedbackReceived(
        signal_id=signal_id, case_id=case_id, satisfied=True, score=4, comment="Snel geholpen, [PHONE]"
    )
    return [
        reception,
        _classified(signal_id, at),
        _event(routed, "routing", at + timedelta(seconds=10)),
        status(1, "received", "assigned", None, 1),
        status(2, "assigned", "resolved", NOTE, 90),
        _event(feedback, "intake", at + timedelta(hours=3)),
    ]


def _erased(signal_id: str, at: datetime) -> CloudEvent:
    return _event(SignalErased(signal_id=signal_id, case_id=None, erased_at=at), "intake", at)


async def _signal_rows(insights: Insights) -> dict[str, dict[str, Any]]:
    async with insights.ctx.runtime.sessions() as session:
        connection = await session.connection()
        rows = await connection.execute(select(SIGNALS))
        return {row.signal_id: dict(row._mapping) for row in rows}


async def _processed_at_least(insights: Insights, count: int) -> bool:
    return await insights.processed() >= count


async def _consumers_idle(bus: Bus) -> bool:
    for kind in projection.EVENT_KINDS:
        info = await bus.js.consumer_info(STREAM, kind.consumer)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def _exported(insights: Insights) -> tuple[dict[str, str | None], str]:
    as_json = await insights.client.get("/v1/exports/signals.json", params=PERIOD, headers=insights.auth)
    as_csv = await insights.client.get("/v1/exports/signals.csv", params=PERIOD, headers=insights.auth)
    assert as_json.status_code == 200 and as_csv.status_code == 200
    texts = {row["signal_id"]: row["text"] for row in as_json.json()["rows"]}
    csv_texts = {row["signal_id"]: row["text"] for row in csv.DictReader(io.StringIO(as_csv.text))}
    assert csv_texts == {k: v or "" for k, v in texts.items()}
    return texts, as_csv.text


async def _total(insights: Insights) -> int:
    response = await insights.client.get("/v1/trends", params=PERIOD, headers=insights.auth)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


async def test_an_erasure_drops_the_text_everywhere_and_keeps_every_count(
    insights: Insights, bus: Bus, wait_until: Any
) -> None:
    at = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=1)
    report, call, kept = new_id(), new_id(), new_id()
    report_text = "Afval naast de container bij Zonnebloemhof [NUMBER], bel [PHONE]"
    call_text = "Mijn buurman dumpt steeds grofvuil bij de Lindenlaan"
    kept_text = "De container in de Vossenstraat is vol"
    events = [
        *_life(report, _received(report, report_text, at), at),
        *_life(call, _conversation(call, call_text, at + timedelta(hours=1)), at + timedelta(hours=1)),
        *_life(kept, _received(kept, kept_text, at + timedelta(hours=2)), at + timedelta(hours=2)),
    ]
    await publish_all(bus, events)
    await wait_until(
        lambda: _processed_at_least(insights, len(events)), timeout=30, message="every event applied"
    )
    before = await insights.snapshot()
    rows_before = await _signal_rows(insights)
    texts, _ = await _exported(insights)
    assert texts == {report: report_text, call: call_text, kept: kept_text}
    page = (await insights.client.get("/dashboard/signals", params=PERIOD, headers=insights.auth)).text
    assert report_text in page and call_text in page and ERASED_NOTE_NL not in page
    assert await _total(insights) == 3

    erased_at = at + timedelta(days=1)
    first = _erased(report, erased_at)
    subject = subject_of(first)
    await bus.publish(subject, first)
    # The same event again (another Nats-Msg-Id, so JetStream cannot drop it), a second erasure of
    # the same signal a day later, and the conversation's erasure.
    await bus.js.publish(subject, first.to_json(), headers={"Nats-Msg-Id": f"again-{first.id}"})
    await bus.publish(subject, _erased(report, erased_at + timedelta(days=1)))
    await bus.publish(subject, _erased(call, erased_at))
    await wait_until(
        lambda: _processed_at_least(insights, len(events) + 3), timeout=30, message="the erasures applied"
    )
    await wait_until(lambda: _consumers_idle(bus), timeout=30, message="the redelivery handled")
    assert await insights.processed() == len(events) + 3

    after = await insights.snapshot()
    # Every count, cell, case, public note, feedback score and notification stays as it was.
    for table in before:
        if table != "insights_signal":
            assert after[table] == before[table], table
    rows = await _signal_rows(insights)
    assert rows[kept] == rows_before[kept]
    for signal_id in (report, call):
        assert rows[signal_id] == {**rows_before[signal_id], "text": None, "erased_at": erased_at}
        assert rows[signal_id]["counted"] and rows[signal_id]["topic"] == "afval"

    texts, as_csv = await _exported(insights)
    assert texts == {report: None, call: None, kept: kept_text}
    assert report_text not in as_csv and call_text not in as_csv
    page = (await insights.client.get("/dashboard/signals", params=PERIOD, headers=insights.auth)).text
    assert report_text not in page and call_text not in page and kept_text in page
    assert page.count(ERASED_NOTE_NL) == 2
    assert await _total(insights) == 3

    # A replay of the stream (which still holds the reception events) ends in the same place.
    await flows.rebuild(insights.ctx)
    assert await insights.snapshot() == after


async def test_an_erasure_applied_before_the_reception_keeps_the_text_out(
    insights: Insights, bus: Bus, wait_until: Any
) -> None:
    """Each event kind has its own consumer: after a pause, the erasure consumer may be through
    its few events long before the reception consumer reaches the signal."""
    at = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=2)
    signal_id = new_id()
    erased_at = at + timedelta(days=1)
    erasure = _erased(signal_id, erased_at)
    await bus.publish(subject_of(erasure), erasure)
    await wait_until(lambda: _processed_at_least(insights, 1), timeout=30, message="the erasure applied")
    row = (await _signal_rows(insights))[signal_id]
    assert (row["counted"], row["text"], row["erased_at"]) == (False, None, erased_at)
    assert await _total(insights) == 0 and (await _exported(insights))[0] == {}

    text = "Kapotte container bij Esdoornstraat [NUMBER]"
    await publish_all(bus, [_received(signal_id, text, at), _classified(signal_id, at)])
    await wait_until(lambda: _processed_at_least(insights, 3), timeout=30, message="the signal applied")
    row = (await _signal_rows(insights))[signal_id]
    assert (row["counted"], row["text"], row["erased_at"], row["topic"], row["area"]) == (
        True,
        None,
        erased_at,
        "afval",
        "noord",
    )
    assert await _total(insights) == 1
    assert (await _exported(insights))[0] == {signal_id: None}


def test_every_order_of_erasure_and_reception_gives_the_same_signal_row() -> None:
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    for reception in (
        _received("s1", "Afval bij [ADDRESS]", at),
        _conversation("s1", "Vraag over afval [PHONE]", at),
    ):
        classified = _classified("s1", at)
        erased, again = _erased("s1", at + timedelta(days=3)), _erased("s1", at + timedelta(days=9))
        rows = [_signal_row(list(order)) for order in permutations([reception, classified, erased, again])]
        assert all(row == rows[0] for row in rows)
        assert rows[0]["text"] is None and rows[0]["erased_at"] == at + timedelta(days=3)
        # Counted as before, in the same cell: the erasure changes no statistic.
        not_erased = _signal_row([reception, classified])
        assert not_erased["text"] and not_erased["erased_at"] is None
        assert projection.cube_key(rows[0]) == projection.cube_key(not_erased) is not None
    assert projection.cube_key(_signal_row([_erased("s2", at)])) is None  # not received: not counted


async def test_an_unreadable_erasure_goes_to_the_dead_letter_stream(
    insights: Insights, bus: Bus, wait_until: Any
) -> None:
    broken = _erased(new_id(), datetime.now(UTC))
    broken = broken.model_copy(update={"data": {"case_id": None, "erased_at": "yesterday"}})
    await bus.js.publish(subject_of(broken), broken.to_json(), headers={"Nats-Msg-Id": broken.id})

    async def letters() -> list[str] | None:
        found = [m.headers.get(DLQ_CONSUMER_HEADER, "") for m in await stream_messages(bus.js, DLQ_STREAM)]
        return found or None

    assert await wait_until(letters, timeout=30, message="the dead letter") == ["insights-signal-erased"]
    assert await insights.processed() == 0 and await _signal_rows(insights) == {}


def test_the_migrations_create_exactly_the_models(database_url: str) -> None:
    from civicsignals.common.migrations import pending_changes, service_tables
    from civicsignals.insights import app  # noqa: F401  (registers every table insights uses)

    mine = service_tables("insights")
    assert {"insights_signal", "insights_daily", "inbox", "outbox"} <= set(mine.tables)
    assert "erased_at" in mine.tables["insights_signal"].columns
    assert pending_changes(database_url, "civicsignals.insights.migrations", mine) == []
