"""Classifier's HTTP routes: classify texts; list, activate and roll back model versions."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from civicsignals.classifier import service
from civicsignals.classifier.flows import ClassifierContext
from civicsignals.classifier.model.inference import BundleError, read_card
from civicsignals.classifier.models import (
    VERSION_PATTERN,
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    ModelCard,
    ModelInfo,
    ModelList,
    ModelVersion,
)
from civicsignals.classifier.registry import ModelNotReady, TaxonomyRefused
from civicsignals.common import audit
from civicsignals.common.auth import Principal, any_scope_dependency, scope_dependency
from civicsignals.common.events import Alternative
from civicsignals.common.language import detect_language
from civicsignals.common.problems import Problem

router = APIRouter(tags=["classification"])
models_router = APIRouter(tags=["models"])


Classifying = Annotated[Principal, Depends(scope_dependency("signals:write"))]
Reading = Annotated[Principal, Depends(any_scope_dependency("rules:admin", "signals:read", "signals:write"))]
Administering = Annotated[Principal, Depends(scope_dependency("rules:admin"))]
Version = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="a model version, e.g. 20261128T091403Z-5e2a91c0")
]


def _context(request: Request) -> ClassifierContext:
    context: ClassifierContext = request.app.state.classifier
    return context


def _serving(ctx: ClassifierContext, tenant: str) -> tuple[str | None, float | None]:
    try:
        model = ctx.serving_model(tenant)
    except ModelNotReady:
        return None, None
    return model.version, ctx.threshold_in_force(tenant, model)


def _not_ready(exc: ModelNotReady) -> Problem:
    if isinstance(exc, TaxonomyRefused):
        # The problems themselves (with the server's paths) are in the log; the admin command
        # names them too.
        return Problem(
            503,
            "this municipality's own taxonomy.yaml cannot be used, and no earlier version of it "
            "could: its signals wait until it is fixed (civicsignals-admin validate names the problem)",
            slug="taxonomy-refused",
            headers={"Retry-After": "60"},
        )
    return Problem(503, "the model is still loading", slug="model-loading", headers={"Retry-After": "5"})


@router.post("/v1/classify", response_model=ClassifyResponse, summary="Classify one text or a batch")
async def classify(body: ClassifyRequest, request: Request, principal: Classifying) -> ClassifyResponse:
    """Topic, subtopic, confidence, top-3 alternatives, ``needs_review`` and language of each text,
    with the caller's municipality's model and review threshold. Nothing is stored."""
    ctx = _context(request)
    try:
        model = ctx.serving_model(principal.tenant)
    except ModelNotReady as exc:
        raise _not_ready(exc) from None
    texts = [body.text] if body.text is not None else list(body.texts or [])
    for index, text in enumerate(texts):
        if not text.strip():
            pointer = "/text" if body.text is not None else f"/texts/{index}"
            raise Problem(
                422,
                "a text must not be empty",
                slug="validation",
                errors=[{"pointer": pointer, "detail": "empty text"}],
            )
        if len(text) > 10_000:
            raise Problem(
                422,
                "a text may have at most 10,000 characters",
                slug="validation",
                errors=[{"pointer": f"/texts/{index}", "detail": "longer than 10,000 characters"}],
            )
    predictions = await asyncio.to_thread(
        model.predict, texts, threshold=ctx.threshold(principal.tenant, model)
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
                language=detect_language(text),
            )
            for p, text in zip(predictions, texts, strict=True)
        ]
    )


def _info(row: ModelVersion, active: bool) -> ModelInfo:
    return ModelInfo(
        version=row.version,
        kind=row.kind,
        active=active,
        labels=row.labels,
        threshold=row.threshold,
        created_at=row.created_at,
        registered_at=row.registered_at,
        examples=row.examples,
        accuracy=row.accuracy,
        macro_f1=row.macro_f1,
        encoder=row.encoder,
    )


@models_router.get("/v1/models", response_model=ModelList, summary="The municipality's model versions")
async def list_models(request: Request, principal: Reading) -> ModelList:
    """Every registered version (newest first), plus the cold-start model, and which one serves."""
    ctx = _context(request)
    async with ctx.runtime.sessions() as session:
        rows = await service.list_versions(session, principal.tenant)
        active = await service.active_version(session, principal.tenant)
    serving, threshold = _serving(ctx, principal.tenant)
    items = [_info(row, row.version == active) for row in rows]
    try:
        coldstart = ctx.serving_model(principal.tenant) if active is None else None
    except ModelNotReady:
        coldstart = None
    if coldstart is not None:
        items.append(
            ModelInfo(
                version=coldstart.version,
                kind="coldstart",
                active=True,
                labels=len(coldstart.labels),
                threshold=coldstart.threshold,
                examples=int(coldstart.card.get("training_data", {}).get("examples", 0)),
            )
        )
    return ModelList(items=items, active_version=active, serving_version=serving, threshold=threshold)


@models_router.get("/v1/models/{version}", response_model=ModelCard, summary="A model version's card")
async def get_model(version: Version, request: Request, principal: Reading) -> ModelCard:
    ctx = _context(request)
    async with ctx.runtime.sessions() as session:
        row = await service.get_version(session, principal.tenant, version)
    if row is None:
        raise Problem(404, f"no model version {version} for this municipality", slug="not-found")
    try:
        card = read_card(service.version_dir(ctx.registry.models_dir, principal.tenant, version))
    except BundleError as exc:
        raise Problem(
            409, f"the files of model version {version} are not usable: {exc}", slug="bundle-broken"
        ) from exc
    return ModelCard(version=version, card=card)


@models_router.post(
    "/v1/models/{version}:activate", response_model=ModelList, summary="Serve this version from now on"
)
async def activate_model(version: Version, request: Request, principal: Administering) -> ModelList:
    """The version is loaded first; only when it loads does it become active (no restart needed)."""
    ctx = _context(request)
    async with ctx.runtime.sessions() as session:
        row = await service.get_version(session, principal.tenant, version)
    if row is None:
        raise Problem(404, f"no model version {version} for this municipality", slug="not-found")
    try:
        model = await asyncio.to_thread(ctx.registry.load_version, principal.tenant, version)
    except BundleError as exc:
        raise Problem(409, f"model version {version} cannot be loaded: {exc}", slug="bundle-broken") from exc
    async with ctx.runtime.sessions() as session, session.begin():
        await service.activate(session, principal.tenant, version, actor=principal.actor)
        audit.record(
            session,
            tenant=principal.tenant,
            actor=principal.actor,
            action="model.activate",
            object=f"model:{version}",
            result="ok",
            service="classifier",
        )
    await ctx.registry.apply(principal.tenant, version, model)
    return await list_models(request, principal)


@models_router.post(
    "/v1/models:rollback", response_model=ModelList, summary="Go back to the previous version"
)
async def rollback_model(request: Request, principal: Administering) -> ModelList:
    """Serve the version activated before the current one, walking back along the activation
    history: each rollback goes one step further back, skipping the versions already rolled back
    from, down to the cold start; 409 when there is nowhere left to go."""
    ctx = _context(request)
    async with ctx.runtime.sessions() as session:
        try:
            target = await service.rollback_target(session, principal.tenant)
        except service.RegistryError as exc:
            raise Problem(409, str(exc), slug="nothing-to-roll-back") from None
    model = None
    if target is not None:
        try:
            model = await asyncio.to_thread(ctx.registry.load_version, principal.tenant, target)
        except BundleError as exc:
            raise Problem(
                409, f"model version {target} cannot be loaded: {exc}", slug="bundle-broken"
            ) from exc
    async with ctx.runtime.sessions() as session, session.begin():
        try:
            row = await service.rollback(session, principal.tenant, actor=principal.actor, expected=target)
        except service.RegistryError as exc:
            raise Problem(409, str(exc), slug="rollback-conflict") from None
        audit.record(
            session,
            tenant=principal.tenant,
            actor=principal.actor,
            action="model.rollback",
            object=f"model:{row.version or 'coldstart'}",
            result="ok",
            service="classifier",
        )
    await ctx.registry.apply(principal.tenant, row.version, model)
    return await list_models(request, principal)
