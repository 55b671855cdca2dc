"""Routing's settings (environment prefix ``CIVIC_ROUTING_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings


class RoutingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_ROUTING_", extra="ignore")
    service_name: ClassVar[str] = "routing"

    port: int = 8003
