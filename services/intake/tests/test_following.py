"""Intake following the case, a consumer batch at a time: read ahead (``service.read_ahead``), then
applied in one transaction, against the real intake database. Repeats and reorderings inside one
batch behave as they do across batches.

The applies are called directly, in one session as ``TransactionalConsumer`` does, so that which
events share a transaction is certain (over the bus it depends on how a fetch splits).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from sqlmodel import col, select

from civicsignals.common.events import CaseStatusChanged, DepartmentAssigned, SignalRouted, utcnow
from civicsignals.intake import service
from civicsignals.intake.models import Signal, StatusEntry

from .conftest import Intake


def change(signal: dict[str, Any], to: str, sequence: int, **extra: Any) -> CaseStatusChanged:
    """Routing's ``case.status_changed`` for case-1 of ``signal``; ``extra`` overrides fields."""
    fields: dict[str, Any] = {
        "case_id": "case-1",
        "signal_id": signal["id"],
        "tracking_code": signal["tracking_code"],
        "to": to,
        "public_note": f"note {sequence}",
        "actor": "department",
        "sequence": sequence,
        "from": "assigned",
    }
    return CaseStatusChanged(**{**fields, **extra})


def assigned(
    signal: dict[str, Any],
    department: str,
    sequence: int | None,
    role: Literal["responsible", "informed"] = "responsible",
) -> DepartmentAssigned:
    """Routing's ``dept.<department>.assigned`` of case-1 for ``signal`` at the case's ``sequence``."""
    return DepartmentAssigned(
        case_id="case-1",
        signal_id=signal["id"],
        tracking_code=signal["tracking_code"],
        department=department,
        role=role,
        topic="afval",
        kind="report",
        priority="normal",
        sequence=sequence,
    )


def routed(signal: dict[str, Any], **extra: Any) -> SignalRouted:
    """Routing's ``signal.routed`` opening case-1 for ``signal``; ``extra`` overrides fields."""
    fields: dict[str, Any] = {
        "signal_id": signal["id"],
        "case_id": "case-1",
        "tracking_code": signal["tracking_code"],
        "responsible": "stadsbeheer",
        "priority": "normal",
        "rule_id": "afval",
        "service_promise": "Binnen 5 werkdagen.",
    }
    return SignalRouted(**{**fields, **extra})


async def test_a_batch_of_changes_with_a_repeat_and_an_old_one_keeps_one_entry_each_and_the_latest(
    intake: Intake,
) -> None:
    created = (await intake.post_signal()).json()
    opened = routed(created)
    now = utcnow()
    batch = [
        change(created, "in_progress", 3),
        change(created, "assigned", 2),
        change(created, "in_progress", 3),
    ]
    async with intake.runtime.sessions() as session, session.begin():
        await service.read_ahead(session, {created["id"], "01NOSUCHSIGNAL"}, status_entries=True)
        assert await service.apply_routed(session, opened)
        for offset, item in enumerate(batch):
            assert await service.apply_status_change(session, item, now + timedelta(seconds=offset))
        missing = change({"id": "01NOSUCHSIGNAL", "tracking_code": "X"}, "assigned", 2)
        assert not await service.apply_status_change(session, missing, now)

    async with intake.runtime.sessions() as session:
        signal = await session.get(Signal, created["id"])
        entries = (
            await session.exec(
                select(StatusEntry)
                .where(StatusEntry.signal_id == created["id"])
                .order_by(col(StatusEntry.sequence))
            )
        ).all()
    assert signal is not None
    assert (signal.status, signal.status_sequence, signal.service_promise) == (
        "in_progress",
        3,
        "Binnen 5 werkdagen.",
    )
    assert [(entry.sequence, entry.status) for entry in entries] == [
        (0, "received"),
        (2, "assigned"),
        (3, "in_progress"),
    ]


