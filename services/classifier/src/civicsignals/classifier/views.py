"""Classifier's HTTP routes: classify texts, list models."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from civicsignals.classifier.flows import ClassifierContext
from civicsignals.classifier.models import Classification, ClassifyRequest, ClassifyResponse, ModelInfo
from civicsignals.classifier.registry import DEFAULT_BUNDLE
from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.events import Alternative
from civicsignals.common.problems import Problem

Classifying = Annotated[Principal, Depends(scope_dependency("signals:write"))]
router = APIRouter(tags=["classification"])


def _context(request: Request) -> ClassifierContext:
    context: ClassifierContext = request.app.state.classifier
    return context


@router.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a batch")
async def classify(body: ClassifyRequest, request: Request, principal: Classifying) -> ClassifyResponse:
    ctx = _context(request)
    if not ctx.registry.loaded:
        raise Problem(503, "the model is still loading", slug="model-loading", headers={"Retry-After": "5"})
    texts = [body.text] if body.text is not None else list(body.texts or [])
    predictions = await asyncio.to_thread(
        ctx.registry.model().predict, texts, threshold=ctx.threshold(principal.tenant)
    )
    return ClassifyResponse(
        results=[
            Classification(
                topic=p.topic,
                subtopic=p.subtopic,
                confidence=p.confidence,
                alternatives=[Alternative(**a.to_dict()) for a in p.alternatives],
                needs_review=p.needs_review,
                model_version=p.model_version,
            )
            for p in predictions
        ]
    )


@router.get("/v1/models", response_model=list[ModelInfo], summary="The model bundles and which one serves")
async def list_models(request: Request, principal: Classifying) -> list[ModelInfo]:
    ctx = _context(request)
    if not ctx.registry.loaded:
        return []
    model = ctx.registry.model()
    return [
        ModelInfo(
            name=DEFAULT_BUNDLE,
            version=str(model.card.get("version", "")),
            active=True,
            labels=len(model.labels),
            threshold=float(model.threshold),
        )
    ]
