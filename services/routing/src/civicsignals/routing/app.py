"""Routing's application: rules, cases and department feeds."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.audit import mount_audit
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.routing import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.routing.settings import RoutingSettings
from civicsignals.routing.views import router, rules_router


def create_app(settings: RoutingSettings | None = None) -> FastAPI:
    settings = settings or RoutingSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    context = flows.make_context(runtime)
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)
    for job in flows.background_jobs(
        context, settings.overdue_check_interval_s, settings.rules_watch_interval_s
    ):
        runtime.add_background(job)
    app = create_service_app(
        runtime,
        title="Civic Signals — routing",
        description="Routing rules, cases with their life cycle, partner updates, and the feeds "
        "departments subscribe to.",
        routers=[router, rules_router],
    )
    app.state.routing = context
    mount_audit(app)
    return app
