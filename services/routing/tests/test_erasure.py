"""Erasure on request (AVG articles 17 and 19) in routing, over a real NATS and a real database.

Intake publishes ``signal.erased`` when it erased a person's data of a signal. Routing's consumer
``routing-signal-erased`` drops what it keeps of that person beyond what statistics need (the
internal notes of the case's history, a partner's among them), keeps the case's statuses, times,
departments, topic, redacted text and public notes, writes an audit record, and tells every
department the case ever reached on its own feed (``dept.<code>.erased``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from civicsignals.common.audit import AuditRecord
from civicsignals.common.bus import DLQ_CONSUMER_HEADER, DLQ_STREAM, STREAM, stream_messages
from civicsignals.common.events import (
    CloudEvent,
    SignalAttachmentAdded,
    SignalClassified,
    SignalErased,
    make_event,
    utcnow,
)
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.routing import flows
from civicsignals.routing.models import Case, CaseHistory, PartnerUpdate, SignalBeforeCase

from .conftest import Api

ERASED_AT = datetime(2026, 12, 6, 14, 2, 9, 310000, tzinfo=UTC)
PARTNER_PUBLIC = "We komen dinsdag langs om de schimmel te bekijken."
PARTNER_INTERNAL = "Monteur belt mevrouw Jansen eerst op 06-12345678."
STAFF_PUBLIC = "We hebben Woonpartners gevraagd te komen kijken."
STAFF_INTERNAL = "Mevrouw Jansen woont op nummer 14, is overdag thuis."
REROUTE_INTERNAL = "Hoort bij afval: de zakken staan bij haar voordeur."
REASSIGN_INTERNAL = "Toch wonen; zij belde terug vanaf 0182-123456."
RESIDENT_REPLY = "De achterdeur, ik ben Anna Jansen van nummer 14."


def classified(signal_id: str) -> CloudEvent:
    """``signal.classified`` of a signal for afval, as the classifier publishes it."""
    data = SignalClassified(
        signal_id=signal_id,
        topic="afval",
        subtopic=None,
        confidence=0.9,
        alternatives=[],
        language="nl",
        kind="report",
        needs_review=False,
        model_version="test",
        tracking_code=new_tracking_code(),
        channel="web",
        text="Afval naast de container.",
        received_at=datetime.now(UTC),
    )
    return make_event(tenant="gouda", service="classifier", data=data)


def erasure(signal_id: str, case_id: str | None, *, tenant: str = "gouda") -> CloudEvent:
    """``signal.erased`` as intake publishes it (each call a new event id)."""
    data = SignalErased(signal_id=signal_id, case_id=case_id, erased_at=ERASED_AT)
    return make_event(tenant=tenant, service="intake", data=data)


async def erased_feeds(api: Api, signal_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ``dept.<code>.erased`` event about ``signal_id`` in the CIVIC stream, in order."""
    found = []
    for message in await stream_messages(api.runtime.bus.js, STREAM):
        if ".dept." in message.subject and message.subject.endswith(".erased"):
            body = json.loads(message.data)
            if body["data"]["signal_id"] == signal_id:
                found.append((message.subject, body))
    return found


async def erasure_audits(api: Api, case_id: str) -> list[AuditRecord]:
    async with api.runtime.sessions() as session:
        query = (
            select(AuditRecord)
            .where(AuditRecord.action == "person.erase", AuditRecord.object == f"case:{case_id}")
            .order_by(col(AuditRecord.id))
        )
        return list((await session.exec(query)).all())


