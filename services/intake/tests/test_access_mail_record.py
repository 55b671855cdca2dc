"""The e-mails sent about a person's signals in the access document (AVG article 15): intake asks
notifier for each signal's e-mail deliveries, over HTTP with its service key, and refuses to
answer without them when notifier cannot be asked (unless the command is told to, which the
document then says).

Everything is real and on real ports: intake (its API also served by uvicorn, so that notifier
reads the reporter's contact from it as in production), notifier with a real SMTP server (the dev
stack's aiosmtpd mail catcher) that it really sends the mails to, and routing for the case whose
status change makes the second mail; one NATS server and one tenants folder for all of them. The
mails in the document are the ones notifier sent and the mail server received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from civicsignals.common.tenants import add_key
from civicsignals.devstack.mailcatcher import MailCatcher
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import listen_port
from civicsignals.intake import mailrecord
from civicsignals.notifier.app import create_app as create_notifier_app
from civicsignals.notifier.settings import NotifierSettings

from . import test_access_case_notes as case_notes
from .conftest import SIGNAL, Intake
from .test_access_case_notes import (
    JAN,
    Routing,
    _main,
    _officer,
    _reads,
    _routed,
    _serve,
    _signal,
    _start,
    _stop,
    assert_part_unavailable,
    intake_routing_key,
    refused_command,
    refused_document,
)
from .test_privacy_and_import import _env

#: The real routing service and its port, as the case notes' tests run it (fixtures).
routing = case_notes.routing
routing_port = case_notes.routing_port

TENANT = "gouda"
MAIL_FIELDS = {"created_at", "template", "status", "delivered_at", "attempts"}
FINAL = ("delivered", "failed", "skipped")


@pytest.fixture
def notifier_port() -> int:
    """Below the range of outgoing connections' source ports: none can take it before notifier binds."""
    return listen_port()


@pytest.fixture
def intake_settings_overrides(routing_port: int, notifier_port: int) -> dict[str, Any]:
    """Intake asks routing and notifier at these ports: the real services below, or nothing."""
    return {
        "routing_url": f"http://127.0.0.1:{routing_port}",
        "notifier_url": f"http://127.0.0.1:{notifier_port}",
    }


@pytest.fixture
async def intake_url(intake: Intake) -> AsyncIterator[str]:
    """The ``intake`` fixture's app on a real port as well (its lifespan stays that fixture's):
    notifier reads the reporters' contacts there."""
    port = listen_port()
    server = uvicorn.Server(
        uvicorn.Config(intake.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = await _start(server)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(server, task)


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[MailCatcher]:
    catcher = MailCatcher(tmp_path / "mail").start()
    try:
        yield catcher
    finally:
        catcher.stop()


@dataclass
class Notifier:
    app: Any
    url: str
    admin: dict[str, str]

    async def log(self, signal_id: str) -> list[dict[str, Any]]:
        """The signal's e-mail deliveries as notifier's admin sees them (newest first)."""
        async with httpx.AsyncClient(base_url=self.url, headers=self.admin) as client:
            answer = await client.get(
                "/v1/deliveries", params={"signal": signal_id, "channel": "email", "limit": 200}
            )
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


@pytest.fixture
async def notifier(
    intake: Intake,
    intake_url: str,
    nats_server: NatsServer,
    notifier_port: int,
    mail: MailCatcher,
    tmp_path: Path,
) -> AsyncIterator[Notifier]:
    """The real notifier over a real port, on intake's tenants folder and NATS server (its own
    SQLite database), reading contacts from intake with its own ``contact:read`` key and sending
    to the mail catcher; acknowledgements go out at once, status mails after 0.3 s."""
    _, contact_key = add_key(intake.gouda.folder, ["contact:read"], description="notifier reads contacts")
    keys_dir = tmp_path / "notifier-keys"
    keys_dir.mkdir()
    (keys_dir / TENANT).write_text(contact_key, encoding="utf-8")
    _, admin_key = add_key(intake.gouda.folder, ["rules:admin"], description="the test reads the log")
    settings = NotifierSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'notifier.db'}",
        nats_url=nats_server.url,
        tenants_dir=intake.settings.tenants_dir,
        data_dir=tmp_path / "notifier-data",
        intake_url=intake_url,
        intake_keys_dir=keys_dir,
        smtp_port=mail.port,
        acknowledgement_wait_s=0,
        coalesce_window_s=0.3,
        scheduler_poll_interval_s=0.1,
        outbox_poll_interval_s=0.1,
        retry_schedule_s=[0.2, 0.2],
        public_base_url="https://gemeente.example",
    )
    app = create_notifier_app(settings)
    server, task = await _serve(app, notifier_port)
    try:
        await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
        yield Notifier(app, f"http://127.0.0.1:{notifier_port}", {"Authorization": f"Bearer {admin_key}"})
    finally:
        # Close NATS before the shutdown drains it: a drain waits for cancelled pull fetches.
        connection = getattr(app.state.runtime.bus, "_nc", None)
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()
        await _stop(server, task)


