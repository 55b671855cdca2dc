"""One settings base for every service.

Each service subclasses :class:`ServiceSettings` and gives it its own environment prefix
(``CIVIC_INTAKE_``, ``CIVIC_ROUTING_`` …), so that one machine can run every service with
different values and an operator can tell from a variable's name whom it configures.
The defaults are those of the embedded run (``make run``): SQLite under ``.data/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service shares; subclasses add their own and set ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="CIVIC_", extra="ignore")

    service_name: ClassVar[str] = "service"

    host: str = "127.0.0.1"
    port: int = 8000
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="comma-separated addresses or networks (CIDR) of the proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed; the per-address rate limits count the client they name. "
        "Behind a Kubernetes ingress: the ingress controller's pod network, or every resident shares one limit",
    )
    data_dir: Path = Path(".data")
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL; empty means SQLite at <data_dir>/db/<service>.db",
    )
    migrate_on_start: bool = True
    nats_url: str = "nats://127.0.0.1:4222"
    tenants_dir: Path = Field(default=Path(""), description="tenant folders; empty means <data_dir>/tenants")
    stream_replicas: int = Field(default=1, ge=1, le=5)
    stream_duplicate_window_s: float = Field(default=300.0, ge=120.0)
    consumer_max_deliver: int = Field(default=10, ge=2)
    consumer_ack_wait_s: float = Field(default=30.0, gt=0)
    consumer_concurrency: int = Field(default=8, ge=1, le=256)
    outbox_batch_size: int = Field(default=200, ge=1)
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    outbox_linger_s: float = Field(
        default=0.0,
        ge=0,
        description="how long the outbox relay waits after a commit woke it, so that the events of the "
        "commits that follow go out and are marked in the same pass: fewer write transactions, each "
        "event that much later (0 for events on a resident's path)",
    )
    outbox_fault: Literal["none", "hold", "exit_after_publish"] = Field(
        default="none",
        description="fault injection for the end-to-end tests only: 'hold' never publishes (as if the "
        "process died right after its commit); 'exit_after_publish' ends the process after publishing "
        "a batch and before marking it published",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # The garbage collector of a serving process (``<service> serve`` only; see ``app.tune_collector``).
    gc_freeze_after_start: bool = Field(
        default=True,
        description="move the objects that live as long as the process out of the collector's reach",
    )
    gc_young_threshold: int = Field(
        default=20_000,
        ge=0,
        description="allocations between two collections of the youngest generation; 0 keeps Python's 700",
    )
    sqlite_statements_on_loop: bool = Field(
        default=True,
        description="SQLite only: run reads and the statements of a transaction that has written already "
        "on the event loop's thread instead of handing each to the driver's thread (see "
        "common.sqlite_driver); the first write of a transaction and the commit still go to that thread",
    )
    log_level: str = "INFO"
    otel_exporter: Literal["none", "console", "otlp", "jsonl"] = "none"
    otel_jsonl_path: Path | None = None

    @model_validator(mode="after")
    def _fill_derived_defaults(self) -> ServiceSettings:
        if not self.database_url:
            db_file = (self.data_dir / "db" / f"{self.service_name}.db").resolve()
            self.database_url = f"sqlite+aiosqlite:///{db_file}"
        for plain in ("postgresql://", "postgres://"):
            # CloudNativePG and most operators hand out plain URIs; the services need the async driver.
            if self.database_url.startswith(plain):
                self.database_url = "postgresql+asyncpg://" + self.database_url[len(plain) :]
        if str(self.tenants_dir) in ("", "."):
            self.tenants_dir = self.data_dir / "tenants"
        return self
