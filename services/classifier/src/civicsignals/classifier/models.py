"""Classifier's API schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from civicsignals.common.events import Alternative


class ClassifyRequest(BaseModel):
    """One text, or a batch of up to 1,000 texts."""

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


class ClassifyResponse(BaseModel):
    results: list[Classification]


class ModelInfo(BaseModel):
    name: str
    version: str
    active: bool
    labels: int
    threshold: float
