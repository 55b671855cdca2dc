"""The audit log (issue 10, DESIGN §4): records, the auditor's route, reload records, no personal data.

Run against SQLite and, with ``CIVIC_TEST_POSTGRES_URL``, PostgreSQL.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData

from civicsignals.common.app import create_service_app
from civicsignals.common.audit import AuditRecord, audit_router, install_reload_audit, query, record
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.settings import ServiceSettings

pytestmark = pytest.mark.timeout(60)


class _Settings(ServiceSettings):
    service_name = "tests"


async def _create_table(runtime: ServiceRuntime) -> None:
    async with runtime.engine.begin() as connection:
        await connection.run_sync(lambda sync: AuditRecord.__table__.create(sync, checkfirst=True))  # type: ignore[attr-defined]


@pytest.fixture
async def audited(tmp_path: Path, database_url: str, make_tenant: Any) -> AsyncIterator[Any]:
    """A service with the audit route and reload records, tenants gouda and alphen."""
    gouda = make_tenant("gouda", ["audit:read"])
    alphen = make_tenant("alphen", ["audit:read"])
    settings = _Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        tenants_dir=gouda.tenants_dir,
        nats_url="nats://127.0.0.1:1",
    )
    runtime = ServiceRuntime(settings, metadata=MetaData(), outbox=False)
    runtime.tenants.check_interval_s = 0.0
    await _create_table(runtime)
    app = create_service_app(runtime, title="Tests", description="audit", routers=[audit_router("tests")])
    install_reload_audit(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tests.local") as client:

        class Audited:
            pass

        ctx = Audited()
        ctx.client, ctx.runtime, ctx.gouda, ctx.alphen = client, runtime, gouda, alphen  # type: ignore[attr-defined]
        yield ctx
    await runtime.engine.dispose()


async def test_records_are_kept_per_tenant_filtered_and_paginated(audited: Any) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    async with audited.runtime.sessions() as session, session.begin():
        for number in range(5):
            record(
                session,
                tenant="gouda",
                actor="key:abc",
                action="case.status_change",
                object=f"case:{number}",
                result="ok",
            )
        record(
            session,
            tenant="gouda",
            actor="key:def",
            action="contact.read",
            object="signal:s1",
            result="not_found",
        )
        record(
            session,
            tenant="alphen",
            actor="key:xyz",
            action="case.status_change",
            object="case:99",
            result="ok",
        )

    headers = audited.gouda.authorization
    page = (await audited.client.get("/v1/audit/tests", params={"limit": 2}, headers=headers)).json()
    assert [item["object"] for item in page["items"]] == ["signal:s1", "case:4"]
    seen = [item["object"] for item in page["items"]]
    while page["next_cursor"]:
        page = (
            await audited.client.get(
                "/v1/audit/tests", params={"limit": 2, "cursor": page["next_cursor"]}, headers=headers
            )
        ).json()
        seen += [item["object"] for item in page["items"]]
    assert seen == ["signal:s1", "case:4", "case:3", "case:2", "case:1", "case:0"]
    assert "case:99" not in seen  # alphen's record is alphen's

    filtered = (
        await audited.client.get("/v1/audit/tests", params={"action": "case.*"}, headers=headers)
    ).json()
    assert {item["action"] for item in filtered["items"]} == {"case.status_change"}
    assert len(filtered["items"]) == 5
    by_actor = (
        await audited.client.get("/v1/audit/tests", params={"actor": "key:def"}, headers=headers)
    ).json()
    assert [(i["object"], i["result"]) for i in by_actor["items"]] == [("signal:s1", "not_found")]
    later = (
        await audited.client.get(
            "/v1/audit/tests",
            params={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            headers=headers,
        )
    ).json()
    assert later["items"] == []
    earlier = (
        await audited.client.get("/v1/audit/tests", params={"since": start.isoformat()}, headers=headers)
    ).json()
    assert len(earlier["items"]) == 6

    theirs = (await audited.client.get("/v1/audit/tests", headers=audited.alphen.authorization)).json()
    assert [item["object"] for item in theirs["items"] if item["action"] != "config.reload"] == ["case:99"]


async def test_the_audit_route_needs_the_auditor_scope(audited: Any) -> None:
    assert (await audited.client.get("/v1/audit/tests")).status_code == 401
    _, narrow = audited.gouda.add_key(["cases:read", "cases:write", "contact:read"])
    response = await audited.client.get("/v1/audit/tests", headers={"Authorization": f"Bearer {narrow}"})
    assert response.status_code == 403
    assert "audit:read" in response.json()["detail"]
    response = await audited.client.get(
        "/v1/audit/tests", params={"cursor": "abc"}, headers=audited.gouda.authorization
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/cursor"


async def test_configuration_reloads_are_audited_with_file_and_line(audited: Any) -> None:
    settings = audited.gouda.folder / "tenant.yaml"
    settings.write_text("name: Gouda\nlanguages: nl\n", encoding="utf-8")
    stamp = time.time_ns() + 1_000_000_000
    os.utime(settings, ns=(stamp, stamp))

    # the request itself still works: the last good configuration stays in force
    response = await audited.client.get(
        "/v1/audit/tests", params={"action": "config.reload"}, headers=audited.gouda.authorization
    )
    assert response.status_code == 200
    [refused] = response.json()["items"]
    assert refused["result"] == "refused"
    assert refused["actor"] == "service:tests"
    assert refused["object"] == "tenant:gouda"
    assert "tenant.yaml line 2" in refused["detail"]

    settings.write_text("name: Gouda\nlanguages: [nl]\n", encoding="utf-8")
    os.utime(settings, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    _, new_key = audited.gouda.add_key(["cases:read"])
    response = await audited.client.get(
        "/v1/audit/tests", params={"action": "config.reload"}, headers=audited.gouda.authorization
    )
    results = [item["result"] for item in response.json()["items"]]
    assert results[0] == "ok" and "refused" in results
    assert new_key not in response.text  # key ids, never keys


async def test_personal_data_is_refused(database_url: str, tmp_path: Path) -> None:
    settings = _Settings(data_dir=tmp_path, database_url=database_url, tenants_dir=tmp_path / "t")
    runtime = ServiceRuntime(settings, metadata=MetaData(), outbox=False)
    await _create_table(runtime)
    try:
        async with runtime.sessions() as session:
            for field, value in (
                ("actor", "person:jan@example.nl"),
                ("object", "phone:+31612345678"),
                ("detail", "bel 0612345678"),
            ):
                values = {"actor": "key:a", "object": "signal:1", "detail": None, field: value}
                with pytest.raises(ValueError, match="personal data"):
                    record(session, tenant="gouda", action="x", result="ok", **values)
            # ids that merely contain digits are fine
            record(
                session,
                tenant="gouda",
                actor="key:0123456789abcdef",
                action="x",
                object="signal:01JABCDEF0123456789",
                result="ok",
            )
            await session.commit()
            rows, cursor = await query(session, "gouda")
        assert [r.actor for r in rows] == ["key:0123456789abcdef"] and cursor is None
    finally:
        await runtime.engine.dispose()
