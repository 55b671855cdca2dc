"""The resident's language when intake could not tell it: the classifier's, carried by
``signal.routed``, sets the language of the acknowledgement and the status mails; the language the
portal gave or intake detected wins over it, whichever of ``signal.received`` and ``signal.routed``
notifier handles first.

Real intake (uvicorn on a loopback port, its sealed contacts read by notifier over HTTP), a real
SMTP server (aiosmtpd) and real NATS. Intake publishes on a NATS server of its own, so that the
test plays intake's ``signal.received`` and routing's ``signal.routed`` on notifier's bus in the
order each test needs; the ``signal.received`` carries the language intake stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    EventData,
    SignalReceived,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.devstack.nats import NatsServer
from civicsignals.notifier.models import SignalLink

from .conftest import served_intake, signal_received
from .test_batches import apply_batch, deliveries

TENANT = "gouda"
SHORT_ENGLISH = "Streetlight out"
"""Too short for intake's guess (no word of its lists, a Dutch pattern in "streetlight" against none
of English's): intake stores no language, and the classifier's may come with ``signal.routed``."""


@dataclass
class Setup:
    intake: httpx.AsyncClient
    intake_key: str
    contact_key: str
    notifier: Any
    mail: Any

    async def post(self, text: str, *, language: str | None = None) -> dict[str, Any]:
        """A signal with an address at intake; returns intake's answer and the language it stored
        (as notifier reads it with the contact)."""
        body: dict[str, Any] = {
            "text": text,
            "channel": "web",
            "reporter": {"name": "Ann Smith", "email": "ann@example.org", "consent": True},
        }
        if language is not None:
            body["language"] = language
        headers = {"Authorization": f"Bearer {self.intake_key}"}
        response = await self.intake.post("/v1/signals", json=body, headers=headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        contact = await self.intake.get(
            f"/v1/signals/{created['id']}/contact", headers={"Authorization": f"Bearer {self.contact_key}"}
        )
        assert contact.status_code == 200, contact.text
        created["stored_language"] = contact.json().get("language")
        return created

    async def publish(self, service: str, data: EventData) -> None:
        event = make_event(tenant=TENANT, service=service, data=data)
        await self.notifier.runtime.bus.publish(data.bus_subject(TENANT), event)

    async def received(self, created: dict[str, Any]) -> None:
        """Intake's ``signal.received``, with the language intake stored."""
        await self.publish(
            "intake",
            SignalReceived(
                signal_id=created["id"],
                tracking_code=created["tracking_code"],
                kind="report",
                channel="web",
                text=SHORT_ENGLISH,
                language=created["stored_language"],
                received_at=utcnow(),
                has_contact=True,
                source="portal",
            ),
        )

    async def routed(self, created: dict[str, Any], classified_language: str | None) -> None:
        """Routing's ``signal.routed``, with the language the classifier detected."""
        await self.publish(
            "routing",
            SignalRouted(
                signal_id=created["id"],
                case_id=f"case-{created['id']}",
                tracking_code=created["tracking_code"],
                responsible="openbare-ruimte",
                priority="normal",
                rule_id="verlichting",
                due_at="2026-12-07T09:14:03Z",
                service_promise="We repair it within 5 working days.",
                language=classified_language,
            ),
        )

    async def acknowledgement_scheduled(self, created: dict[str, Any]) -> bool:
        """Whether notifier has handled the ``signal.received`` (its acknowledgement waits)."""
        rows = await self.notifier.deliveries(signal=created["id"], channel="email")
        return [(r["template"], r["status"]) for r in rows] == [("acknowledgement", "scheduled")]


@pytest.fixture
async def setup(make_tenant: Any, tmp_path: Path, notifier_factory: Any, mail: Any) -> AsyncIterator[Setup]:
    tenant = make_tenant(TENANT, name="Gouda")
    # intake on a NATS server of its own, so that the test decides the order of notifier's events
    intake_bus = NatsServer(
        tmp_path / "intake-nats" / "store", log_file=tmp_path / "intake-nats" / "nats.log"
    )
    intake_bus.start()
    try:
        async with served_intake(tenant, intake_bus.url, tmp_path) as (intake_url, keys_dir, contact_key):
            notifier = await notifier_factory(
                tenant,
                intake_url=intake_url,
                intake_keys_dir=keys_dir,
                smtp_port=mail.port,
                coalesce_window_s=0.5,
            )
            # httpx's 5 s default was once too short for intake's first POST on PostgreSQL, on a
            # slow machine running two suites at once; the test is about languages, not speed.
            async with httpx.AsyncClient(base_url=intake_url, timeout=30) as client:
                yield Setup(client, tenant.key, contact_key, notifier, mail)
    finally:
        intake_bus.stop()


def batch_event(data: EventData) -> CloudEvent:
    return make_event(tenant=TENANT, service="tests", data=data)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