async def _settled(notifier: Notifier, signal_id: str, wait_until: Any, count: int) -> list[dict[str, Any]]:
    """The signal's ``count`` (or more) mails once none is still on its way (newest first)."""

    async def _done() -> list[dict[str, Any]] | None:
        rows = await notifier.log(signal_id)
        return rows if len(rows) >= count and all(row["status"] in FINAL for row in rows) else None

    rows: list[dict[str, Any]] = await wait_until(_done, timeout=30, message=f"{count} mail(s) settled")
    return rows


def _text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    return "" if body is None else str(body.get_content())


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _as_notifier_logged(mails: list[dict[str, Any]], log: list[dict[str, Any]]) -> None:
    """The document's mails are notifier's log of the signal, oldest first, field by field (times
    compared as times: the document writes them with ``Z``)."""
    assert all(set(entry) == MAIL_FIELDS for entry in mails), mails
    oldest_first = list(reversed(log))
    assert [(m["template"], m["status"], m["attempts"]) for m in mails] == [
        (row["template"], row["status"], row["attempts"]) for row in oldest_first
    ]
    assert [(_when(m["created_at"]), _when(m["delivered_at"])) for m in mails] == [
        (_when(row["created_at"]), _when(row["delivered_at"])) for row in oldest_first
    ]
    assert all(m["created_at"].endswith("Z") for m in mails)


async def test_the_document_lists_the_mails_notifier_sent_about_each_signal(
    intake: Intake,
    routing: Routing,
    notifier: Notifier,
    mail: MailCatcher,
    wait_until: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Jan's signal: the acknowledgement, then a status mail once routing's case moves on
    reported = await _signal(intake)
    await mail.wait_for_async(lambda m: reported["tracking_code"] in str(m["Subject"]), timeout=30)
    case_id = await _routed(intake, routing, reported, wait_until)
    async with httpx.AsyncClient(base_url=routing.url, headers=intake.auth()) as staff:
        moved = await staff.post(
            f"/v1/cases/{case_id}/transitions", json={"to": "in_progress", "public_note": "De ploeg komt."}
        )
        assert moved.status_code == 200, moved.text
    await mail.wait_for_async(lambda m: "De ploeg komt." in _text(m), timeout=30)
    # and a second signal of Jan's without consent: notifier skipped its acknowledgement
    text = "Losse stoeptegel bij de Kerkstraat."
    silent = await intake.post_signal({**SIGNAL, "text": text, "reporter": {**JAN, "consent": False}})
    assert silent.status_code == 201, silent.text
    silent_id = silent.json()["id"]
    reported_log = await _settled(notifier, reported["id"], wait_until, 2)
    silent_log = await _settled(notifier, silent_id, wait_until, 1)
    key_id, officer = await _officer(intake)
    monkeypatch.setattr(mailrecord, "PAGE_SIZE", 1)  # every mail a page of its own: the cursor is followed

    answer = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )

    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["mails_included"] is True and document["case_notes_included"] is True
    first, second = document["signals"]
    assert (first["signal_id"], second["signal_id"]) == (reported["id"], silent_id)
    _as_notifier_logged(first["mails"], reported_log)
    _as_notifier_logged(second["mails"], silent_log)
    assert first["mails"][0]["template"] == "acknowledgement"
    assert "status_update" in [entry["template"] for entry in first["mails"]]
    assert [entry["status"] for entry in first["mails"]] == ["delivered"] * len(first["mails"])
    assert all(entry["delivered_at"] and entry["attempts"] >= 1 for entry in first["mails"])
    assert second["mails"] == [
        {**second["mails"][0], "template": "acknowledgement", "status": "skipped", "delivered_at": None}
    ]
    # the mails the document calls delivered are the ones the mail server received, all to Jan
    received = mail.messages()
    assert len(received) == len(first["mails"]) and {str(m["To"]) for m in received} == {JAN["email"]}
    for language in ("nl", "en"):
        explained = document["explanation"][language]
        assert "mails" in explained and "mails_missing" not in explained
        assert "notifier" in explained["mails"] and "acknowledgement" in explained["mails"]
    assert "e-mailadres staat er niet bij" in document["explanation"]["nl"]["mails"]
    assert "address is not in it" in document["explanation"]["en"]["mails"]
    assert sorted((r.actor, r.object) for r in await _reads(intake)) == sorted(
        (f"key:{key_id}", f"signal:{signal_id}") for signal_id in (reported["id"], silent_id)
    )

    # the command writes the same mails
    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", routing.url)
    monkeypatch.setenv("CIVIC_INTAKE_NOTIFIER_URL", notifier.url)
    out = tmp_path / "inzage.json"
    assert await _main(["access", "--tenant", TENANT, "--email", "jan@example.org", "--out", str(out)]) == 0
    assert "without" not in capsys.readouterr().err
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["mails_included"] is True
    assert [part["mails"] for part in written["signals"]] == [first["mails"], second["mails"]]


