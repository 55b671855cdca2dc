"""Outgoing mail over a few SMTP connections that stay open.

A connection per mail costs a TCP handshake, the greeting, EHLO, STARTTLS and login before the
first byte of the message: several round trips, and with TLS most of the CPU. A relay takes many
messages on one connection (one MAIL/RCPT/DATA transaction after another), so the pool keeps up
to ``smtp_connections`` of them and sends at most that many mails at once, which is also what a
relay's per-client connection limit expects. A connection is retired after
``smtp_messages_per_connection`` mails or ``smtp_idle_s`` unused; a relay may still have dropped
an idle one, so a mail that fails on a reused connection goes once more on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from email.message import Message

import aiosmtplib

from civicsignals.common.bus import TransientError
from civicsignals.notifier.messages import OutgoingMail
from civicsignals.notifier.settings import NotifierSettings

log = logging.getLogger(__name__)

SMTP_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError)


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    last_used: float
    sent: int = 0


class SmtpPool:
    """Sends mails over at most ``smtp_connections`` open SMTP connections."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(settings.smtp_connections)
        self._closed = False

    async def send(self, mail: Message | OutgoingMail) -> None:
        """Hand one mail to the relay; :class:`TransientError` when it could not take it.

        An :class:`OutgoingMail` goes as its bytes to its envelope's addresses; a ``Message`` is
        flattened, and its addresses read from its headers, by aiosmtplib.

        The wait for a free connection is bounded like the send itself, so an attempt never
        outlives its lease (``NotifierSettings.lease_s``) queued behind a relay that hangs.
        """
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.settings.smtp_timeout_s)
        except TimeoutError:
            raise TransientError("SMTP failed: every connection stayed busy") from None
        try:
            await self._send_with_retry(mail)
        finally:
            self._slots.release()

    async def _send_with_retry(self, mail: Message | OutgoingMail) -> None:
        connection = self._take_idle()
        if connection is not None:
            try:
                await self._send_on(connection, mail)
                return
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                # Most often the relay closed a connection that sat idle; once more on a new one.
                # (A refusal the relay answered is not retried here: it goes by the schedule.)
                log.info("SMTP connection reused after %d mails was lost (%s)", connection.sent, exc)
            except SMTP_FAILURES as exc:
                raise TransientError(f"SMTP failed: {type(exc).__name__}") from exc
        try:
            connection = await self._open()
            await self._send_on(connection, mail)
        except SMTP_FAILURES as exc:
            raise TransientError(f"SMTP failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        """Say goodbye on every idle connection (on shutdown)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._retire(connection)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            idle_for = time.monotonic() - connection.last_used
            if connection.smtp.is_connected and idle_for < self.settings.smtp_idle_s:
                return connection
            connection.smtp.close()
        return None

    async def _open(self) -> _Connection:
        settings = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            start_tls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_s,
        )
        await smtp.connect()
        return _Connection(smtp, time.monotonic())

    async def _send_on(self, connection: _Connection, mail: Message | OutgoingMail) -> None:
        """Send on this connection, then keep it for the next mail or retire it."""
        try:
            if isinstance(mail, OutgoingMail):
                options = ["SMTPUTF8"] if mail.utf8 else []
                await connection.smtp.sendmail(mail.sender, mail.recipients, mail.data, mail_options=options)
            else:
                await connection.smtp.send_message(mail)
        except BaseException:
            connection.smtp.close()  # its state is unknown: never reuse it
            raise
        connection.sent += 1
        connection.last_used = time.monotonic()
        if self._closed or connection.sent >= self.settings.smtp_messages_per_connection:
            await self._retire(connection)
        else:
            self._idle.append(connection)

    @staticmethod
    async def _retire(connection: _Connection) -> None:
        with contextlib.suppress(*SMTP_FAILURES):
            await connection.smtp.quit()
        connection.smtp.close()
