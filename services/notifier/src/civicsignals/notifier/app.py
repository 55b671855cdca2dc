"""Notifier's application: residents by e-mail (partners by webhook follow in their own issue)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.notifier import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.notifier.messages import TemplateBook
from civicsignals.notifier.service import IntakeContacts
from civicsignals.notifier.settings import NotifierSettings


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    client = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
    context = flows.NotifierContext(
        runtime=runtime,
        settings=settings,
        contacts=IntakeContacts(settings.intake_url, settings.intake_keys_dir, client),
        templates=TemplateBook(settings.tenants_dir),
    )
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)

    async def close_client() -> None:
        await client.aclose()

    app = create_service_app(
        runtime,
        title="Civic Signals — notifier",
        description="Keeps residents informed by e-mail and partners by signed webhooks.",
        routers=[],
        on_shutdown=close_client,
    )
    app.state.notifier = context
    return app
