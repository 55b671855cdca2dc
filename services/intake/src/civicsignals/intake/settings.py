"""Intake's settings (environment prefix ``CIVIC_INTAKE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings
from civicsignals.common.web_login import SignInThrottleSettings


class IntakeSettings(ServiceSettings, SignInThrottleSettings):
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

    # Attachments (photos and PDFs posted after the signal).
    attachments_dir: Path = Field(
        default=Path(""), description="the volume for attachments; empty means <data_dir>/attachments"
    )
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_attachments_per_signal: int = Field(default=10, ge=1)

    # Rate limits: a token bucket per API key, and one per client address on the public routes.
    rate_limit_per_s: float = Field(default=50.0, gt=0, description="sustained requests per second per key")
    rate_limit_burst: int = Field(default=200, ge=1)
    rate_limit_share_interval_s: float = Field(
        default=0.25,
        ge=0,
        description="how often a replica tells the others over NATS what each API key's limit granted, "
        "so the limit holds across replicas (ratesharing); 0: each replica limits alone",
    )
    public_rate_limit_per_s: float = Field(
        default=5.0, gt=0, description="per client address, on tracking and Open311 reads"
    )
    public_rate_limit_burst: int = Field(default=60, ge=1)

    # Open311 and the routing service it forwards partner updates to.
    open311_default_jurisdiction: str = Field(
        default="",
        description="the tenant an Open311 request without jurisdiction_id means; empty: it is required",
    )
    routing_url: str = Field(default="http://127.0.0.1:8003", description="routing's base URL")
    notifier_url: str = Field(
        default="http://127.0.0.1:8004",
        description="notifier's base URL: the mails sent about a person's signals, for an access request",
    )
    service_keys_dir: Path = Field(
        default=Path(""),
        description="intake's keys for other services, one file per tenant; "
        "empty means <data_dir>/service-keys/intake",
    )

    # The staff pages' login (the privacy desk at /privacy).
    session_secret: str = Field(
        default="",
        description="HMAC key that signs the privacy desk's login cookie; empty means a random key kept in "
        "<data_dir>/intake-session-secret (set one shared value when running several replicas)",
    )
    session_ttl_s: int = Field(default=2 * 3600, ge=60, description="lifetime of a privacy desk login")
    cookie_secure: bool = Field(default=False, description="mark the login cookie Secure (behind HTTPS)")
    erasure_reauth_max_age_s: int = Field(
        default=300,
        ge=0,
        description="how recently a privacy officer signed in through the municipality's provider must "
        "have signed in there for the desk to erase; an older sign-in is asked again first (OpenID "
        "Connect max_age); 0: a new sign-in before every erasure. An officer signed in with a key "
        "types it again for every erasure",
    )
    # login_failures_burst, login_failures_per_minute: SignInThrottleSettings

    # Retention of contact data (per tenant: retention.contact_days_after_close in tenant.yaml).
    retention_interval_s: float = Field(default=3600.0, gt=0, description="how often the retention job runs")

    @model_validator(mode="after")
    def _intake_paths(self) -> IntakeSettings:
        if str(self.attachments_dir) in ("", "."):
            self.attachments_dir = self.data_dir / "attachments"
        if str(self.service_keys_dir) in ("", "."):
            self.service_keys_dir = self.data_dir / "service-keys" / "intake"
        return self