async def test_the_status_change_brings_its_due_date_whichever_event_comes_first(intake: Intake) -> None:
    """``signal.routed`` and ``case.status_changed`` reach intake through two consumers, in either
    order: the page must never show ``assigned`` without the promised date, and a reopening's new
    date must not be undone by a routed event that arrives late."""
    created = (await intake.post_signal()).json()
    now = utcnow()
    first_due, reopened_due = now + timedelta(days=5), now + timedelta(days=12)
    promise = "Binnen 5 werkdagen."
    assigned = change(created, "assigned", 1, due_at=first_due, service_promise=promise)
    reopened = change(created, "reopened", 4, due_at=reopened_due, service_promise=promise)
    late = routed(created, due_at=first_due)

    async def tracking() -> dict[str, Any]:
        response = await intake.client.get(f"/v1/tracking/{created['tracking_code']}")
        assert response.status_code == 200, response.text
        return response.json()

    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_status_change(session, assigned, now)
    page = await tracking()
    assert page["status"] == "assigned"
    assert page["expected_by"] is not None and page["service_promise"] == "Binnen 5 werkdagen."

    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_status_change(session, reopened, now + timedelta(seconds=1))
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, late)  # late: it must not bring back the old date
    async with intake.runtime.sessions() as session:
        signal = await session.get(Signal, created["id"])
    assert signal is not None
    assert (signal.status, signal.expected_by, signal.case_id) == ("reopened", reopened_due, "case-1")


async def test_the_department_and_partners_follow_the_case_whichever_event_comes_first(
    intake: Intake,
) -> None:
    """Who may read a signal's attachments follows the case: a partner it is forwarded to later
    and a department it is handed on to. A late ``signal.routed`` undoes neither, and a change
    from before routing named partners in status changes takes none away."""
    created = (await intake.post_signal()).json()
    now = utcnow()
    handed_on = change(created, "forwarded", 3, responsible="wonen", partners=["woonpartners", "zorgpartner"])
    old_style = change(created, "in_progress", 4)  # no partners field, no responsible
    assert "partners" not in old_style.model_fields_set
    late = routed(created, partners=["woonpartners"])

    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_status_change(session, handed_on, now)
        assert await service.apply_status_change(session, old_style, now + timedelta(seconds=1))
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, late)
    async with intake.runtime.sessions() as session:
        signal = await session.get(Signal, created["id"])
    assert signal is not None
    assert (signal.responsible, signal.partners) == ("wonen", ["woonpartners", "zorgpartner"])

    # In the usual order too: routed first, then the forward to a second partner.
    other = (await intake.post_signal()).json()
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, routed(other, partners=["woonpartners"]))
    async with intake.runtime.sessions() as session, session.begin():
        forward = change(
            other, "forwarded", 2, responsible="stadsbeheer", partners=["woonpartners", "welzijn"]
        )
        assert await service.apply_status_change(session, forward, now)
    async with intake.runtime.sessions() as session:
        followed = await session.get(Signal, other["id"])
    assert followed is not None
    assert (followed.responsible, followed.partners) == ("stadsbeheer", ["woonpartners", "welzijn"])


async def test_a_reassignment_without_a_status_change_comes_from_the_feed_and_the_latest_wins(
    intake: Intake,
) -> None:
    """A case reassigned while it stays ``assigned`` changes no status: only the departments' feed
    (``dept.<code>.assigned``, role responsible) tells of it. By the case's sequence, the latest
    of the feed, the status changes and ``signal.routed`` wins, in whatever order they come."""
    created = (await intake.post_signal()).json()
    now = utcnow()

    def feed(department: str, sequence: int) -> DepartmentAssigned:
        return assigned(created, department, sequence)

    async def responsible() -> str | None:
        async with intake.runtime.sessions() as session:
            signal = await session.get(Signal, created["id"])
        assert signal is not None
        return signal.responsible

    steps: list[tuple[str, Any, str]] = [
        ("reassigned at 3", feed("wonen", 3), "wonen"),
        ("routed, late", routed(created), "wonen"),
        ("a change at 2, late", change(created, "assigned", 2, responsible="stadsbeheer"), "wonen"),
        ("a change at 4", change(created, "in_progress", 4, responsible="handhaving"), "handhaving"),
        ("the feed at 3 again", feed("wonen", 3), "handhaving"),
    ]
    for label, event, expected in steps:
        async with intake.runtime.sessions() as session, session.begin():
            if isinstance(event, DepartmentAssigned):
                assert await service.apply_department_assigned(session, event)
            elif isinstance(event, SignalRouted):
                assert await service.apply_routed(session, event)
            else:
                assert await service.apply_status_change(session, event, now)
        assert await responsible() == expected, label
