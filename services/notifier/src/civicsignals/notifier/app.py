"""Notifier's application: residents by e-mail, partners by signed webhooks, every attempt kept."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.audit import mount_audit
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.notifier import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.notifier.dispatch import Dispatcher
from civicsignals.notifier.mailer import SmtpPool
from civicsignals.notifier.messages import TemplateBook
from civicsignals.notifier.secretbox import SecretBox
from civicsignals.notifier.service import IntakeContacts
from civicsignals.notifier.settings import NotifierSettings
from civicsignals.notifier.views import deliveries_router, partners_router, templates_router
from civicsignals.notifier.webhook_client import WebhookClient


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    """The notifier app."""
    settings = settings or NotifierSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    # DESIGN §6: a redirect is a failed attempt, never followed (the client does not follow one).
    webhook_http = WebhookClient(max_connections=settings.delivery_concurrency * 2)
    context = flows.NotifierContext(
        runtime=runtime,
        settings=settings,
        contacts=IntakeContacts(
            settings.intake_url, settings.intake_keys_dir, timeout_s=settings.smtp_timeout_s
        ),
        templates=TemplateBook(settings.tenants_dir),
        box=SecretBox.from_setting(settings.secrets_key, settings.data_dir),
        http=webhook_http,
        mailer=SmtpPool(settings),
    )
    dispatcher = Dispatcher(context)
    context.dispatcher = dispatcher
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)
    runtime.add_background(dispatcher.run)

    async def close_clients() -> None:
        # Before the clients close: attempts under way must not fail for a closed client.
        await dispatcher.stop()
        await webhook_http.close()
        await context.mailer.close()
        await context.contacts.close()

    app = create_service_app(
        runtime,
        title="Civic Signals — notifier",
        description="Keeps residents informed by e-mail and partners by signed webhooks (Standard Webhooks).",
        routers=[partners_router, deliveries_router, templates_router],
        on_shutdown=close_clients,
        openapi_tags=[
            {"name": "partners", "description": "Partner organisations and their webhook endpoints"},
            {"name": "deliveries", "description": "Every e-mail and webhook, with each attempt"},
            {"name": "templates", "description": "Resident e-mail templates and their preview"},
        ],
    )
    app.state.notifier = context
    app.state.dispatcher = dispatcher
    mount_audit(app)
    return app
