"""Intake's application: the front door for every signal."""

from __future__ import annotations

from fastapi import FastAPI
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.intake import flows, models  # noqa: F401  (models registers the tables)
from civicsignals.intake.crypto import FieldCipher, load_or_create_dev_keys, parse_keys
from civicsignals.intake.settings import IntakeSettings
from civicsignals.intake.views import router


def build_cipher(settings: IntakeSettings) -> FieldCipher:
    if settings.pii_keys:
        keys = parse_keys(settings.pii_keys)
        active = settings.pii_active_key_id or list(keys)[-1]
    else:
        keys, active = load_or_create_dev_keys(settings.data_dir / "secrets")
    return FieldCipher(keys, active)


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(settings, metadata=SQLModel.metadata)
    context = flows.IntakeContext(runtime=runtime, settings=settings, cipher=build_cipher(settings))
    for spec in flows.consumers(context):
        runtime.add_consumer(spec)
    app = create_service_app(
        runtime,
        title="Civic Signals — intake",
        description="Signals from portals, apps, Open311 clients and the contact centre; public tracking.",
        routers=[router],
        openapi_tags=[
            {"name": "signals", "description": "Signals posted by portals and apps"},
            {"name": "tracking", "description": "Public status pages for residents"},
            {"name": "internal", "description": "Service-to-service endpoints"},
        ],
    )
    app.state.intake = context
    return app
