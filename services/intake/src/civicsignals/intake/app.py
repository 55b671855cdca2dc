"""Intake's application: the front door for every signal."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.audit import mount_audit
from civicsignals.common.db import is_sqlite
from civicsignals.common.ratesharing import LimitExchange
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.tasks import cancel_requested
from civicsignals.intake import flows, models, privacy  # noqa: F401  (models registers the tables)
from civicsignals.intake.access import TenantCorsMiddleware
from civicsignals.intake.crypto import FieldCipher, load_or_create_dev_keys, parse_keys
from civicsignals.intake.open311.views import router as open311_router
from civicsignals.intake.privacy_desk import router as privacy_desk_router
from civicsignals.intake.privacy_views import router as privacy_router
from civicsignals.intake.settings import IntakeSettings
from civicsignals.intake.views import router

log = logging.getLogger(__name__)

#: Routes that take a file (a portal's upload; a resident's, alone or with their page's form; an
#: Open311 client's ``media`` with its request).
ATTACHMENT_PATH = (
    r"/v1/signals/[^/]+/attachments|/v1/tracking/[^/]+/(attachments|updates)|/open311/v2/requests\.(json|xml)"
)
MULTIPART_OVERHEAD = 64 * 1024


def build_cipher(settings: IntakeSettings) -> FieldCipher:
    if settings.pii_keys:
        keys = parse_keys(settings.pii_keys)
        active = settings.pii_active_key_id or list(keys)[-1]
    else:
        keys, active = load_or_create_dev_keys(settings.data_dir / "secrets")
    return FieldCipher(keys, active)


def retention_job(context: flows.IntakeContext) -> object:
    """The background loop that erases contact data past each tenant's retention."""

    async def intake_retention() -> None:
        while True:
            try:
                deleted = await privacy.apply_retention(context.runtime.sessions, context.runtime.tenants)
                if any(deleted.values()):
                    log.info("retention: deleted contact data of %s", deleted)
            except Exception as exc:
                if cancel_requested():  # a cancel that the database driver turned into an error
                    raise asyncio.CancelledError from exc
                log.exception("retention: run failed; retrying at the next interval")
            await asyncio.sleep(context.settings.retention_interval_s)

    return intake_retention


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    context = flows.IntakeContext(runtime=runtime, settings=settings, cipher=build_cipher(settings))
    for spec in flows.consumers(context, take_turns=is_sqlite(settings.database_url)):
        runtime.add_consumer(spec)
    runtime.add_background(retention_job(context))  # type: ignore[arg-type]
    if settings.rate_limit_share_interval_s > 0:
        exchange = LimitExchange(
            context.key_limiter, runtime.bus, limit="keys", interval_s=settings.rate_limit_share_interval_s
        )
        runtime.add_background(exchange.run)
    app = create_service_app(
        runtime,
        title="Civic Signals — intake",
        description="Signals from portals, apps, Open311 clients and the contact centre; public tracking.",
        routers=[router, open311_router, privacy_router, privacy_desk_router],
        on_shutdown=context.close,
        openapi_tags=[
            {"name": "signals", "description": "Signals posted by portals and apps, and their attachments"},
            {"name": "conversations", "description": "Phone and chat transcripts from the contact centre"},
            {
                "name": "tracking",
                "description": "Public status pages and the satisfaction form for residents",
            },
            {"name": "open311", "description": "Open311 GeoReport v2 with mySociety's servicerequestupdates"},
            {"name": "internal", "description": "Service-to-service endpoints"},
        ],
        body_limits=[(ATTACHMENT_PATH, settings.max_attachment_bytes + MULTIPART_OVERHEAD)],
    )
    app.add_middleware(TenantCorsMiddleware, registry=runtime.tenants)
    app.state.intake = context
    mount_audit(app)
    return app
