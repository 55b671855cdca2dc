"""A consumer batch read ahead (``flows.prepare``) and applied in one transaction, against the real
notifier database: later events of a batch see what earlier ones added, and the partners of a case
are found for its status changes without a query per event.

The applies are called directly, in one session each as ``TransactionalConsumer`` does, so that
which events share a transaction is certain (over the bus it depends on how a fetch splits).
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import col, select

from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    SignalReceived,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.notifier import flows
from civicsignals.notifier.models import Delivery, SignalLink

TENANT = "gouda"


def event(data: Any) -> CloudEvent:
    return make_event(tenant=TENANT, service="routing", data=data)


def routed(signal_id: str, case_id: str, partners: list[str]) -> CloudEvent:
    return event(
        SignalRouted(
            signal_id=signal_id,
            case_id=case_id,
            tracking_code=f"code-{signal_id}",
            responsible="afval-en-reiniging",
            priority="normal",
            rule_id="afval",
            partners=partners,
        )
    )


def received(signal_id: str) -> CloudEvent:
    return event(
        SignalReceived(
            signal_id=signal_id,
            tracking_code=f"code-{signal_id}",
            kind="report",
            channel="web",
            text="Afval naast de container.",
            language="nl",
            received_at=utcnow(),
            has_contact=True,
            source="portal",
        )
    )


def change(signal_id: str, case_id: str, to: str, sequence: int) -> CloudEvent:
    return event(
        CaseStatusChanged(
            case_id=case_id,
            signal_id=signal_id,
            tracking_code=f"code-{signal_id}",
            to=to,
            public_note=f"note {sequence}",
            actor="department",
            sequence=sequence,
            **{"from": "assigned"},
        )
    )


async def apply_batch(notifier: Any, events: list[CloudEvent]) -> None:
    """What TransactionalConsumer does with a fetched batch: read ahead, apply each, one commit."""
    ctx = notifier.app.state.notifier
    appliers = {
        SignalReceived.event_type(): flows.apply_signal_received,
        SignalRouted.event_type(): flows.apply_signal_routed,
    }
    async with notifier.runtime.sessions() as session, session.begin():
        await flows.prepare(ctx, session, events)
        for item in events:
            if item.type == CaseStatusChanged.event_type():
                await flows.apply_case_status_changed(ctx, session, item)
            else:
                await appliers[item.type](ctx, session, item)


async def deliveries(notifier: Any, signal_id: str) -> list[Delivery]:
    async with notifier.runtime.sessions() as session:
        rows = await session.exec(
            select(Delivery).where(Delivery.signal_id == signal_id).order_by(col(Delivery.created_at))
        )
        return list(rows.all())


async def test_two_changes_of_one_case_in_one_batch_become_one_mail_and_two_webhooks(
    make_tenant, notifier_factory, receiver
) -> None:
    tenant = make_tenant(TENANT, name="Gouda")
    notifier = await notifier_factory(tenant, coalesce_window_s=3600.0, acknowledgement_wait_s=3600.0)
    await notifier.register("woonpartners", receiver.url, event_types=["case.status_changed"])
    await apply_batch(notifier, [received("s-1")])
    await apply_batch(notifier, [routed("s-1", "case-1", ["woonpartners"])])

    await apply_batch(
        notifier, [change("s-1", "case-1", "in_progress", 2), change("s-1", "case-1", "resolved", 3)]
    )

    rows = await deliveries(notifier, "s-1")
    mails = [row for row in rows if row.channel == "email" and row.template != "acknowledgement"]
    assert len(mails) == 1, [(row.template, row.coalesce_key) for row in mails]
    assert mails[0].sequence == 3 and mails[0].template == "resolution"
    assert json.loads(mails[0].payload)["public_note"] == "note 3"
    hooks = [row for row in rows if row.channel == "webhook"]
    assert sorted(row.event_type for row in hooks) == [CaseStatusChanged.event_type()] * 2
    assert {row.partner_code for row in hooks} == {"woonpartners"}


async def test_received_and_routed_of_one_signal_in_one_batch_make_one_link_and_one_acknowledgement(
    make_tenant, notifier_factory
) -> None:
    tenant = make_tenant(TENANT, name="Gouda")
    notifier = await notifier_factory(tenant, acknowledgement_wait_s=3600.0)
    await apply_batch(notifier, [received("s-2"), routed("s-2", "case-2", [])])

    async with notifier.runtime.sessions() as session:
        links = (await session.exec(select(SignalLink).where(SignalLink.signal_id == "s-2"))).all()
    assert len(links) == 1 and links[0].case_id == "case-2" and links[0].has_contact is True
    acknowledgements = [row for row in await deliveries(notifier, "s-2") if row.template == "acknowledgement"]
    assert len(acknowledgements) == 1
    assert acknowledgements[0].case_id == "case-2"
    assert json.loads(acknowledgements[0].payload)["tracking_code"] == "code-s-2"
