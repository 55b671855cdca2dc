"""Classifier's application: topic models in ONNX, served to the bus and over HTTP."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.classifier import flows, service
from civicsignals.classifier import models as _tables  # noqa: F401 - registers the tables
from civicsignals.classifier.registry import ModelRegistry
from civicsignals.classifier.settings import ClassifierSettings
from civicsignals.classifier.views import models_router, router
from civicsignals.common.app import create_service_app
from civicsignals.common.audit import mount_audit
from civicsignals.common.runtime import ServiceRuntime


def create_app(settings: ClassifierSettings | None = None) -> FastAPI:
    settings = settings or ClassifierSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    registry = ModelRegistry(settings.models_dir)
    context = flows.ClassifierContext(runtime=runtime, registry=registry)
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)
    batching = flows.batching_consumer(context, settings.batch_size)
    runtime.consumers.append(batching)
    runtime.add_background(batching.run)

    async def refresh() -> None:
        await flows.refresh_loop(context, settings.registry_refresh_s)

    runtime.add_background(refresh)

    async def model_loaded() -> bool:
        return registry.loaded

    async def load_models() -> None:
        # The default cold start first (readiness), then each tenant's taxonomy and active version.
        await registry.load()
        context.refresh_taxonomies()
        async with runtime.sessions() as session:
            wanted = await service.active_versions(session)
        await registry.sync(wanted)

    app = create_service_app(
        runtime,
        title="Civic Signals — classifier",
        description="Classifies every signal by topic and subtopic with an ONNX model per municipality, "
        "and keeps a registry of model versions per municipality.",
        routers=[router, models_router],
        ready_checks={"model": model_loaded},
        on_startup=load_models,
    )
    app.state.classifier = context
    mount_audit(app)
    return app
