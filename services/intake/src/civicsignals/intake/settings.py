"""Intake's settings (environment prefix ``CIVIC_INTAKE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_INTAKE_", extra="ignore")
    service_name: ClassVar[str] = "intake"

    port: int = 8001
    public_base_url: str = Field(
        default="http://127.0.0.1:8000", description="where residents reach the public tracking page"
    )
    pii_keys: str = Field(
        default="",
        description="AES-256 keys for contact data as 'id:base64key,id2:base64key'; "
        "empty means a key file under <data_dir>/secrets (embedded run only)",
    )
    pii_active_key_id: str = Field(default="", description="the key id new contact data is encrypted with")
    idempotency_abandon_after_s: float = Field(default=60.0, gt=0)
