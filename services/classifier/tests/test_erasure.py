"""Erasure on request (AVG article 17) at the classifier: ``signal.erased`` deletes the signal's
corrections, whose text is ``retrain``'s training data, and keeps a later correction out.

Over a real NATS server and the real database (SQLite and PostgreSQL), through the service's own
consumers; what ``retrain`` reads is checked through the command itself.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import func, select

from civicsignals.classifier import cli, service
from civicsignals.classifier.flows import CORRECTION_CONSUMER, ERASURE_CONSUMER
from civicsignals.classifier.models import Correction, ErasedSignal
from civicsignals.common.bus import DLQ_CONSUMER_HEADER, DLQ_STREAM, Bus, stream_messages
from civicsignals.common.events import CloudEvent, SignalErased, SignalReclassified, make_event
from civicsignals.common.ids import new_id
from civicsignals.common.inbox import ProcessedEvent

from . import test_service
from .test_service import Service

#: The service on a real NATS server and database (SQLite and PostgreSQL), as its other tests use it.
svc = test_service.svc

ERASED_TEXT = "Er staan vuilniszakken naast de container bij Kerkstraat [NUMBER], bel [PHONE]"
KEPT_TEXT = "De lantaarnpaal op de hoek brandt al een week niet"


def _reclassified(signal_id: str, text: str, topic: str = "afval") -> CloudEvent:
    return make_event(
        tenant="gouda",
        service="routing",
        data=SignalReclassified(
            signal_id=signal_id,
            case_id=new_id(),
            topic=topic,
            subtopic="container" if topic == "afval" else None,
            previous_topic="schoon",
            text=text,
            actor="key:abc",
        ),
    )


def _erased(signal_id: str, at: datetime) -> CloudEvent:
    return make_event(
        tenant="gouda",
        service="intake",
        data=SignalErased(signal_id=signal_id, case_id=new_id(), erased_at=at),
    )


async def _processed(svc: Service, consumer: str) -> int:
    async with svc.runtime.sessions() as session:
        query = select(func.count()).select_from(ProcessedEvent).where(ProcessedEvent.consumer == consumer)
        return int((await session.exec(query)).one())


async def _handled(svc: Service, consumer: str, count: int) -> bool:
    return await _processed(svc, consumer) >= count


async def _corrections(svc: Service) -> list[tuple[str, str | None, str]]:
    async with svc.runtime.sessions() as session:
        rows = (await session.exec(select(Correction).order_by(Correction.signal_id))).all()
        return [(row.signal_id, row.text, row.topic) for row in rows]


async def _erased_rows(svc: Service) -> list[tuple[str, str, datetime, str]]:
    async with svc.runtime.sessions() as session:
        rows = (await session.exec(select(ErasedSignal))).all()
        return [(row.tenant, row.signal_id, row.erased_at, row.event_id) for row in rows]


def _retrain(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``civicsignals-classifier retrain`` as an operator runs it (its own event loop, in a thread)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.fixture
def retrain_env(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrain command's settings: the service's own database, models and tenant folders."""
    settings = svc.settings
    monkeypatch.setenv("CIVIC_CLASSIFIER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CIVIC_CLASSIFIER_TENANTS_DIR", str(settings.tenants_dir))
    monkeypatch.setenv("CIVIC_CLASSIFIER_MODELS_DIR", str(settings.models_dir))
    monkeypatch.setenv("CIVIC_CLASSIFIER_DATA_DIR", str(settings.data_dir))


