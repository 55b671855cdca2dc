"""Notifier's plain functions: fetch a reporter's contact from intake, send mail over SMTP."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from civicsignals.common.bus import PermanentError, TransientError
from civicsignals.notifier.settings import NotifierSettings


@dataclass(frozen=True)
class Contact:
    name: str | None
    email: str | None
    consent: bool
    language: str | None


class IntakeContacts:
    """Reads contacts through intake's internal endpoint; the address is used, never stored."""

    def __init__(self, base_url: str, keys_dir: Path, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys_dir = keys_dir
        self.client = client

    def _key(self, tenant: str) -> str:
        path = self.keys_dir / tenant
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise PermanentError(f"no intake service key for tenant {tenant!r} in {self.keys_dir}") from None

    async def fetch(self, tenant: str, signal_id: str) -> Contact | None:
        try:
            response = await self.client.get(
                f"{self.base_url}/v1/signals/{signal_id}/contact",
                headers={"Authorization": f"Bearer {self._key(tenant)}"},
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"intake unreachable: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise PermanentError(
                f"intake refused notifier's key for tenant {tenant!r}: {response.status_code}"
            )
        if response.status_code != 200:
            raise TransientError(f"intake answered {response.status_code}")
        body: dict[str, Any] = response.json()
        return Contact(
            name=body.get("name"),
            email=body.get("email"),
            consent=bool(body.get("consent")),
            language=body.get("language"),
        )


async def send_mail(settings: NotifierSettings, mail: EmailMessage) -> None:
    try:
        await aiosmtplib.send(
            mail,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            start_tls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_s,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise TransientError(f"SMTP failed: {type(exc).__name__}") from exc