async def test_a_short_english_text_gets_its_acknowledgement_and_status_mail_in_the_classifiers_language(
    setup: Setup, wait_until: Any
) -> None:
    created = await setup.post(SHORT_ENGLISH)
    assert created["stored_language"] is None  # intake could not tell
    await setup.received(created)
    await wait_until(lambda: setup.acknowledgement_scheduled(created), timeout=20, message="signal.received")
    await setup.routed(created, "en")

    code = created["tracking_code"]
    ack = await setup.mail.wait_for_async(lambda m: code in str(m["Subject"]), timeout=30)
    assert str(ack["Subject"]) == f"We received your report ({code})"
    text = text_of(ack)
    assert "Thank you for your report" in text and "Dank u wel" not in text
    assert "Our promise: We repair it within 5 working days." in text and "7 December 2026" in text

    # A later status mail reads the language notifier keeps for the signal: English too.
    await setup.publish(
        "routing",
        CaseStatusChanged(
            case_id=f"case-{created['id']}",
            signal_id=created["id"],
            tracking_code=code,
            to="in_progress",
            public_note="We will come on Tuesday.",
            actor="department:openbare-ruimte",
            sequence=2,
            **{"from": "assigned"},
        ),
    )
    status = await setup.mail.wait_for_async(lambda m: "in progress" in str(m["Subject"]), timeout=30)
    assert str(status["Subject"]) == f"Your report {code} is in progress"
    assert "There is news about your report" in text_of(status)
    assert len(setup.mail.messages()) == 2


async def test_the_language_the_portal_gave_wins_over_the_classifiers(setup: Setup, wait_until: Any) -> None:
    created = await setup.post("Lantaarnpaal kapot", language="nl")
    assert created["stored_language"] == "nl"
    await setup.received(created)
    await wait_until(lambda: setup.acknowledgement_scheduled(created), timeout=20, message="signal.received")
    await setup.routed(created, "en")

    code = created["tracking_code"]
    ack = await setup.mail.wait_for_async(lambda m: code in str(m["Subject"]), timeout=30)
    assert str(ack["Subject"]) == f"Uw melding is ontvangen ({code})"
    assert "Dank u wel voor uw melding" in text_of(ack)


@pytest.mark.parametrize(
    ("portal_language", "subject", "wording"),
    [
        (None, "We received your report ({code})", "Thank you for your report"),
        ("nl", "Uw melding is ontvangen ({code})", "Dank u wel voor uw melding"),
    ],
    ids=["intake-had-none", "portal-gave-nl"],
)
async def test_signal_routed_before_signal_received(
    setup: Setup, wait_until: Any, portal_language: str | None, subject: str, wording: str
) -> None:
    """``signal.routed`` first makes the acknowledgement due at once, before notifier has seen the
    ``signal.received``: the classifier's language serves only when intake has none."""
    created = await setup.post(SHORT_ENGLISH, language=portal_language)
    assert created["stored_language"] == portal_language
    await setup.routed(created, "en")

    code = created["tracking_code"]
    ack = await setup.mail.wait_for_async(lambda m: code in str(m["Subject"]), timeout=30)
    assert str(ack["Subject"]) == subject.format(code=code)
    assert wording in text_of(ack)

    # The late signal.received changes nothing of it and adds no second acknowledgement.
    await setup.received(created)

    async def handled() -> bool:
        async with setup.notifier.runtime.sessions() as session:
            link = await session.get(SignalLink, created["id"])
        return link is not None and link.has_contact is True

    async def recorded() -> bool:
        rows = await setup.notifier.deliveries(signal=created["id"], channel="email")
        return [(r["template"], r["status"]) for r in rows] == [("acknowledgement", "delivered")]

    await wait_until(handled, timeout=20, message="the late signal.received")
    await wait_until(recorded, timeout=20, message="one acknowledgement, delivered")
    assert len(setup.mail.messages()) == 1


# -- the applies, batch by batch --------------------------------------------------------------------

ORDERS = {
    "received-then-routed": [["received"], ["routed"]],
    "routed-then-received": [["routed"], ["received"]],
    "one-batch-received-first": [["received", "routed"]],
    "one-batch-routed-first": [["routed", "received"]],
}


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize(("intake_language", "expected"), [(None, "en"), ("nl", "nl")], ids=["none", "nl"])
async def test_the_signals_language_is_the_same_in_every_order_of_received_and_routed(
    make_tenant: Any, notifier_factory: Any, order: str, intake_language: str | None, expected: str
) -> None:
    """The applies called directly, in batches as a consumer commits them (see test_batches): the
    link keeps intake's language, else the classifier's, whichever event comes first or whether
    both share a transaction; so does the acknowledgement while it waits."""
    tenant = make_tenant(TENANT, name="Gouda")
    notifier = await notifier_factory(tenant, acknowledgement_wait_s=3600.0)
    signal_id = f"s-{order}-{intake_language}"
    events = {
        "received": batch_event(
            signal_received(signal_id, tracking_code=f"code-{signal_id}").model_copy(
                update={"language": intake_language}
            )
        ),
        "routed": batch_event(
            SignalRouted(
                signal_id=signal_id,
                case_id=f"case-{signal_id}",
                tracking_code=f"code-{signal_id}",
                responsible="openbare-ruimte",
                priority="normal",
                rule_id="verlichting",
                language="en",
            )
        ),
    }
    for batch in ORDERS[order]:
        await apply_batch(notifier, [events[name] for name in batch])

    async with notifier.runtime.sessions() as session:
        link = await session.get(SignalLink, signal_id)
    assert link is not None and link.language == expected
    [ack] = await deliveries(notifier, signal_id)
    if order != "routed-then-received":
        # (There signal.routed made it due at once: the dispatcher may have claimed it before
        # signal.received came, and then intake's language is read with the contact.)
        assert json.loads(ack.payload)["language"] == expected
