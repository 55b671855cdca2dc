"""Classifier's tables (model registry, activations, corrections, erased signals) and API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import Alternative, utcnow

#: A model version is a folder name and a path segment: letters, digits, dot, dash, underscore.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelVersion(SQLModel, table=True):
    """A bundle registered for a tenant; its files are in ``<models_dir>/<tenant>/<version>/``."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("tenant", "version"),)

    id: int | None = SQLField(default=None, primary_key=True)
    tenant: str = SQLField(index=True, max_length=64)
    version: str = SQLField(max_length=128)
    kind: str = SQLField(default="trained", max_length=32, description="trained, retrained or imported")
    created_at: datetime = SQLField(sa_type=UtcDateTime, description="when the bundle was trained")
    registered_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    registered_by: str = SQLField(max_length=200)
    labels: int
    threshold: float
    examples: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    encoder: str | None = SQLField(default=None, max_length=100)


class ModelActivation(SQLModel, table=True):
    """Append-only history of which version serves a tenant; the newest row is in force.

    ``version`` None means the cold-start model. Rolling back appends the version it goes back
    to: one step further back along the activations at each rollback, skipping the versions
    already rolled back from (A, B, C activated: B, then A, then the cold start; see
    :func:`~civicsignals.classifier.service.rollback_stack`), so the history shows every change
    and who made it.
    """

    __tablename__ = "model_activation"

    id: int | None = SQLField(default=None, primary_key=True)
    tenant: str = SQLField(index=True, max_length=64)
    version: str | None = SQLField(default=None, max_length=128)
    action: str = SQLField(max_length=16, description="activate or rollback")
    at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)
    actor: str = SQLField(max_length=200)


class Correction(SQLModel, table=True):
    """A topic that staff corrected in triage (``signal.reclassified``): training data for ``retrain``.

    One row per signal: a later correction of the same signal replaces the earlier one (the last
    word of staff is the truth). ``text`` is the redacted text that travelled on the bus.
    """

    __tablename__ = "correction"
    __table_args__ = (UniqueConstraint("tenant", "signal_id"),)

    id: int | None = SQLField(default=None, primary_key=True)
    tenant: str = SQLField(index=True, max_length=64)
    signal_id: str = SQLField(max_length=64)
    text: str | None = None
    topic: str = SQLField(max_length=200)
    subtopic: str | None = SQLField(default=None, max_length=200)
    previous_topic: str | None = SQLField(default=None, max_length=200)
    previous_subtopic: str | None = SQLField(default=None, max_length=200)
    event_id: str = SQLField(max_length=64)
    corrected_at: datetime = SQLField(sa_type=UtcDateTime)
    stored_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)


class ErasedSignal(SQLModel, table=True):
    """A signal whose person's data was erased on request (``signal.erased``, AVG article 17).

    Its corrections were deleted; the row stays so that a ``signal.reclassified`` that comes later
    (staff may still change the topic of the case, or the correction was on its way when the
    erasure overtook it: each event kind has its own consumer) stores nothing again. Ids and a
    time only, no text.
    """

    __tablename__ = "erased_signal"

    tenant: str = SQLField(primary_key=True, max_length=64)
    signal_id: str = SQLField(primary_key=True, max_length=64)
    erased_at: datetime = SQLField(sa_type=UtcDateTime, description="when intake erased it")
    event_id: str = SQLField(max_length=64, description="the first signal.erased of the signal")
    stored_at: datetime = SQLField(default_factory=utcnow, sa_type=UtcDateTime)


# ---------------------------------------------------------------------------------------------- API


class ClassifyRequest(BaseModel):
    """One text, or a batch of up to 1,000 texts."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "Er ligt afval naast de container op de Kerkstraat."},
                {"texts": ["De lantaarnpaal is kapot.", "The bin was not emptied."]},
            ]
        },
    )

    text: str | None = Field(default=None, min_length=1, max_length=10_000)
    texts: list[str] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either 'text' or 'texts'")
        return self


class Classification(BaseModel):
    topic: str
    subtopic: str | None
    confidence: float
    alternatives: list[Alternative]
    needs_review: bool
    model_version: str
    language: str = Field(description="nl, en or other: detected from the text")


class ClassifyResponse(BaseModel):
    results: list[Classification]


class ModelInfo(BaseModel):
    """A model version of the caller's municipality, or its cold-start model."""

    version: str
    kind: str
    active: bool = Field(description="this version serves the municipality's signals now")
    labels: int
    threshold: float
    created_at: datetime | None = None
    registered_at: datetime | None = None
    examples: int = 0
    accuracy: float | None = Field(default=None, description="held-out accuracy measured in training")
    macro_f1: float | None = None
    encoder: str | None = None


class ModelList(BaseModel):
    items: list[ModelInfo]
    active_version: str | None = Field(
        description="the tenant's active version; null when the cold start serves"
    )
    serving_version: str | None = Field(description="the version this replica serves now")
    threshold: float | None = Field(
        description="the review threshold in force for the serving model: the tenant's "
        "review_threshold for a trained model, its cold_start_review_threshold for the cold-start "
        "model, else the model card's"
    )


class ModelCard(BaseModel):
    """A bundle's ``card.json`` as it is."""

    model_config = ConfigDict(extra="allow")

    version: str
    card: dict[str, Any]
