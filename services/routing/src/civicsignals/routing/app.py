"""Routing's application: rules, cases and department feeds."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.routing import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.routing.rules import RulesCache
from civicsignals.routing.settings import RoutingSettings
from civicsignals.routing.views import router


def create_app(settings: RoutingSettings | None = None) -> FastAPI:
    settings = settings or RoutingSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    context = flows.RoutingContext(runtime=runtime, rules=RulesCache(settings.tenants_dir))
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)
    app = create_service_app(
        runtime,
        title="Civic Signals — routing",
        description="Routing rules, cases with their life cycle, and the feeds departments subscribe to.",
        routers=[router],
    )
    app.state.routing = context
    return app
