"""A second reference: the same bare endpoint, but inside the service stack every Civic Signals
service runs (``create_service_app``: problem handlers, body limit, API-Version, Prometheus,
OpenTelemetry; the common API-key check). It writes nothing either, so intake's rate beside it
shows what the durable write and the outbox cost, and the bare rate beside it what the shared
stack costs. Settings from the ``CIVIC_INTAKE_*`` environment, like intake."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlmodel import SQLModel

from civicsignals.common.app import create_service_app
from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.intake.models import SignalCreate, SignalCreated
from civicsignals.intake.settings import IntakeSettings

router = APIRouter()
Writer = Annotated[Principal, Depends(scope_dependency("signals:write"))]


@router.post("/v1/signals", status_code=201, response_model=SignalCreated)
async def post_signal(payload: SignalCreate, _principal: Writer) -> SignalCreated:
    code = new_tracking_code()
    return SignalCreated(
        id=new_id(), tracking_code=code, status_url=f"http://127.0.0.1:8000/v1/tracking/{code}"
    )


settings = IntakeSettings()
app = create_service_app(
    ServiceRuntime(settings, metadata=SQLModel.metadata, outbox=False),
    title="bench: bare endpoint in the service stack",
    description="validates and answers 201, writes nothing",
    routers=[router],
)
