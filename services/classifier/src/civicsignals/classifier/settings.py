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

    @model_validator(mode="after")
    def _models_dir(self) -> ClassifierSettings:
        if str(self.models_dir) in ("", "."):
            self.models_dir = self.data_dir / "models"
        return self
