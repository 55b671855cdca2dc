"""Erasure on request (AVG articles 17 and 19) at notifier: ``signal.erased`` from intake.

End to end with the real intake (served by uvicorn, its sealed contacts, its ``erase`` command,
whose event its own outbox relay publishes), a real NATS, a real SMTP server (aiosmtpd) and a
real HTTP receiver whose webhooks are verified with the ``standardwebhooks`` package. Routing's
events are published by the test. The erasure before routing is applied directly (as
``test_batches`` does), so that the event's age is certain without waiting two minutes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from standardwebhooks import Webhook, WebhookVerificationError

from civicsignals.common.bus import STREAM, NotReady, stream_messages
from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    SignalErased,
    SignalReceived,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.common.inbox import ProcessedEvent
from civicsignals.devstack.nats import NatsServer
from civicsignals.intake import cli as intake_cli
from civicsignals.notifier import flows
from civicsignals.notifier.models import Delivery, SignalLink

from .conftest import intake_settings, served_intake, signal_received

TENANT = "gouda"
ERASED_TYPE = SignalErased.event_type()
STATUS_TYPE = CaseStatusChanged.event_type()


# --- the real intake ------------------------------------------------------------------------------


@dataclass
class Stack:
    intake: httpx.AsyncClient
    portal_key: str
    intake_settings: Any
    notifier: Any
    mail: Any
    receiver: Any

    async def post(self, email: str) -> dict[str, Any]:
        """A signal from a resident who left an address and consented to mail."""
        body = {
            "text": "Er ligt al drie dagen afval naast de container op de Kerkstraat.",
            "channel": "web",
            "language": "nl",
            "reporter": {"name": "Anna de Vries", "email": email, "consent": True},
        }
        response = await self.intake.post(
            "/v1/signals", json=body, headers={"Authorization": f"Bearer {self.portal_key}"}
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def knows_case(self, created: dict[str, Any]) -> bool:
        """Whether intake applied the signal's ``signal.routed`` (its tracking page shows the
        promise), so that its erasure names the case."""
        response = await self.intake.get(f"/v1/tracking/{created['tracking_code']}")
        return response.status_code == 200 and response.json().get("service_promise") is not None

    async def erase(self, created: dict[str, Any]) -> None:
        """``civicsignals-intake erase --tracking-code … --yes``, on the running intake's database:
        the running intake publishes the ``signal.erased`` it leaves in the outbox."""
        parser, _ = intake_cli.build_parser()
        args = parser.parse_args(
            ["erase", "--tenant", TENANT, "--tracking-code", created["tracking_code"], "--yes"]
        )
        assert await intake_cli.run_erase(self.intake_settings, args) == 0

    async def erased_events(self) -> list[CloudEvent]:
        """The ``signal.erased`` events in the stream, as intake published them."""
        messages = await stream_messages(self.notifier.runtime.bus.js, STREAM)
        subject = SignalErased.bus_subject(TENANT)
        return [CloudEvent.from_json(m.data) for m in messages if m.subject == subject]

    def webhooks(self, event_type: str) -> list[Any]:
        return [r for r in self.receiver.delivered() if CloudEvent.from_json(r.body).type == event_type]


@pytest.fixture
async def stack(
    make_tenant, nats_server: NatsServer, tmp_path: Path, notifier_factory, mail, receiver
) -> AsyncIterator[Stack]:
    tenant = make_tenant(TENANT, name="Gouda")
    async with (
        served_intake(tenant, nats_server.url, tmp_path) as (intake_url, keys_dir, _),
        httpx.AsyncClient(base_url=intake_url, timeout=30) as client,
    ):
        notifier = await notifier_factory(
            tenant,
            intake_url=intake_url,
            intake_keys_dir=keys_dir,
            smtp_port=mail.port,
            # A status mail waits out its window for the whole test: only the erasure ends it.
            coalesce_window_s=3600.0,
        )
        yield Stack(
            client, tenant.key, intake_settings(tenant, nats_server.url, tmp_path), notifier, mail, receiver
        )


def routed(created: dict[str, Any], case_id: str, partners: list[str]) -> SignalRouted:
    return SignalRouted(
        signal_id=created["id"],
        case_id=case_id,
        tracking_code=created["tracking_code"],
        responsible="afval-en-reiniging",
        partners=partners,
        priority="normal",
        rule_id="afval",
        due_at="2026-12-07T09:14:03Z",
        service_promise="We halen het binnen 5 werkdagen weg.",
    )


def change(
    created: dict[str, Any], case_id: str, to: str, sequence: int, partners: list[str]
) -> CaseStatusChanged:
    return CaseStatusChanged(
        case_id=case_id,
        signal_id=created["id"],
        tracking_code=created["tracking_code"],
        to=to,
        public_note="We komen dinsdag.",
        actor="department",
        sequence=sequence,
        partners=partners,
        **{"from": "assigned"},
    )


def signed_by(secret: str, received: Any) -> bool:
    try:
        Webhook(secret).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_an_erasure_skips_the_waiting_mail_tells_each_endpoint_of_the_case_once_and_stops_later_mail(
    stack: Stack, wait_until
) -> None:
    notifier, mail = stack.notifier, stack.mail
    _, housing = await notifier.register("woonpartners", stack.receiver.url)  # all three types
    # Subscribed to status changes only: it receives the case's data, so it is told all the same.
    _, welfare = await notifier.register("welzijn", stack.receiver.url, event_types=["case.status_changed"])
    _, outsider = await notifier.register("zorgpartner", stack.receiver.url)  # not a partner of the case
    partners = ["woonpartners", "welzijn"]
    anna = await stack.post("anna@example.org")
    bea = await stack.post("bea@example.org")  # another resident: her mail goes as usual
    await notifier.publish(TENANT, routed(anna, "case-anna", partners))
    await notifier.publish(TENANT, routed(bea, "case-bea", []))
    for created in (anna, bea):
        await mail.wait_for_async(lambda m, c=created: c["tracking_code"] in str(m["Subject"]), timeout=30)
    await notifier.publish(TENANT, change(anna, "case-anna", "in_progress", 2, partners))
    await notifier.publish(TENANT, change(bea, "case-bea", "in_progress", 2, []))

    async def waiting_mails() -> list[dict[str, Any]] | None:
        rows = await notifier.deliveries(channel="email", status="scheduled")
        return rows if len(rows) == 2 else None

    await wait_until(waiting_mails, timeout=20, message="both status mails waiting out their window")
    await wait_until(lambda: len(stack.webhooks(STATUS_TYPE)) == 2, timeout=20, message="status webhooks")
    await wait_until(lambda: stack.knows_case(anna), timeout=20, message="intake to apply signal.routed")

    await stack.erase(anna)

    await wait_until(lambda: len(stack.webhooks(ERASED_TYPE)) == 2, timeout=30, message="erased webhooks")
    [published] = await stack.erased_events()
    assert published.data["signal_id"] == anna["id"] and published.data["case_id"] == "case-anna"
    assert set(published.data) == {"signal_id", "case_id", "erased_at"}  # ids only
    hooks = stack.webhooks(ERASED_TYPE)
    # The body is the event as intake published it, signed for each endpoint with its own id.
    assert all(json.loads(hook.body) == json.loads(published.to_json()) for hook in hooks)
    assert sorted(signed_by(housing["secret"], hook) for hook in hooks) == [False, True]
    assert sorted(signed_by(welfare["secret"], hook) for hook in hooks) == [False, True]
    assert not any(signed_by(outsider["secret"], hook) for hook in hooks)
    assert len({hook.headers["webhook-id"] for hook in hooks}) == 2

    # The webhooks were created with the skip, in one transaction: the waiting mail is skipped,
    # without an attempt (not even a question to intake), and cannot be retried by hand.
    mails = {row["template"]: row for row in await notifier.deliveries(signal=anna["id"], channel="email")}
    assert sorted(mails) == ["acknowledgement", "status_update"]
    waiting = mails["status_update"]
    assert (waiting["status"], waiting["status_reason"], waiting["attempts"]) == ("skipped", "erased", 0)
    assert (await notifier.delivery(waiting["id"]))["attempt_log"] == []
    retried = await notifier.client.post(f"/v1/deliveries/{waiting['id']}/retry")
    assert retried.status_code == 409, retried.text
    assert mails["acknowledgement"]["status"] == "delivered"  # sent before the erasure; left as it was

    # The case goes on: its partners hear of the next change (ids only), the resident gets no mail.
    await notifier.publish(TENANT, change(anna, "case-anna", "resolved", 3, partners))
    await wait_until(lambda: len(stack.webhooks(STATUS_TYPE)) == 4, timeout=20, message="resolved webhooks")
    after = await notifier.deliveries(signal=anna["id"], channel="email")
    assert sorted((row["template"], row["status"]) for row in after) == [
        ("acknowledgement", "delivered"),
        ("status_update", "skipped"),
    ]

    # Bea's mail, made due now, reaches SMTP; Anna's status mail never did.
    [bea_waiting] = await notifier.deliveries(signal=bea["id"], channel="email", status="scheduled")
    assert (await notifier.client.post(f"/v1/deliveries/{bea_waiting['id']}/retry")).status_code == 202
    await mail.wait_for_async(
        lambda m: bea["tracking_code"] in str(m["Subject"]) and "in behandeling" in str(m["Subject"]),
        timeout=30,
    )
    to_anna = [str(m["Subject"]) for m in mail.messages() if m["To"] == "anna@example.org"]
    assert len(to_anna) == 1 and "ontvangen" in to_anna[0], to_anna


async def test_a_redelivered_or_repeated_erasure_tells_no_endpoint_twice(stack: Stack, wait_until) -> None:
    notifier = stack.notifier
    await notifier.register("woonpartners", stack.receiver.url)
    anna = await stack.post("anna@example.org")
    await notifier.publish(TENANT, routed(anna, "case-anna", ["woonpartners"]))
    await wait_until(lambda: stack.knows_case(anna), timeout=20, message="intake to apply signal.routed")
    await stack.erase(anna)
    await wait_until(lambda: len(stack.webhooks(ERASED_TYPE)) == 1, timeout=30, message="the erased webhook")
    [first] = await stack.erased_events()

    # JetStream delivers at least once: the same event again (under another Nats-Msg-Id, or the
    # stream's duplicate window would drop it before notifier saw it).
    js = notifier.runtime.bus.js
    again = await js.publish(
        SignalErased.bus_subject(TENANT), first.to_json(), headers={"Nats-Msg-Id": f"again-{first.id}"}
    )

    async def handled() -> bool:
        info = await js.consumer_info(STREAM, flows.ERASED_CONSUMER)
        return info.ack_floor.stream_seq >= again.seq

    await wait_until(handled, timeout=20, message="the redelivered event to be acked")

    # An erasure repeated at intake is a new event: the endpoint has been told, so not again.
    await stack.erase(anna)

    async def repeated() -> CloudEvent | None:
        return next((event for event in await stack.erased_events() if event.id != first.id), None)

    second = await wait_until(repeated, timeout=20, message="intake's second signal.erased")

    async def applied() -> bool:
        async with notifier.runtime.sessions() as session:
            row = await session.get(ProcessedEvent, (flows.ERASED_CONSUMER, second.id))
            return row is not None

    await wait_until(applied, timeout=20, message="the repeated erasure to be applied")
    hooks = [row for row in await notifier.deliveries(channel="webhook") if row["event_type"] == ERASED_TYPE]
    assert len(hooks) == 1 and hooks[0]["event_id"] == first.id
    assert len(stack.webhooks(ERASED_TYPE)) == 1


# --- before routing, applied directly -------------------------------------------------------------


def bus_event(data: Any, service: str = "routing") -> CloudEvent:
    return make_event(tenant=TENANT, service=service, data=data)


async def apply(notifier: Any, event: CloudEvent) -> None:
    """What ``TransactionalConsumer`` does with a batch of one: read ahead, apply, commit."""
    ctx = notifier.app.state.notifier
    appliers = {
        SignalReceived.event_type(): flows.apply_signal_received,
        SignalRouted.event_type(): flows.apply_signal_routed,
        STATUS_TYPE: flows.apply_case_status_changed,
        ERASED_TYPE: flows.apply_signal_erased,
    }
    async with notifier.runtime.sessions() as session, session.begin():
        await flows.prepare(ctx, session, [event])
        await appliers[event.type](ctx, session, event)


async def state(notifier: Any, signal_id: str) -> tuple[SignalLink | None, list[Delivery]]:
    async with notifier.runtime.sessions() as session:
        link = await session.get(SignalLink, signal_id)
        rows = await session.exec(
            select(Delivery).where(Delivery.signal_id == signal_id).order_by(col(Delivery.created_at))
        )
        return link, list(rows.all())


async def test_an_endpoint_enabled_again_is_told_of_the_erasures_it_missed_once(
    stack: Stack, wait_until
) -> None:
    """AVG article 19 asks that every recipient be told: an endpoint that was disabled when a case
    it had received was erased gets that ``signal.erased`` when it is enabled again, once, signed;
    not for a case it never received, and not again on a second enabling."""
    notifier = stack.notifier
    partner, housing = await notifier.register("woonpartners", stack.receiver.url)
    endpoint_path = f"/v1/partners/{partner['id']}/endpoints/{housing['id']}"
    anna = await stack.post("anna@example.org")
    await notifier.publish(TENANT, routed(anna, "case-anna", ["woonpartners"]))
    await wait_until(
        lambda: len(stack.webhooks(SignalRouted.event_type())) == 1, timeout=20, message="routed"
    )
    await wait_until(lambda: stack.knows_case(anna), timeout=20, message="intake to apply signal.routed")

    disabled = await notifier.client.patch(endpoint_path, json={"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False, disabled.text
    # a case routed while the endpoint was disabled: it never received that one's data
    bea = await stack.post("bea@example.org")
    await notifier.publish(TENANT, routed(bea, "case-bea", ["woonpartners"]))
    await wait_until(lambda: stack.knows_case(bea), timeout=20, message="intake to apply bea's routing")
    await stack.erase(anna)
    await stack.erase(bea)

    async def both_erasures_applied() -> bool:
        async with notifier.runtime.sessions() as session:
            links = (
                await session.exec(select(SignalLink).where(col(SignalLink.erased_at).is_not(None)))
            ).all()
        return len(links) == 2

    await wait_until(both_erasures_applied, timeout=30, message="both erasures at notifier")
    assert stack.webhooks(ERASED_TYPE) == []  # disabled: nobody told yet

    enabled = await notifier.client.patch(endpoint_path, json={"enabled": True})
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True, enabled.text

    [hook] = await wait_until(
        lambda: stack.webhooks(ERASED_TYPE) or None, timeout=20, message="the missed erasure's webhook"
    )
    assert signed_by(housing["secret"], hook)
    body = json.loads(hook.body)
    assert body["data"]["signal_id"] == anna["id"] and body["data"]["case_id"] == "case-anna"
    assert set(body["data"]) == {"signal_id", "case_id", "erased_at"} and body["source"].endswith("notifier")

    for enabled_flag in (False, True):  # enabled once more: nobody is told twice
        again = await notifier.client.patch(endpoint_path, json={"enabled": enabled_flag})
        assert again.status_code == 200, again.text

    async def told() -> list[tuple[str | None, str | None, str]]:
        async with notifier.runtime.sessions() as session:
            rows = (await session.exec(select(Delivery).where(Delivery.event_type == ERASED_TYPE))).all()
        return [(row.signal_id, row.endpoint_id, row.status) for row in rows]

    expected = [(anna["id"], housing["id"], "delivered")]

    async def told_is(wanted: list[tuple[str, str, str]]) -> bool:
        return await told() == wanted

    await wait_until(lambda: told_is(expected), timeout=20, message="the delivery recorded")
    assert len(stack.webhooks(ERASED_TYPE)) == 1


async def test_an_erasure_before_routing_waits_for_it_then_skips_the_mail_and_tells_nobody(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    notifier = await notifier_factory(make_tenant(TENANT, name="Gouda"), acknowledgement_wait_s=3600.0)
    await notifier.register("woonpartners", receiver.url)
    await apply(notifier, bus_event(signal_received("s-1", tracking_code="code-s-1")))
    erasure = SignalErased(signal_id="s-1", case_id=None, erased_at=utcnow())

    # Young: it waits (redelivered) for the case's signal.routed, and changes nothing meanwhile.
    with pytest.raises(NotReady):
        await apply(notifier, bus_event(erasure, service="intake"))
    link, [ack] = await state(notifier, "s-1")
    assert link is not None and link.erased_at is None and ack.status == "scheduled"

    # Older than ROUTED_WAIT: nobody is told (routing is not known), the waiting mail is skipped.
    old = bus_event(erasure, service="intake")
    old.time = utcnow() - flows.ROUTED_WAIT - timedelta(seconds=1)
    await apply(notifier, old)
    link, [ack] = await state(notifier, "s-1")
    assert link is not None and link.erased_at == erasure.erased_at and link.has_contact is False
    assert (ack.status, ack.status_reason, ack.attempts) == ("skipped", "erased", 0)

    # Events after the erasure schedule no resident mail: a late signal.routed (its webhook goes,
    # as routed webhooks carry ids only), signal.received again, a status change.
    late = SignalRouted(
        signal_id="s-1",
        case_id="case-1",
        tracking_code="code-s-1",
        responsible="afval-en-reiniging",
        partners=["woonpartners"],
        priority="normal",
        rule_id="afval",
    )
    await apply(notifier, bus_event(late))
    await apply(notifier, bus_event(signal_received("s-1", tracking_code="code-s-1")))
    await apply(
        notifier,
        bus_event(
            change({"id": "s-1", "tracking_code": "code-s-1"}, "case-1", "in_progress", 2, ["woonpartners"])
        ),
    )
    link, rows = await state(notifier, "s-1")
    assert link is not None and link.has_contact is False and link.erased_at == erasure.erased_at
    assert [(row.template, row.status) for row in rows if row.channel == "email"] == [
        ("acknowledgement", "skipped")
    ]
    assert sorted(row.event_type for row in rows if row.channel == "webhook") == [
        STATUS_TYPE,
        SignalRouted.event_type(),
    ]
    await wait_until(lambda: len(receiver.delivered()) == 2, timeout=20, message="the two webhooks")
    assert ERASED_TYPE not in {CloudEvent.from_json(r.body).type for r in receiver.delivered()}


def test_the_migrations_create_exactly_the_models(database_url: str) -> None:
    from civicsignals.common.migrations import pending_changes, service_tables
    from civicsignals.notifier import app  # noqa: F401  (registers every table notifier uses)

    mine = service_tables("notifier")
    assert {"notifier_signal", "notifier_delivery", "outbox", "inbox"} <= set(mine.tables)
    assert pending_changes(database_url, "civicsignals.notifier.migrations", mine) == []