async def consumer_settled(api: Api) -> bool:
    """The erasure consumer has every message of the stream acknowledged (none waiting or being
    redelivered) and the relay has published every event routing committed."""
    info = await api.runtime.bus.js.consumer_info(STREAM, flows.ERASURE_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0 and await api.runtime.relay.pending() == 0


async def stored(api: Api, case_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The case row, its history rows and its partner updates, as plain values."""
    async with api.runtime.sessions() as session:
        case = await session.get(Case, case_id)
        assert case is not None
        history = (
            await session.exec(
                select(CaseHistory).where(CaseHistory.case_id == case_id).order_by(col(CaseHistory.sequence))
            )
        ).all()
        updates = (await session.exec(select(PartnerUpdate).where(PartnerUpdate.case_id == case_id))).all()
        return case.model_dump(), [row.model_dump() for row in history], [row.model_dump() for row in updates]


async def test_an_erased_signals_case_keeps_no_internal_note_and_every_department_it_reached_is_told(
    api: Api, wait_until
) -> None:
    """The case goes through six departments: opened for wonen (informed handhaving and sociaal,
    forwarded to woonpartners), rerouted to afval (the informed ones dropped), reassigned to kcc
    with directie informed, and back to afval (directie dropped). Only afval is involved at the
    end; all six had the case on their feeds, so all six are told, once per erasure."""
    case = await api.route(topic="wonen", kind="complaint", text="Schimmel in de badkamer. Bel [PHONE].")
    path = f"/v1/cases/{case.id}"
    steps = [
        (
            f"{path}/updates",
            {"public_note": PARTNER_PUBLIC, "internal_note": PARTNER_INTERNAL, "update_id": "wp-7"},
            api.keys.woonpartners,
        ),
        (f"{path}/notes", {"public_note": STAFF_PUBLIC, "internal_note": STAFF_INTERNAL}, api.keys.wonen),
        (
            f"{path}/reclassification",
            {"topic": "afval", "reroute": True, "internal_note": REROUTE_INTERNAL},
            api.keys.wonen,
        ),
        (
            f"{path}/assignment",
            {"responsible": "kcc", "informed": ["directie"], "internal_note": REASSIGN_INTERNAL},
            api.keys.coordinator,
        ),
        (f"{path}/assignment", {"responsible": "afval", "informed": []}, api.keys.coordinator),
        (
            f"{path}/transitions",
            {"to": "waiting_on_resident", "public_note": "Een ploeg is ingepland. Welke deur?"},
            api.keys.afval,
        ),
        (  # the resident's answer from the tracking page, which intake passes on
            f"{path}/updates",
            {"status": "in_progress", "public_note": RESIDENT_REPLY, "on_behalf_of_resident": True},
            api.keys.coordinator,
        ),
    ]
    for url, body, key in steps:
        response = await api.post(url, body, key)
        assert response.status_code == 200, response.text
    before = (await api.get(path)).json()
    assert before["responsible"] == "afval" and before["informed"] == [] and before["topic"] == "afval"
    assert [h["internal_note"] for h in before["history"] if h["internal_note"]] == [
        PARTNER_INTERNAL,
        STAFF_INTERNAL,
        REROUTE_INTERNAL,
        REASSIGN_INTERNAL,
    ]
    case_before, history_before, updates_before = await stored(api, case.id)
    assert case_before["erased_at"] is None

    erased = erasure(case.signal_id, case.id)
    await api.runtime.bus.publish(SignalErased.bus_subject("gouda"), erased)
    [audit] = await wait_until(lambda: erasure_audits(api, case.id), timeout=15, message="the erasure")

    # Every department the case reached is told, on its own feed, with ids only.
    departments = {"wonen", "handhaving", "sociaal", "afval", "kcc", "directie"}

    async def six() -> list[tuple[str, dict[str, Any]]] | None:
        feeds = await erased_feeds(api, case.signal_id)
        return feeds if len(feeds) >= len(departments) else None

    feeds = await wait_until(six, timeout=15, message="the departments' erased events")
    assert sorted(subject for subject, _ in feeds) == sorted(
        f"civic.gouda.dept.{d}.erased" for d in departments
    )
    for subject, event in feeds:
        assert (
            event["type"] == "nl.civicsignals.dept.erased.v1" and event["source"] == "/civicsignals/routing"
        )
        assert event["tenant"] == "gouda" and event["subject"] == case.id
        assert event["data"] == {
            "case_id": case.id,
            "signal_id": case.signal_id,
            "department": subject.split(".")[3],
            "erased_at": "2026-12-06T14:02:09.310000Z",
        }

    # The internal notes and the resident's own words are gone; everything else stays as it was.
    case_after, history_after, updates_after = await stored(api, case.id)
    assert case_after == {**case_before, "erased_at": ERASED_AT}
    assert [row["internal_note"] for row in history_after] == [None] * len(history_before)
    assert history_after == [
        {
            **row,
            "internal_note": None,
            "public_note": None if row["actor"] == "resident" else row["public_note"],
        }
        for row in history_before
    ]
    assert [row["actor"] for row in history_before].count("resident") == 1
    assert RESIDENT_REPLY in {row["public_note"] for row in history_before}
    assert RESIDENT_REPLY not in {row["public_note"] for row in history_after}
    assert {PARTNER_PUBLIC, STAFF_PUBLIC, "Een ploeg is ingepland. Welke deur?"} <= {
        row["public_note"] for row in history_after
    }
    assert updates_after == updates_before and updates_after[0]["update_id"] == "wp-7"
    assert (audit.actor, audit.result, audit.service) == ("system:routing", "ok", "routing")
    assert audit.detail is not None and "internal_notes=4" in audit.detail
    assert f"signal={case.signal_id}" in audit.detail and f"event={erased.id}" in audit.detail
    assert all(code in audit.detail for code in departments)

    # Staff see it in the case API: no internal note, and when the data was erased.
    shown = (await api.get(path)).json()
    assert shown["erased_at"] == "2026-12-06T14:02:09.310000Z"
    assert all(entry["internal_note"] is None for entry in shown["history"])
    assert [entry["public_note"] for entry in shown["history"]] == [
        None if entry["actor"] == "resident" else entry["public_note"] for entry in before["history"]
    ]
    assert (shown["status"], shown["topic"], shown["sequence"]) == (
        "in_progress",
        "afval",
        before["sequence"],
    )

    # The same delivery again (JetStream redelivers after a lost ack: same event id) does nothing;
    # a repeated erasure (a new event) tells the departments again and changes nothing more.
    # Published raw, without a Nats-Msg-Id, so that JetStream's duplicate window keeps it.
    await api.runtime.bus.js.publish(SignalErased.bus_subject("gouda"), erased.to_json())
    await api.runtime.bus.publish(SignalErased.bus_subject("gouda"), erasure(case.signal_id, case.id))
    audits = await wait_until(
        lambda: _two(erasure_audits(api, case.id)), timeout=15, message="the repeated erasure"
    )
    assert audits[1].detail is not None and "internal_notes=0" in audits[1].detail
    await wait_until(
        lambda: consumer_settled(api), timeout=15, message="the consumer and the relay to settle"
    )
    feeds = await erased_feeds(api, case.signal_id)
    assert sorted(subject for subject, _ in feeds) == sorted(
        f"civic.gouda.dept.{d}.erased" for d in departments for _ in range(2)
    )
    assert len({event["id"] for _, event in feeds}) == 12
    assert await stored(api, case.id) == (case_after, history_after, updates_after)
    assert len(await erasure_audits(api, case.id)) == 2


async def _two(records: Any) -> list[AuditRecord] | None:
    found: list[AuditRecord] = await records
    return found if len(found) >= 2 else None


async def test_an_erasure_waits_for_the_case_and_one_whose_signal_never_gets_a_case_is_acknowledged(
    api: Api, wait_until, caplog: pytest.LogCaptureFixture
) -> None:
    """A signal may be erased before routing opened its case: the event is redelivered until the
    case is there. A signal that still has none once ``CASE_WAIT`` has passed since the event
    (imported history, a conversation, or a classification held up) is acknowledged, its erasure
    kept for a case that may open later, with its ids in the log."""
    caplog.set_level(logging.INFO, logger=flows.__name__)
    never = new_id()
    old = erasure(never, None)
    old.time = utcnow() - flows.CASE_WAIT - timedelta(seconds=30)  # published that long ago
    await api.runtime.bus.publish(SignalErased.bus_subject("gouda"), old)
    early_signal = new_id()
    early = erasure(early_signal, None)  # intake knew no case yet
    await api.runtime.bus.publish(SignalErased.bus_subject("gouda"), early)

    async def waited() -> bool:
        info = await api.runtime.bus.js.consumer_info(STREAM, flows.ERASURE_CONSUMER)
        return info.delivered.consumer_seq >= 3  # the old one once, the early one twice at least

    await wait_until(waited, timeout=15, message="the early erasure to be redelivered")
    async with api.runtime.sessions() as session:
        assert (
            await session.exec(select(AuditRecord).where(AuditRecord.action == "person.erase"))
        ).all() == []
    case = await api.route(signal_id=early_signal, topic="afval")
    [audit] = await wait_until(lambda: erasure_audits(api, case.id), timeout=15, message="the erasure")
    assert f"event={early.id}" in (audit.detail or "")
    feeds = await wait_until(lambda: erased_feeds(api, early_signal), timeout=15, message="afval's feed")
    assert [subject for subject, _ in feeds] == ["civic.gouda.dept.afval.erased"]
    assert (await api.get(f"/v1/cases/{case.id}")).json()["erased_at"] == "2026-12-06T14:02:09.310000Z"

    await wait_until(
        lambda: consumer_settled(api), timeout=15, message="the consumer and the relay to settle"
    )
    assert await erased_feeds(api, never) == []
    assert await stream_messages(api.runtime.bus.js, DLQ_STREAM) == []
    async with api.runtime.sessions() as session:
        audits = (await session.exec(select(AuditRecord).where(AuditRecord.action == "person.erase"))).all()
    assert [record.object for record in audits] == [f"case:{case.id}"]
    [dropped] = [record.getMessage() for record in caplog.records if never in record.getMessage()]
    assert old.id in dropped and "has no case yet" in dropped
    async with api.runtime.sessions() as session:
        kept = await session.get(SignalBeforeCase, never)
    assert kept is not None and (kept.tenant, kept.erased_at, kept.attachments) == ("gouda", ERASED_AT, 0)


async def _heard_before_the_case(api: Api, wait_until: Any, signal_id: str) -> None:
    """``signal.erased`` and ``signal.attachment_added`` (two photos) of a signal that had no case
    during all of ``CASE_WAIT``: both acknowledged and kept."""
    long_ago = utcnow() - flows.CASE_WAIT - timedelta(seconds=30)
    erased = erasure(signal_id, None)
    erased.time = long_ago
    photos = make_event(
        tenant="gouda", service="intake", data=SignalAttachmentAdded(signal_id=signal_id, attachments=2)
    )
    photos.time = long_ago
    await api.runtime.bus.publish(SignalErased.bus_subject("gouda"), erased)
    await api.runtime.bus.publish(SignalAttachmentAdded.bus_subject("gouda"), photos)

    async def kept() -> SignalBeforeCase | None:
        async with api.runtime.sessions() as session:
            early = await session.get(SignalBeforeCase, signal_id)
        return early if early is not None and early.erased_at and early.attachments == 2 else None

    await wait_until(kept, timeout=15, message="the erasure and the photo count kept")


@pytest.mark.parametrize("path", ["one event", "a consumer batch"])
async def test_a_case_that_opens_after_the_wait_opens_erased_and_with_its_photos(
    api: Api, wait_until: Any, path: str
) -> None:
    """The classifier was held up past ``CASE_WAIT``: the case opens erased (audited as such), the
    departments' first events count the photos, and what was kept goes. Both ways a classified
    signal is routed: one event (``route_signal``) and a batch of the consumer (``read_ahead``)."""
    signal_id = new_id()
    await _heard_before_the_case(api, wait_until, signal_id)

    if path == "one event":
        case = await api.route(signal_id=signal_id, topic="afval")
    else:
        await api.runtime.bus.publish(SignalClassified.bus_subject("gouda"), classified(signal_id))

        async def opened() -> Case | None:
            async with api.runtime.sessions() as session:
                return (await session.exec(select(Case).where(Case.signal_id == signal_id))).first()

        case = await wait_until(opened, timeout=15, message="the case")

    shown = (await api.get(f"/v1/cases/{case.id}")).json()
    assert shown["erased_at"] == "2026-12-06T14:02:09.310000Z" and shown["attachments"] == 2
    [(_, assigned)] = await api.outbox("dept.afval.assigned")
    assert assigned["data"]["signal_id"] == signal_id and assigned["data"]["attachments"] == 2
    [audit] = await erasure_audits(api, case.id)
    assert "before_case" in (audit.detail or "")
    async with api.runtime.sessions() as session:
        assert await session.get(SignalBeforeCase, signal_id) is None


async def _open_case(
    api: Api, event: CloudEvent, *, commit: asyncio.Event, flushed: asyncio.Event | None = None
) -> None:
    """The routing consumer's batch for ``event`` (``prepare``, ``apply``, ``settle``), its
    transaction held open until ``commit`` (``flushed`` is set once it has written)."""
    async with api.runtime.sessions() as session, session.begin():
        await flows.read_ahead(session, [event])
        assert await flows.open_case_for(api.ctx, session, event)
        await flows.settle_opened_cases(session)
        await session.flush()
        if flushed is not None:
            flushed.set()
        await commit.wait()


async def _hear_before_case(
    api: Api, event: CloudEvent, *, commit: asyncio.Event, flushed: asyncio.Event | None = None
) -> None:
    """The erasure or attachment consumer's batch for ``event``, its transaction held open until
    ``commit`` (``flushed`` is set once it has written)."""
    async with api.runtime.sessions() as session, session.begin():
        await flows.read_cases(session, [event])
        if isinstance(event.data.get("erased_at"), str):
            await flows.erase_signal(session, event)
        else:
            await flows.count_attachments(session, event)
        await session.flush()
        if flushed is not None:
            flushed.set()
        await commit.wait()


@pytest.mark.parametrize("heard", ["erasure", "photos"])
@pytest.mark.parametrize("first", ["the case opens", "the event is kept"])
async def test_a_case_opening_as_the_wait_ends_gets_what_was_heard_whichever_transaction_comes_first(
    api: Api, first: str, heard: str
) -> None:
    """The case's transaction and an erasure's or photo count's, after ``CASE_WAIT``, both in flight
    at once: each reads the other's table before it writes its own. Whichever is first, the case
    ends erased or with its photos counted (and its departments told), and nothing stays kept for a
    case that already exists. Without ``service.lock_signals`` (and, on SQLite, the case's second
    read under the write lock) both read before either commits."""
    signal_id = new_id()
    if heard == "erasure":
        late = erasure(signal_id, None)
    else:
        late = make_event(
            tenant="gouda", service="intake", data=SignalAttachmentAdded(signal_id=signal_id, attachments=2)
        )
    late.time = utcnow() - flows.CASE_WAIT - timedelta(seconds=1)
    release_first, release_second, first_flushed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    release_second.set()
    if first == "the case opens":
        earlier = asyncio.create_task(
            _open_case(api, classified(signal_id), commit=release_first, flushed=first_flushed)
        )
        await asyncio.wait_for(first_flushed.wait(), timeout=15)  # its case flushed, not committed
        later = asyncio.create_task(_hear_before_case(api, late, commit=release_second))
    else:
        earlier = asyncio.create_task(
            _hear_before_case(api, late, commit=release_first, flushed=first_flushed)
        )
        await asyncio.wait_for(first_flushed.wait(), timeout=15)  # what was heard kept, not committed
        later = asyncio.create_task(_open_case(api, classified(signal_id), commit=release_second))
    done, _ = await asyncio.wait({later}, timeout=0.5)
    assert not done, "the second transaction read before the first committed"
    release_first.set()
    await asyncio.wait_for(asyncio.gather(earlier, later), timeout=15)

    async with api.runtime.sessions() as session:
        case = (await session.exec(select(Case).where(Case.signal_id == signal_id))).one()
        assert await session.get(SignalBeforeCase, signal_id) is None
    audits = [audit.object for audit in await erasure_audits(api, case.id)]
    if heard == "erasure":
        assert (case.erased_at, audits) == (ERASED_AT, [f"case:{case.id}"])
    else:
        told = [event["data"]["attachments"] for _, event in await api.outbox("dept.afval.")]
        assert (case.attachments, case.erased_at, audits, max(told)) == (2, None, [], 2)


async def test_an_erasure_from_another_tenant_is_dead_lettered_and_changes_nothing(
    api: Api, wait_until
) -> None:
    """Signal ids are unique across tenants: ``signal.erased`` of tenant delft naming gouda's signal
    is a bug or an attack, never a reason to touch gouda's case."""
    case = await api.route(topic="afval")
    note = await api.post(f"/v1/cases/{case.id}/notes", {"internal_note": STAFF_INTERNAL}, api.keys.afval)
    assert note.status_code == 200, note.text
    before = await stored(api, case.id)
    await api.runtime.bus.publish(
        SignalErased.bus_subject("delft"), erasure(case.signal_id, case.id, tenant="delft")
    )

    async def dead_letters() -> list[str]:
        messages = await stream_messages(api.runtime.bus.js, DLQ_STREAM)
        return [(message.headers or {}).get(DLQ_CONSUMER_HEADER, "") for message in messages]

    assert await wait_until(dead_letters, timeout=15, message="the dead letter") == [flows.ERASURE_CONSUMER]
    await wait_until(lambda: consumer_settled(api), timeout=15, message="the consumer to settle")
    assert await stored(api, case.id) == before
    assert await erased_feeds(api, case.signal_id) == []


def test_the_migrations_create_exactly_the_models(database_url: str) -> None:
    """Routing's Alembic revisions (``0003`` adds ``case.erased_at``) build exactly its tables."""
    from civicsignals.common.migrations import pending_changes, service_tables
    from civicsignals.routing import app  # noqa: F401  (registers every table routing uses)

    mine = service_tables("routing")
    assert {"case", "case_history", "routing_partner_update", "outbox", "inbox", "audit_log"} <= set(
        mine.tables
    )
    assert "erased_at" in mine.tables["case"].columns
    assert pending_changes(database_url, "civicsignals.routing.migrations", mine) == []
