"""The SMTP pool against a real SMTP server (aiosmtpd on loopback): connections are reused,
retired after their quota, replaced when the server dropped them, and a refusal is not repeated."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from civicsignals.common.bus import TransientError
from civicsignals.devstack.ports import free_port
from civicsignals.notifier.mailer import SmtpPool
from civicsignals.notifier.settings import NotifierSettings


class Relay:
    """Records which client connection (its port) carried each mail; refuses listed recipients."""

    def __init__(self) -> None:
        self.peers: list[int] = []  # one entry per DATA command, accepted or not
        self.accepted: list[str] = []
        self.refuse: set[str] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.append(session.peer[1])
        if set(envelope.rcpt_tos) & self.refuse:
            return "554 5.7.1 refused by policy"
        self.accepted.append(envelope.rcpt_tos[0])
        return "250 OK"


@pytest.fixture
def relay() -> Any:
    handler = Relay()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller
    controller.stop()


def pool_for(controller: Controller, tmp_path: Path, **overrides: Any) -> SmtpPool:
    settings = NotifierSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
        data_dir=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        smtp_timeout_s=5.0,
        **overrides,
    )
    return SmtpPool(settings)


def mail(to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Gemeente <noreply@civicsignals.local>"
    message["To"] = to
    message["Subject"] = "Uw melding"
    message.set_content("Dank voor uw melding.")
    return message


async def test_mails_one_after_another_share_one_connection(relay: Any, tmp_path: Path) -> None:
    handler, controller = relay
    pool = pool_for(controller, tmp_path)
    try:
        for n in range(5):
            await pool.send(mail(f"bewoner{n}@example.org"))
    finally:
        await pool.close()
    assert handler.accepted == [f"bewoner{n}@example.org" for n in range(5)]
    assert len(set(handler.peers)) == 1


async def test_concurrent_mails_use_at_most_the_configured_connections(relay: Any, tmp_path: Path) -> None:
    handler, controller = relay
    pool = pool_for(controller, tmp_path, smtp_connections=2)
    try:
        await asyncio.gather(*(pool.send(mail(f"bewoner{n}@example.org")) for n in range(12)))
    finally:
        await pool.close()
    assert sorted(handler.accepted) == sorted(f"bewoner{n}@example.org" for n in range(12))
    assert 1 <= len(set(handler.peers)) <= 2


async def test_a_connection_is_retired_after_its_quota_of_mails(relay: Any, tmp_path: Path) -> None:
    handler, controller = relay
    pool = pool_for(controller, tmp_path, smtp_messages_per_connection=2)
    try:
        for n in range(5):
            await pool.send(mail(f"bewoner{n}@example.org"))
    finally:
        await pool.close()
    assert len(handler.accepted) == 5
    assert len(set(handler.peers)) == 3  # 2 + 2 + 1


async def test_a_connection_the_server_dropped_is_replaced_without_failing_the_mail(tmp_path: Path) -> None:
    handler = Relay()
    first = Controller(handler, hostname="127.0.0.1", port=free_port())
    first.start()
    pool = pool_for(first, tmp_path)
    second = Controller(handler, hostname="127.0.0.1", port=first.port)
    try:
        await pool.send(mail("eerste@example.org"))
        first.stop()  # the relay restarts: the pooled connection is gone
        second.start()
        await pool.send(mail("tweede@example.org"))
    finally:
        await pool.close()
        second.stop()
    assert handler.accepted == ["eerste@example.org", "tweede@example.org"]
    assert len(set(handler.peers)) == 2


async def test_a_refusal_is_reported_once_and_the_connection_is_not_reused(
    relay: Any, tmp_path: Path
) -> None:
    handler, controller = relay
    handler.refuse.add("geweigerd@example.org")
    pool = pool_for(controller, tmp_path)
    try:
        await pool.send(mail("eerste@example.org"))
        with pytest.raises(TransientError, match="SMTP failed"):
            await pool.send(mail("geweigerd@example.org"))
        await pool.send(mail("derde@example.org"))
    finally:
        await pool.close()
    assert handler.accepted == ["eerste@example.org", "derde@example.org"]
    assert len(handler.peers) == 3  # the refused mail was offered once, not again on a new connection
    assert handler.peers[0] == handler.peers[1] != handler.peers[2]


async def test_an_unreachable_relay_is_a_transient_error(tmp_path: Path) -> None:
    settings = NotifierSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
        data_dir=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=free_port(),  # nothing listens here
        smtp_timeout_s=2.0,
    )
    pool = SmtpPool(settings)
    with pytest.raises(TransientError, match="SMTP failed"):
        await pool.send(mail("bewoner@example.org"))
    await pool.close()