async def test_an_erasure_deletes_the_signals_corrections_and_retrain_no_longer_sees_its_text(
    svc: Service,
    bus: Bus,
    wait_until: Any,
    retrain_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    erased_id, kept_id = new_id(), new_id()
    for event in (_reclassified(erased_id, ERASED_TEXT), _reclassified(kept_id, KEPT_TEXT, "verlichting")):
        await bus.publish(SignalReclassified.bus_subject("gouda"), event)
    await wait_until(lambda: _handled(svc, CORRECTION_CONSUMER, 2), timeout=15, message="both corrections")
    assert sorted(await _corrections(svc)) == sorted(
        [(erased_id, ERASED_TEXT, "afval"), (kept_id, KEPT_TEXT, "verlichting")]
    )
    code, err = await asyncio.to_thread(
        _retrain, ["retrain", "--tenant", "gouda", "--min-examples", "500"], capsys
    )
    assert code == 1 and "only 2 examples ({'corrections': 2," in err, err

    erased_at = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    first = _erased(erased_id, erased_at)
    again = _erased(erased_id, erased_at + timedelta(days=1))  # the person asked a second time
    subject = SignalErased.bus_subject("gouda")
    await bus.publish(subject, first)
    # The same event delivered twice (under another Nats-Msg-Id, so JetStream cannot drop it) and a
    # repeated erasure: one record, nothing else changes.
    await bus.js.publish(subject, first.to_json(), headers={"Nats-Msg-Id": f"again-{first.id}"})
    await bus.publish(subject, again)
    await wait_until(lambda: _handled(svc, ERASURE_CONSUMER, 2), timeout=15, message="both erasures")
    await _idle(bus, ERASURE_CONSUMER, wait_until)

    assert await _corrections(svc) == [(kept_id, KEPT_TEXT, "verlichting")]
    assert await _erased_rows(svc) == [("gouda", erased_id, erased_at, first.id)]
    assert await _processed(svc, ERASURE_CONSUMER) == 2
    async with svc.runtime.sessions() as session:
        data = service.corrections_as_data(await service.corrections(session, "gouda"))
    assert data.texts == [KEPT_TEXT] and data.labels == [("verlichting", None)] and data.rows == 1
    # What the retrain command reads and would train on.
    code, err = await asyncio.to_thread(
        _retrain, ["retrain", "--tenant", "gouda", "--min-examples", "500"], capsys
    )
    assert code == 1 and "only 1 examples ({'corrections': 1," in err, err


async def test_a_correction_that_comes_after_the_erasure_is_not_kept(
    svc: Service,
    bus: Bus,
    wait_until: Any,
) -> None:
    """Staff may change a case's topic after the erasure, or the correction was still on its way:
    either way its text must not become training data again."""
    erased_id, other_id = new_id(), new_id()
    await bus.publish(SignalErased.bus_subject("gouda"), _erased(erased_id, datetime.now(UTC)))
    await wait_until(lambda: _handled(svc, ERASURE_CONSUMER, 1), timeout=15, message="the erasure")

    late = _reclassified(erased_id, ERASED_TEXT)
    for event in (late, _reclassified(other_id, KEPT_TEXT, "verlichting")):
        await bus.publish(SignalReclassified.bus_subject("gouda"), event)
    await wait_until(lambda: _handled(svc, CORRECTION_CONSUMER, 2), timeout=15, message="both corrections")

    # The other signal's correction shows the consumer did store what it may.
    assert await _corrections(svc) == [(other_id, KEPT_TEXT, "verlichting")]
    async with svc.runtime.sessions() as session:
        data = service.corrections_as_data(await service.corrections(session, "gouda"))
    assert data.texts == [KEPT_TEXT]
    # Straight through the service function too: nothing is stored, and None says why.
    async with svc.runtime.sessions() as session, session.begin():
        stored = await service.store_correction(
            session, "gouda", new_id(), datetime.now(UTC), SignalReclassified.model_validate(late.data)
        )
    assert stored is None
    assert await _corrections(svc) == [(other_id, KEPT_TEXT, "verlichting")]


async def test_a_correction_row_of_an_erased_signal_is_never_trained_on(svc: Service) -> None:
    """A row that survived the erasure (written by a replica from before erasure was propagated,
    during a rolling update) is still left out of ``retrain``'s data."""
    signal_id = new_id()
    async with svc.runtime.sessions() as session, session.begin():
        session.add(
            Correction(
                tenant="gouda",
                signal_id=signal_id,
                text=ERASED_TEXT,
                topic="afval",
                event_id=new_id(),
                corrected_at=datetime.now(UTC),
            )
        )
        session.add(
            ErasedSignal(tenant="gouda", signal_id=signal_id, erased_at=datetime.now(UTC), event_id=new_id())
        )
    async with svc.runtime.sessions() as session:
        assert list(await service.corrections(session, "gouda")) == []
        assert service.corrections_as_data(await service.corrections(session, "gouda")).texts == []


async def test_an_unreadable_erasure_goes_to_the_dead_letter_stream(
    svc: Service,
    bus: Bus,
    wait_until: Any,
) -> None:
    broken = _erased(new_id(), datetime.now(UTC))
    broken = broken.model_copy(update={"data": {"case_id": None, "erased_at": "yesterday"}})
    await bus.js.publish(
        SignalErased.bus_subject("gouda"), broken.to_json(), headers={"Nats-Msg-Id": broken.id}
    )

    async def letters() -> list[str] | None:
        found = [m.headers.get(DLQ_CONSUMER_HEADER, "") for m in await stream_messages(bus.js, DLQ_STREAM)]
        return found or None

    assert await wait_until(letters, timeout=15, message="the dead letter") == [ERASURE_CONSUMER]
    assert await _processed(svc, ERASURE_CONSUMER) == 0 and await _erased_rows(svc) == []


async def _idle(bus: Bus, durable: str, wait_until: Any) -> None:
    """Wait until the consumer has nothing pending or unacknowledged (the redelivery was handled)."""
    from civicsignals.common.bus import STREAM

    async def idle() -> bool:
        info = await bus.js.consumer_info(STREAM, durable)
        return not info.num_pending and not info.num_ack_pending

    await wait_until(idle, timeout=15, message=f"{durable} to be idle")


def test_the_migrations_create_exactly_the_models(database_url: str) -> None:
    from civicsignals.classifier import app  # noqa: F401  (registers every table classifier uses)
    from civicsignals.common.migrations import pending_changes, service_tables

    mine = service_tables("classifier")
    assert {"correction", "erased_signal", "model_version", "outbox", "inbox"} <= set(mine.tables)
    assert pending_changes(database_url, "civicsignals.classifier.migrations", mine) == []
