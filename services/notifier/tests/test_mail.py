"""Resident e-mail: the real intake (its API, sealed contacts and service-key check) served by
uvicorn on a loopback port, a real NATS, a real SMTP server (aiosmtpd) and notifier, which reads
contacts from intake over HTTP as in production. Routing's events are published by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from civicsignals.common.events import CaseStatusChanged, SignalRouted
from civicsignals.devstack.nats import NatsServer

from .conftest import served_intake

TENANT = "gouda"
BASE = "https://gemeente.example"


class Intake:
    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.key = key

    async def post(self, *, language: str, email: str, consent: bool = True) -> dict[str, Any]:
        text = (
            "Er ligt al drie dagen afval naast de container op de Kerkstraat."
            if language == "nl"
            else "There has been rubbish next to the container on Church Street for three days."
        )
        body = {
            "text": text,
            "channel": "web",
            "language": language,
            "reporter": {"name": "Anna de Vries", "email": email, "consent": consent},
        }
        response = await self.client.post(
            "/v1/signals", json=body, headers={"Authorization": f"Bearer {self.key}"}
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


@pytest.fixture
async def setup(
    make_tenant, nats_server: NatsServer, tmp_path: Path, notifier_factory, mail
) -> AsyncIterator[tuple[Intake, Any, Any]]:
    tenant = make_tenant(TENANT, name="Gouda")
    async with (
        served_intake(tenant, nats_server.url, tmp_path) as (intake_url, keys_dir, _),
        httpx.AsyncClient(base_url=intake_url, timeout=30) as client,
    ):

        async def start_notifier(**overrides: Any) -> Any:
            return await notifier_factory(
                tenant,
                intake_url=intake_url,
                intake_keys_dir=keys_dir,
                smtp_port=mail.port,
                **overrides,
            )

        yield Intake(client, tenant.key), start_notifier, mail


def routed(created: dict[str, Any], case_id: str) -> SignalRouted:
    return SignalRouted(
        signal_id=created["id"],
        case_id=case_id,
        tracking_code=created["tracking_code"],
        responsible="afval-en-reiniging",
        priority="normal",
        rule_id="afval",
        due_at="2026-12-07T09:14:03Z",
        service_promise="We halen het binnen 5 werkdagen weg.",
    )


def change(
    created: dict[str, Any], case_id: str, to: str, sequence: int, note: str | None = None
) -> CaseStatusChanged:
    return CaseStatusChanged(
        case_id=case_id,
        signal_id=created["id"],
        tracking_code=created["tracking_code"],
        to=to,
        public_note=note,
        actor="department",
        sequence=sequence,
        **{"from": "assigned"},
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None, "a multipart/alternative message"
    return text.get_content(), html.get_content()


async def test_acknowledgements_in_the_residents_language_and_none_without_consent(setup, wait_until) -> None:
    intake, start_notifier, mail = setup
    notifier = await start_notifier()
    dutch = await intake.post(language="nl", email="anna@example.org")
    english = await intake.post(language="en", email="ann@example.org")
    silent = await intake.post(language="nl", email="stil@example.org", consent=False)
    for created in (silent, dutch, english):
        await notifier.publish(TENANT, routed(created, f"case-{created['id']}"))

    nl_mail = await mail.wait_for_async(lambda m: dutch["tracking_code"] in str(m["Subject"]), timeout=30)
    assert nl_mail["To"] == "anna@example.org" and nl_mail.is_multipart()
    text, html = parts(nl_mail)
    assert "Dank u wel" in text and "Onze belofte: We halen het binnen 5 werkdagen weg." in text
    assert f"{BASE}/v1/tracking/{dutch['tracking_code']}" in text and "7 december 2026" in text
    assert f'href="{BASE}/v1/tracking/{dutch["tracking_code"]}"' in html
    assert str(nl_mail["Message-ID"]).startswith("<msg_")

    en_mail = await mail.wait_for_async(lambda m: english["tracking_code"] in str(m["Subject"]), timeout=30)
    text, html = parts(en_mail)
    assert en_mail["To"] == "ann@example.org" and "Thank you for your report" in text
    assert f"{BASE}/v1/tracking/{english['tracking_code']}" in text and 'lang="en"' in html

    async def decided() -> bool:
        [row] = await notifier.deliveries(signal=silent["id"])
        return row["status"] == "skipped" and row["status_reason"] == "no_consent"

    await wait_until(decided, timeout=20, message="the no-consent acknowledgement to be skipped")
    assert sorted(str(m["To"]) for m in mail.messages()) == ["ann@example.org", "anna@example.org"]
    # Notifier's database holds no address.
    log = await notifier.client.get("/v1/deliveries", params={"channel": "email"})
    assert "example.org" not in log.text


async def test_rapid_changes_become_one_mail_resolution_asks_satisfaction_and_reopening_follows(
    setup, wait_until
) -> None:
    intake, start_notifier, mail = setup
    notifier = await start_notifier(coalesce_window_s=1.5)
    created = await intake.post(language="nl", email="anna@example.org")
    code, case = created["tracking_code"], "case-1"
    await notifier.publish(TENANT, routed(created, case))
    await mail.wait_for_async(lambda m: "ontvangen" in str(m["Subject"]), timeout=30)

    await notifier.publish(TENANT, change(created, case, "in_progress", 2, "We komen dinsdag."))
    await notifier.publish(TENANT, change(created, case, "resolved", 3, "De container is geleegd."))
    resolved = await mail.wait_for_async(lambda m: "opgelost" in str(m["Subject"]), timeout=30)
    text, html = parts(resolved)
    assert "De container is geleegd." in text and "We komen dinsdag." not in text
    for score in range(1, 6):
        assert f"{BASE}/v1/tracking/{code}/feedback?score={score}" in text
        assert f'href="{BASE}/v1/tracking/{code}/feedback?score={score}"' in html
    # The tenant's reopening window (the default 30 days here), as intake enforces it.
    assert "binnen 30 dagen heropenen" in text and "binnen 30 dagen op die pagina heropenen" in html

    await notifier.publish(TENANT, change(created, case, "reopened", 4, "We kijken er opnieuw naar."))
    reopened = await mail.wait_for_async(lambda m: "heropend" in str(m["Subject"]), timeout=30)
    assert "We kijken er opnieuw naar." in parts(reopened)[0]
    # One acknowledgement, one mail for the two rapid changes, one for the reopening.
    subjects = [str(m["Subject"]) for m in mail.messages()]
    assert len(subjects) == 3 and not any("in behandeling" in s for s in subjects), subjects
    log = await notifier.deliveries(signal=created["id"], channel="email")
    assert sorted(d["template"] for d in log) == ["acknowledgement", "reopening", "resolution"]


async def test_a_waiting_status_mail_survives_a_restart(setup, wait_until) -> None:
    intake, start_notifier, mail = setup
    notifier = await start_notifier(coalesce_window_s=2.0)
    created = await intake.post(language="en", email="ann@example.org")
    await notifier.publish(TENANT, routed(created, "case-2"))
    await mail.wait_for_async(lambda m: "received" in str(m["Subject"]), timeout=30)
    await notifier.publish(TENANT, change(created, "case-2", "waiting_on_resident", 2, "Which container?"))

    async def waiting() -> bool:
        log = await notifier.deliveries(signal=created["id"], status="scheduled")
        return bool(log)

    await wait_until(waiting, timeout=20, message="the status mail to be scheduled")
    await notifier.stop()  # within the coalescing window: nothing has been sent
    assert not any("waiting" in str(m["Subject"]) for m in mail.messages())
    await start_notifier(coalesce_window_s=2.0)
    message = await mail.wait_for_async(lambda m: "waiting for your reply" in str(m["Subject"]), timeout=30)
    assert "Which container?" in parts(message)[0]
