"""Notifier's settings (environment prefix ``CIVIC_NOTIFIER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_NOTIFIER_", extra="ignore")
    service_name: ClassVar[str] = "notifier"

    port: int = 8004
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "Gemeente <noreply@civicsignals.local>"
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="base of tracking links in mail"
    )
    intake_url: str = "http://127.0.0.1:8001"
    intake_keys_dir: Path = Field(
        default=Path(""),
        description="one file per tenant with notifier's key for intake; empty: <data_dir>/...",
    )

    @model_validator(mode="after")
    def _keys_dir(self) -> NotifierSettings:
        if str(self.intake_keys_dir) in ("", "."):
            self.intake_keys_dir = self.data_dir / "service-keys" / "notifier"
        return self
