"""Notifier is killed (SIGKILL) in the middle of a retry schedule and started again: the schedule
goes on where it was, and every webhook arrives once per ``webhook-id``.

Notifier runs as its own process here (``python -m civicsignals.notifier serve``), so the kill is
real: no shutdown hook runs, attempts under way are cut off mid-flight.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from standardwebhooks import Webhook

from civicsignals.common.bus import Bus
from civicsignals.common.events import SignalRouted, make_event
from civicsignals.common.ids import new_id
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TENANT = "gouda"


async def _attempts(database_url: str) -> dict[str, int]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT message_id, attempts FROM notifier_delivery WHERE channel = 'webhook'")
            )
            return {row[0]: row[1] for row in rows}
    finally:
        await engine.dispose()


async def test_a_killed_notifier_goes_on_with_its_retry_schedule(
    database_url: str, nats_server: NatsServer, bus: Bus, make_tenant, receiver, tmp_path: Path, wait_until
) -> None:
    tenant = make_tenant(TENANT, scopes=["rules:admin"])
    port = free_port()
    env = {
        "CIVIC_NOTIFIER_PORT": str(port),
        "CIVIC_NOTIFIER_DATABASE_URL": database_url,
        "CIVIC_NOTIFIER_NATS_URL": nats_server.url,
        "CIVIC_NOTIFIER_TENANTS_DIR": str(tenant.tenants_dir),
        "CIVIC_NOTIFIER_DATA_DIR": str(tmp_path / "data"),
        "CIVIC_NOTIFIER_ALLOW_PRIVATE_ENDPOINTS": "true",
        "CIVIC_NOTIFIER_RETRY_SCHEDULE_S": json.dumps([0.5] * 40),
        "CIVIC_NOTIFIER_WEBHOOK_TIMEOUT_S": "2",
        "CIVIC_NOTIFIER_LEASE_MARGIN_S": "1",
        "CIVIC_NOTIFIER_SCHEDULER_POLL_INTERVAL_S": "0.1",
        "CIVIC_NOTIFIER_OUTBOX_POLL_INTERVAL_S": "0.2",
        "CIVIC_NOTIFIER_SMTP_PORT": str(free_port()),  # no mail in this test
    }
    supervisor = ProcessSupervisor(tmp_path / "logs")
    base = f"http://127.0.0.1:{port}"
    try:
        supervisor.start("notifier", [sys.executable, "-m", "civicsignals.notifier", "serve"], env=env)
        await supervisor.wait_http_ready_async("notifier", f"{base}/readyz", timeout=60)
        async with httpx.AsyncClient(base_url=base, headers=tenant.authorization, timeout=10) as client:
            partner = (await client.post("/v1/partners", json={"code": "woonpartners"})).json()
            response = await client.post(
                f"/v1/partners/{partner['id']}/endpoints", json={"url": receiver.url}
            )
            assert response.status_code == 201, response.text
            secret = response.json()["secret"]
        receiver.stop()  # the partner is down

        for _ in range(3):
            data = SignalRouted(
                signal_id=new_id(),
                case_id=new_id(),
                tracking_code="7KQ2-M9XD-4HTC",
                responsible="wonen",
                partners=["woonpartners"],
                priority="normal",
                rule_id="wonen",
            )
            await bus.publish(
                data.bus_subject(TENANT), make_event(tenant=TENANT, service="routing", data=data)
            )

        async def failing_for_a_while() -> dict[str, int] | None:
            attempts = await _attempts(database_url)
            return attempts if len(attempts) == 3 and min(attempts.values()) >= 3 else None

        await wait_until(failing_for_a_while, timeout=60, message="three attempts of each delivery")
        supervisor.kill("notifier")
        before = await _attempts(database_url)
        assert len(before) == 3

        receiver.start()
        supervisor.start("notifier")
        await supervisor.wait_http_ready_async("notifier", f"{base}/readyz", timeout=60)

        async def all_delivered() -> list[dict[str, Any]] | None:
            async with httpx.AsyncClient(base_url=base, headers=tenant.authorization, timeout=10) as client:
                items: list[dict[str, Any]] = (
                    await client.get("/v1/deliveries", params={"channel": "webhook"})
                ).json()["items"]
            return items if len(items) == 3 and all(d["status"] == "delivered" for d in items) else None

        delivered = await wait_until(all_delivered, timeout=60, message="every webhook after the restart")
        async with httpx.AsyncClient(base_url=base, headers=tenant.authorization, timeout=10) as client:
            details = [(await client.get(f"/v1/deliveries/{d['id']}")).json() for d in delivered]
    finally:
        logs = supervisor.log_tail("notifier", 40) if "notifier" in supervisor.names else ""
        supervisor.stop_all()

    ids = Counter(r.headers["webhook-id"] for r in receiver.delivered())
    assert set(ids) == set(before) and set(ids.values()) == {1}, logs
    assert all(Webhook(secret).verify(r.body, r.headers) for r in receiver.delivered())
    for item in details:
        # The schedule went on: attempt numbers continue from before the kill, they did not restart.
        assert item["attempts"] > before[item["message_id"]], (item, before)
        numbers = [attempt["number"] for attempt in item["attempt_log"]]
        assert numbers == list(range(1, item["attempts"] + 1))
        assert item["attempt_log"][-1]["outcome"] == "delivered"
        # An attempt cut off by the kill is marked abandoned; none stays in flight.
        assert all(attempt["outcome"] != "in_flight" for attempt in item["attempt_log"])