async def test_without_notifier_the_api_answers_503_and_the_command_writes_nothing_unless_told(
    intake: Intake,
    notifier_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens at notifier's port: the mails cannot be asked for. (The signal has no case:
    routing is not asked, so the failure is notifier's alone.)"""
    intake_routing_key(intake)
    signal = await _signal(intake)
    _, officer = await _officer(intake)

    await refused_document(intake, officer, "mail-record-unavailable", "notifier")

    _env(monkeypatch, intake)
    notifier_url = f"http://127.0.0.1:{notifier_port}"
    monkeypatch.setenv("CIVIC_INTAKE_NOTIFIER_URL", notifier_url)
    out = tmp_path / "inzage.json"
    jan = ["access", "--tenant", TENANT, "--email", "jan@example.org", "--out", str(out)]
    line = await refused_command(jan, capsys)
    assert line.startswith(
        f"cannot add the mail record: notifier at {notifier_url}/v1/deliveries?signal={signal['id']}&channel=email"
    )
    assert "CIVIC_INTAKE_NOTIFIER_URL" in line and "--without-mail-record" in line
    assert not out.exists() and await _reads(intake) == []

    assert await _main([*jan, "--without-mail-record"]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"wrote 1 signal(s) of this person to {out}\n"
    assert printed.err == "without the mail record of notifier: add it before the document goes out\n"
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["mails_included"] is False and document["case_notes_included"] is True
    assert document["signals"][0]["mails"] is None and document["signals"][0]["case_notes"] == []
    for language in ("nl", "en"):
        assert "mails_included" in document["explanation"][language]["mails_missing"]
        assert "case_notes_missing" not in document["explanation"][language]
    assert [r.actor for r in await _reads(intake)] == ["cli:access"]


async def test_no_service_key_or_one_notifier_refuses_is_a_503_too(
    intake: Intake,
    notifier: Notifier,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _signal(intake)
    _, officer = await _officer(intake)
    refusals = []

    # no key at all; then a key without cases:read; then one bound to a department (notifier would
    # show it only its departments' signals: intake refuses to use it, or the document would look
    # complete without the other mails)
    refusals.append(
        await intake.client.post("/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer)
    )
    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_NOTIFIER_URL", notifier.url)
    out = tmp_path / "inzage.json"
    line = await refused_command(
        ["access", "--tenant", TENANT, "--email", "jan@example.org", "--out", str(out)], capsys
    )
    assert f"notifier at {notifier.url}: intake has no service key for notifier" in line
    assert "cases:read" in line and not out.exists()
    key_file = intake.settings.service_keys_dir / TENANT
    key_file.parent.mkdir(parents=True, exist_ok=True)
    for scopes, departments in ((["cases:write"], None), (["cases:read", "cases:write"], ["stadsbeheer"])):
        _, key = add_key(intake.gouda.folder, scopes, departments=departments, description="intake")
        key_file.write_text(key + "\n", encoding="utf-8")
        refusals.append(
            await intake.client.post("/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer)
        )

    for response in refusals:
        assert_part_unavailable(response, "mail-record-unavailable", "notifier")
    # The answer says only that notifier could not be asked; the log says why, for the operator.
    assert "bound to departments (stadsbeheer)" in caplog.text
    assert await _reads(intake) == []


def test_a_delivery_reads_as_the_resident_understands_it() -> None:
    """Notifier's bookkeeping (ids, the event, the error text) stays out; times get their ``Z``."""
    delivery = {
        "id": "01KBK7Q2M4N6P8R0S2T4V6W8X0", "message_id": "msg_q3k7j2b9x4w1", "channel": "email",
        "template": "status_update", "event_id": "01KBH6Y3C9D1E3F5G7H9J1K3M5",
        "event_type": "nl.civicsignals.case.status_changed.v1", "signal_id": "s-1", "case_id": "c-1",
        "partner": None, "partner_id": None, "endpoint_id": None, "status": "delivered",
        "status_reason": None, "attempts": 2, "next_attempt_at": None, "last_status_code": None,
        "last_error": "SMTP failed: SMTPServerDisconnected", "created_at": "2026-11-28T10:00:02+00:00",
        "delivered_at": "2026-11-28T11:01:03.250000+01:00",
    }  # fmt: skip

    assert mailrecord.mail_of_delivery(delivery) == {
        "created_at": "2026-11-28T10:00:02Z",
        "template": "status_update",
        "status": "delivered",
        "delivered_at": "2026-11-28T10:01:03.250000Z",
        "attempts": 2,
    }
