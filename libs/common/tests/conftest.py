"""Fixtures of the ``libs/common`` tests: a small service built the way every service is built."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import MetaData

from civicsignals.common.app import create_service_app
from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.events import CloudEvent, SignalReceived, make_event, utcnow
from civicsignals.common.problems import Problem
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.settings import ServiceSettings

MAX_BODY_BYTES = 2048


class Coordinates(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class SignalIn(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)
    channel: Literal["web", "app", "phone"]
    location: Coordinates | None = None


SignalsWriter = Annotated[Principal, Depends(scope_dependency("signals:write"))]
CasesReader = Annotated[Principal, Depends(scope_dependency("cases:read"))]

router = APIRouter()


@router.post("/v1/signals", status_code=201)
async def post_signal(body: SignalIn, principal: SignalsWriter) -> dict[str, Any]:
    return {"tenant": principal.tenant, "key_id": principal.key_id, "length": len(body.text)}


@router.get("/v1/cases")
async def list_cases(principal: CasesReader) -> dict[str, Any]:
    return {"tenant": principal.tenant, "items": []}


@router.post("/v1/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"keys": sorted(body)}


@router.get("/v1/conflict")
async def conflict() -> None:
    raise Problem(409, "the case was changed meanwhile", slug="conflict", current_sequence=7)


@router.get("/v1/boom")
async def boom() -> None:
    raise RuntimeError("secret internal state /etc/passwd")


class ServiceUnderTest:
    """The app of a test service, its runtime and an HTTP client talking to it in-process."""

    def __init__(self, app: FastAPI, runtime: ServiceRuntime, client: httpx.AsyncClient) -> None:
        self.app = app
        self.runtime = runtime
        self.client = client


class _Settings(ServiceSettings):
    service_name = "tests"


@dataclass
class ServiceFactory:
    tmp_path: Path

    def settings(self, tenants_dir: Path, nats_url: str = "nats://127.0.0.1:1") -> ServiceSettings:
        return _Settings(
            data_dir=self.tmp_path / "data",
            database_url=f"sqlite+aiosqlite:///{self.tmp_path / 'service.db'}",
            tenants_dir=tenants_dir,
            nats_url=nats_url,
            max_body_bytes=MAX_BODY_BYTES,
        )


@pytest.fixture
async def service(tmp_path: Path, tenant_key: Any) -> AsyncIterator[ServiceUnderTest]:
    """A service app (``create_service_app``) with the routes above and tenant ``gouda``.

    Its lifespan does not run (no bus, no database): HTTP behaviour only. The client does not
    re-raise the app's errors, so a 500 can be looked at as a client would see it.
    """
    settings = ServiceFactory(tmp_path).settings(tenant_key.tenants_dir)
    runtime = ServiceRuntime(settings, metadata=MetaData(), outbox=False)
    runtime.tenants.check_interval_s = 0.0  # see key changes at once
    app = create_service_app(runtime, title="Tests", description="a test service", routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tests.local") as client:
        yield ServiceUnderTest(app, runtime, client)
    await runtime.engine.dispose()


@pytest.fixture
def service_factory(tmp_path: Path) -> ServiceFactory:
    return ServiceFactory(tmp_path)


def received_event(number: int = 1, tenant: str = "gouda") -> CloudEvent:
    """A ``signal.received`` event (no personal data) for the consumer tests."""
    data = SignalReceived(
        signal_id=f"signal-{number}",
        tracking_code="7KQ2-M9XD-4HTC",
        kind="report",
        channel="web",
        text="losse stoeptegel",
        received_at=utcnow(),
        has_contact=False,
        source="tests",
    )
    return make_event(tenant=tenant, service="intake", data=data)
