"""What ``create_service_app`` gives every service: API-Version, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import MetaData
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from civicsignals.common.app import API_VERSION, create_service_app, server_options
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port

pytestmark = pytest.mark.timeout(30)


async def test_every_answer_carries_api_version(service: Any, tenant_key: Any) -> None:
    client = service.client
    answers = [
        await client.get("/livez"),
        await client.get("/v1/cases", headers=tenant_key.authorization),
        await client.get("/v1/cases"),  # 401
        await client.get("/v1/nothing"),  # 404
        await client.post("/v1/signals", json={}, headers=tenant_key.authorization),  # 422
        await client.post("/v1/signals", content=b"x" * 5000, headers=tenant_key.authorization),  # 413
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 401, 404, 422, 413]
    assert all(answer.headers["API-Version"] == API_VERSION for answer in answers)


async def test_livez(service: Any) -> None:
    response = await service.client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_metrics_serves_prometheus_text(service: Any, tenant_key: Any) -> None:
    await service.client.get("/v1/cases", headers=tenant_key.authorization)
    response = await service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE" in text and "# HELP" in text
    # the request counter of the middleware, per app and route template
    assert 'app_name="civicsignals-tests"' in text
    assert 'path="/v1/cases"' in text
    # the library's own metrics are registered
    assert "civic_events_published_total" in text
    assert "civic_outbox_pending" in text


async def test_openapi_document(service: Any) -> None:
    document = (await service.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == API_VERSION
    assert "/v1/signals" in document["paths"]
    assert "/livez" not in document["paths"]


async def test_readyz_follows_the_database_and_nats(
    service_factory: Any, tenant_key: Any, nats_server: NatsServer, wait_until: Any
) -> None:
    settings = service_factory.settings(tenant_key.tenants_dir, nats_url=nats_server.url)
    runtime = ServiceRuntime(settings, metadata=MetaData())
    app = create_service_app(runtime, title="Ready", description="readiness", routers=[])
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://ready.local") as client,
    ):

        async def ready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 200 else None

        response = await wait_until(ready, timeout=10, message="/readyz to answer 200")
        assert response.json() == {"status": "ready", "checks": {"database": True, "nats": True}}
        streams = {info.config.name for info in await runtime.bus.js.streams_info()}
        assert {"CIVIC", "CIVIC_DLQ"} <= streams

        nats_server.stop()

        async def not_ready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 503 else None

        response = await wait_until(not_ready, timeout=10, message="/readyz to answer 503")
        assert response.json()["checks"] == {"database": True, "nats": False}
        assert (await client.get("/livez")).status_code == 200  # alive all the same

        nats_server.start()
        await wait_until(ready, timeout=10, message="/readyz to recover")


@pytest.mark.parametrize(
    ("trusted", "seen_as"),
    [("127.0.0.1", "203.0.113.7"), ("10.0.0.0/8", "127.0.0.1")],
    ids=["behind-a-trusted-proxy", "from-an-untrusted-peer"],
)
async def test_the_client_address_comes_from_a_trusted_proxy_only(trusted: str, seen_as: str) -> None:
    """The per-address rate limits count ``request.client.host``: a real uvicorn server with the
    options ``serve`` uses takes it from ``X-Forwarded-For`` only when the connection comes from
    ``forwarded_allow_ips``; otherwise any client could name its own bucket."""

    async def client_address(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        response = PlainTextResponse(Request(scope).client.host)  # type: ignore[union-attr]
        await response(scope, receive, send)

    port = free_port()
    options = server_options("127.0.0.1", port, "warning", trusted)
    server = uvicorn.Server(uvicorn.Config(client_address, lifespan="off", **options))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # A proxy appends the address it saw; the first one is whatever the client claimed.
            response = await client.get("/", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert response.text == seen_as
    finally:
        server.should_exit = True
        await task
