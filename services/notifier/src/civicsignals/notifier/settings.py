"""Notifier's settings (environment prefix ``CIVIC_NOTIFIER_``).

Every setting has the embedded run's default; the comments say what production changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings

DEFAULT_RETRY_SCHEDULE_S = [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0, 86400.0]
"""Delays after attempt 1, 2, …: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h, 12 h, 24 h.

Eleven attempts over about 1 day and 22.7 hours; the last one more than a day after the first."""


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_NOTIFIER_", extra="ignore")
    service_name: ClassVar[str] = "notifier"

    port: int = 8004

    # --- resident e-mail -----------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    smtp_connections: int = Field(
        default=8, ge=1, description="SMTP connections kept open, and so mails handed over at once"
    )
    smtp_messages_per_connection: int = Field(
        default=100, ge=1, description="mails sent on one connection before it is closed and a new one opened"
    )
    smtp_idle_s: float = Field(
        default=30.0, gt=0, description="an SMTP connection unused this long is closed, not reused"
    )
    mail_from: str = Field(
        default="Gemeente <noreply@civicsignals.local>",
        description="the sender's address for a tenant without mail.from in tenant.yaml, whose name "
        "is then the display name; used as it is only for mail of a tenant notifier does not know",
    )
    mail_domain: str = Field(default="civicsignals.local", description="right-hand side of Message-IDs")
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="base of tracking and feedback links in mail"
    )
    intake_url: str = "http://127.0.0.1:8001"
    intake_keys_dir: Path = Field(
        default=Path(""),
        description="one file per tenant with notifier's key for intake; empty: <data_dir>/...",
    )
    dkim_keys_dir: Path = Field(
        default=Path(""),
        description="DKIM private keys, <tenant>/<selector>.pem, for tenants whose tenant.yaml names "
        "mail.dkim.selector (a secret: mount it); empty: <data_dir>/dkim",
    )
    acknowledgement_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long the acknowledgement waits for signal.routed (and its service promise) "
        "after signal.received before it goes without one",
    )
    coalesce_window_s: float = Field(
        default=60.0,
        ge=0,
        description="status changes of one case within this window after the first become one mail",
    )

    # --- partner webhooks ----------------------------------------------------------------------
    allow_private_endpoints: bool = Field(
        default=False,
        description="accept webhook endpoints on loopback, private and link-local addresses "
        "(the embedded run and the tests; never in production)",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="time-out of one webhook attempt")
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        description="delay after each failed attempt, as a JSON list of seconds; one attempt more "
        "than there are delays",
    )
    retry_after_max_s: float = Field(default=86400.0, gt=0, description="cap on a receiver's Retry-After")
    endpoint_disable_after_s: float = Field(
        default=3 * 86400.0,
        gt=0,
        description="an endpoint failing without a success for this long is disabled and its partner told",
    )
    secret_rotation_overlap_s: float = Field(
        default=86400.0, ge=0, description="how long the previous secret stays valid after a rotation"
    )
    secrets_key: str = Field(
        default="",
        description="AES-256 key for webhook secrets at rest as 'id:base64key'; empty means a key file "
        "under <data_dir>/secrets (embedded run only)",
    )

    outbox_linger_s: float = Field(
        default=0.25,
        ge=0,
        description="the outbox relay's wait after a commit: notifier's events (notification.*) are "
        "read by insights, not by a resident, so they go in fewer, larger passes",
    )

    # --- the delivery scheduler ----------------------------------------------------------------
    scheduler_poll_interval_s: float = Field(default=1.0, gt=0)
    scheduler_batch_size: int = Field(default=100, ge=1)
    delivery_concurrency: int = Field(
        default=64, ge=1, description="attempts under way at once, per channel (webhooks, e-mails)"
    )
    lease_margin_s: float = Field(
        default=30.0,
        gt=0,
        description="a claimed delivery whose attempt has not finished this long after its time-outs "
        "is taken to have died with its process and is tried again",
    )

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("the retry schedule needs at least one delay, none negative")
        return value

    @model_validator(mode="after")
    def _keys_dir(self) -> NotifierSettings:
        if str(self.intake_keys_dir) in ("", "."):
            self.intake_keys_dir = self.data_dir / "service-keys" / "notifier"
        if str(self.dkim_keys_dir) in ("", "."):
            self.dkim_keys_dir = self.data_dir / "dkim"
        return self

    def lease_s(self, channel: str) -> float:
        """How long one attempt may hold its delivery: every time-out it may wait on, plus margin.

        An e-mail waits on intake (for the address), for a free SMTP connection and on the SMTP
        server; a webhook on its receiver.
        """
        waits = self.webhook_timeout_s if channel == "webhook" else 3 * self.smtp_timeout_s
        return waits + self.lease_margin_s
