"""Routing's settings (environment prefix ``CIVIC_ROUTING_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings


class RoutingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_ROUTING_", extra="ignore")
    service_name: ClassVar[str] = "routing"

    port: int = 8003
    overdue_check_interval_s: float = Field(
        default=60.0, gt=0, description="how often the SLA job looks for overdue cases"
    )
    rules_watch_interval_s: float = Field(
        default=5.0, gt=0, description="how often every tenant's rules files are checked for a change"
    )
