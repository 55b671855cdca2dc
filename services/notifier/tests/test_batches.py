"""A consumer batch read ahead (``flows.prepare``) and applied in one transaction, against the real
notifier database: later events of a batch see what earlier ones added, and the partners of a case
are found for its status changes without a query per event.

The applies are called directly, in one session each as ``TransactionalConsumer`` does, so that
which events share a transaction is certain (over the bus it depends on how a fetch splits).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlmodel import col, select

from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    NotificationDelivered,
    SignalReceived,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.common.outbox import OutboxMessage
from civicsignals.notifier import flows
from civicsignals.notifier.dispatch import Result
from civicsignals.notifier.models import Attempt, Delivery, SignalLink

from .conftest import signal_received

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
    return event(signal_received(signal_id, tracking_code=f"code-{signal_id}"))


def change(signal_id: str, case_id: str, to: str, sequence: int, partners: list[str]) -> CloudEvent:
    return event(
        CaseStatusChanged(
            case_id=case_id,
            signal_id=signal_id,
            tracking_code=f"code-{signal_id}",
            to=to,
            public_note=f"note {sequence}",
            actor="department",
            sequence=sequence,
            partners=partners,
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
        notifier,
        [
            change("s-1", "case-1", "in_progress", 2, ["woonpartners"]),
            change("s-1", "case-1", "resolved", 3, ["woonpartners"]),
        ],
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


async def test_an_attempt_that_outlived_its_lease_records_nothing_and_the_one_holding_it_does(
    make_tenant, notifier_factory
) -> None:
    """The fence of the batched record (``Dispatcher._record_fast``): a delivery claimed again after
    its lease ran out is recorded by the new attempt only, with one ``notification.delivered``."""
    tenant = make_tenant(TENANT, name="Gouda")
    notifier = await notifier_factory(tenant)
    dispatcher = notifier.app.state.dispatcher
    await dispatcher.stop()  # claims below are this test's own
    now = utcnow()
    delivery = Delivery(
        message_id="msg_fence",
        tenant=TENANT,
        channel="email",
        template="acknowledgement",
        event_id="ev-fence",
        event_type=SignalRouted.event_type(),
        event_time=now,
        signal_id="s-fence",
        payload="{}",
        next_attempt_at=now,
    )
    async with notifier.runtime.sessions() as session, session.begin():
        session.add(delivery)

    (first,) = await dispatcher.claim_due(10)
    async with notifier.runtime.sessions() as session, session.begin():  # its lease runs out
        row = await session.get(Delivery, delivery.id)
        assert row is not None and row.status == "sending"
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
    (second,) = await dispatcher.claim_due(10)
    assert (first.number, second.number) == (1, 2)

    await dispatcher.record(first, Result(outcome="delivered", reason="late"))
    async with notifier.runtime.sessions() as session:
        row = await session.get(Delivery, delivery.id)
        assert row is not None and (row.status, row.attempts) == ("sending", 2)

    await dispatcher.record(second, Result(outcome="delivered", reason="accepted", status_code=None))
    async with notifier.runtime.sessions() as session:
        row = await session.get(Delivery, delivery.id)
        assert row is not None and row.status == "delivered" and row.delivered_at is not None
        attempts = (
            await session.exec(
                select(Attempt).where(Attempt.delivery_id == delivery.id).order_by(col(Attempt.number))
            )
        ).all()
        assert [(a.number, a.outcome) for a in attempts] == [(1, "abandoned"), (2, "delivered")]
        events = (
            await session.exec(select(OutboxMessage).where(col(OutboxMessage.payload).contains(delivery.id)))
        ).all()
        assert [json.loads(e.payload)["type"] for e in events] == [NotificationDelivered.event_type()]


async def attempts_of(notifier: Any, delivery_id: str) -> list[Attempt]:
    async with notifier.runtime.sessions() as session:
        rows = await session.exec(
            select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(col(Attempt.number))
        )
        return list(rows.all())


async def test_a_webhook_is_claimed_by_the_consumer_that_creates_it_and_sent_without_a_claim(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """With the dispatcher running, the webhook's first attempt starts in the consumer's own
    transaction (its start is the delivery's creation) and goes out from there."""
    notifier = await notifier_factory(make_tenant(TENANT, name="Gouda"))
    await notifier.register("woonpartners", receiver.url)
    await apply_batch(notifier, [routed("s-claim", "case-claim", ["woonpartners"])])
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the webhook")

    async def delivered() -> bool:
        rows = [row for row in await deliveries(notifier, "s-claim") if row.channel == "webhook"]
        return len(rows) == 1 and rows[0].status == "delivered"

    await wait_until(delivered, timeout=20, message="the webhook recorded as delivered")
    [hook] = [row for row in await deliveries(notifier, "s-claim") if row.channel == "webhook"]
    [attempt] = await attempts_of(notifier, hook.id)
    assert (attempt.number, attempt.outcome, hook.attempts) == (1, "delivered", 1)
    assert attempt.started_at == hook.created_at  # claimed as it was created, not by a later claim


async def test_webhooks_created_as_the_dispatcher_stops_are_given_back_due_at_once(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """A batch read ahead while the dispatcher ran but committed after it stopped: its claimed
    webhooks are not left to their lease but made due again, their attempt abandoned."""
    notifier = await notifier_factory(make_tenant(TENANT, name="Gouda"))
    await notifier.register("woonpartners", receiver.url)
    ctx, dispatcher = notifier.app.state.notifier, notifier.app.state.dispatcher
    event = routed("s-stop", "case-stop", ["woonpartners"])
    async with notifier.runtime.sessions() as session, session.begin():
        await flows.prepare(ctx, session, [event])
        await flows.apply_signal_routed(ctx, session, event)
        await dispatcher.stop()

    async def given_back() -> bool:
        [hook] = [row for row in await deliveries(notifier, "s-stop") if row.channel == "webhook"]
        return hook.next_attempt_at is not None and hook.next_attempt_at <= utcnow()

    await wait_until(given_back, timeout=3, message="the webhook due again before its lease ends (8 s)")
    [hook] = [row for row in await deliveries(notifier, "s-stop") if row.channel == "webhook"]
    [attempt] = await attempts_of(notifier, hook.id)
    assert attempt.outcome == "abandoned" and hook.status == "sending"
    assert receiver.delivered() == []

    later = routed("s-later", "case-later", ["woonpartners"])
    await apply_batch(notifier, [later])  # the dispatcher is gone: created due, not claimed
    [scheduled] = [row for row in await deliveries(notifier, "s-later") if row.channel == "webhook"]
    assert (scheduled.status, scheduled.attempts) == ("scheduled", 0)
    assert await attempts_of(notifier, scheduled.id) == []


async def test_routing_claims_the_waiting_acknowledgement_with_the_webhooks_it_releases(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """``signal.routed`` makes the acknowledgement (scheduled by ``signal.received``) due at once:
    with the dispatcher running it is claimed in the same transaction, beside the new webhook."""
    notifier = await notifier_factory(make_tenant(TENANT, name="Gouda"), acknowledgement_wait_s=3600.0)
    await notifier.register("woonpartners", receiver.url)
    await apply_batch(notifier, [received("s-ack")])
    [ack] = await deliveries(notifier, "s-ack")
    assert (ack.status, ack.attempts) == ("scheduled", 0)

    ctx = notifier.app.state.notifier
    event = routed("s-ack", "case-ack", ["woonpartners"])
    async with notifier.runtime.sessions() as session, session.begin():
        await flows.prepare(ctx, session, [event])
        await flows.apply_signal_routed(ctx, session, event)
        claimed = flows.BatchView.of(session).claimed
        assert sorted(item.channel for item in claimed) == ["email", "webhook"]
        assert next(item for item in claimed if item.channel == "email").id == ack.id

    async def first_attempt() -> bool:
        return [attempt.number for attempt in await attempts_of(notifier, ack.id)] == [1]

    await wait_until(first_attempt, timeout=10, message="the acknowledgement's first attempt")
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the webhook")
