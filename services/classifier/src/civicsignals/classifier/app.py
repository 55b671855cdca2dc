"""Classifier's application: topic models in ONNX, served to the bus and over HTTP."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.classifier import flows
from civicsignals.classifier.registry import ModelRegistry
from civicsignals.classifier.settings import ClassifierSettings
from civicsignals.classifier.views import router
from civicsignals.common.app import create_service_app
from civicsignals.common.runtime import ServiceRuntime


def create_app(settings: ClassifierSettings | None = None) -> FastAPI:
    settings = settings or ClassifierSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    registry = ModelRegistry(settings.models_dir)
    context = flows.ClassifierContext(runtime=runtime, registry=registry)
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)

    async def model_loaded() -> bool:
        return registry.loaded

    async def load_model() -> None:
        await registry.load()

    app = create_service_app(
        runtime,
        title="Civic Signals — classifier",
        description="Classifies every signal by topic and subtopic with an ONNX model per municipality.",
        routers=[router],
        ready_checks={"model": model_loaded},
        on_startup=load_model,
    )
    app.state.classifier = context
    return app
