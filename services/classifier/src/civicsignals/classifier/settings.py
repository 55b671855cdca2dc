"""Classifier's settings (environment prefix ``CIVIC_CLASSIFIER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from civicsignals.common.settings import ServiceSettings


class ClassifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CIVIC_CLASSIFIER_", extra="ignore")
    service_name: ClassVar[str] = "classifier"

    port: int = 8002
    models_dir: Path = Field(default=Path(""), description="model bundles; empty means <data_dir>/models")
    registry_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="how often a replica reads which model version is active per tenant (an activation "
        "through the API applies at once on the replica that served it)",
    )
    batch_size: int = Field(
        default=64, ge=1, le=1000, description="signal.received messages fetched and classified together"
    )

    @model_validator(mode="after")
    def _models_dir(self) -> ClassifierSettings:
        if str(self.models_dir) in ("", "."):
            self.models_dir = self.data_dir / "models"
        return self
