"""Routing in-process: its real database (SQLite and PostgreSQL), a real NATS, real tenant folders."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlmodel import col, select

from civicsignals.common.events import CoarseLocation, SignalClassified, make_event
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.common.outbox import OutboxMessage
from civicsignals.common.tenants import add_key
from civicsignals.devstack.nats import NatsServer
from civicsignals.routing import flows
from civicsignals.routing.app import create_app
from civicsignals.routing.models import Case
from civicsignals.routing.settings import RoutingSettings

DEPARTMENTS = ["kcc", "afval", "wonen", "handhaving", "sociaal", "directie"]
PARTNERS = [{"code": "woonpartners", "name": "Woonpartners"}, {"code": "welzijn", "name": "Welzijn Gouda"}]
TAXONOMY = {
    "version": 1,
    "topics": [
        {"code": "afval", "subtopics": [{"code": "container"}]},
        {"code": "wonen", "subtopics": [{"code": "onderhoud"}]},
        {"code": "overlast"},
        {"code": "zorg"},
    ],
}
RULES = """\
version: 3
triage:
  responsible: kcc
  below_confidence: 0.3
  sla_days: 2
  service_promise: "Binnen 2 werkdagen bij de juiste afdeling."
escalation:
  - {after_days: 0, inform: [kcc]}
  - {after_days: 2, inform: [directie]}
rules:
  - id: wonen-schimmel
    when: {topic: wonen, words: [schimmel, lekkage]}
    then:
      responsible: wonen
      informed: [handhaving, sociaal]
      partners: [woonpartners]
      priority: high
      sla_days: 5
      service_promise: "Woonpartners en de gemeente pakken dit binnen 5 werkdagen op."
  - id: wonen
    when: {topic: wonen}
    then: {responsible: wonen, sla_days: 10}
  - id: afval
    when: {topic: afval}
    then: {responsible: afval, sla: {days: 3, type: calendar}, service_promise: "Binnen 3 dagen weg."}
"""


@dataclass
class Keys:
    admin: str
    coordinator: str
    afval: str
    wonen: str
    kcc: str
    woonpartners: str
    welzijn: str
    other_tenant: str
    folder: Path
    tenants_dir: Path
    ids: dict[str, str] = field(default_factory=dict)


def write_tenant_files(folder: Path, rules: str = RULES) -> None:
    (folder / "partners.yaml").write_text(yaml.safe_dump({"partners": PARTNERS}), encoding="utf-8")
    (folder / "taxonomy.yaml").write_text(yaml.safe_dump(TAXONOMY), encoding="utf-8")
    (folder / "rules.yaml").write_text(rules, encoding="utf-8")


@pytest.fixture
def keys(make_tenant) -> Keys:
    gouda = make_tenant("gouda", departments=DEPARTMENTS)
    write_tenant_files(gouda.folder)
    delft = make_tenant("delft", departments=DEPARTMENTS)
    write_tenant_files(delft.folder)
    folder = gouda.folder
    made = {
        "coordinator": add_key(folder, ["cases:read", "cases:write", "rules:admin"]),
        "afval": add_key(folder, ["cases:read", "cases:write"], departments=["afval"]),
        "wonen": add_key(folder, ["cases:read", "cases:write"], departments=["wonen"]),
        "kcc": add_key(folder, ["cases:read", "cases:write"], departments=["kcc"]),
        "woonpartners": add_key(folder, ["partner:woonpartners"]),
        "welzijn": add_key(folder, ["partner:welzijn"]),
    }
    return Keys(
        admin=gouda.key,
        other_tenant=delft.key,
        folder=folder,
        tenants_dir=gouda.tenants_dir,
        ids={name: key_id for name, (key_id, _) in made.items()} | {"admin": gouda.key_id},
        **{name: key for name, (_, key) in made.items()},
    )


class Api:
    def __init__(self, app: Any, client: httpx.AsyncClient, keys: Keys) -> None:
        self.app = app
        self.client = client
        self.keys = keys

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def ctx(self) -> flows.RoutingContext:
        context: flows.RoutingContext = self.app.state.routing
        return context

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def get(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(key or self.keys.admin), params=params)

    async def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(key or self.keys.admin))

    async def move(self, case_id: str, to: str, key: str | None = None, **extra: Any) -> httpx.Response:
        return await self.post(f"/v1/cases/{case_id}/transitions", {"to": to, **extra}, key)

    async def route(self, tenant: str = "gouda", **overrides: Any) -> Case:
        """Route a classified signal as the consumer does, and return its case."""
        data: dict[str, Any] = {
            "signal_id": new_id(),
            "topic": "afval",
            "subtopic": None,
            "confidence": 0.9,
            "alternatives": [],
            "language": "nl",
            "kind": "report",
            "needs_review": False,
            "model_version": "test",
            "tracking_code": new_tracking_code(),
            "channel": "web",
            "text": "Afval naast de container.",
            "location": CoarseLocation(area="centrum", district="binnenstad"),
            "received_at": datetime.now(UTC),
        }
        data.update(overrides)
        event = make_event(tenant=tenant, service="classifier", data=SignalClassified(**data))
        assert await flows.route_signal(self.ctx, event)
        async with self.runtime.sessions() as session:
            case = (await session.exec(select(Case).where(Case.signal_id == data["signal_id"]))).one()
        return case

    async def outbox(self, subject_part: str = "") -> list[tuple[str, dict[str, Any]]]:
        """Events in the outbox (published or not) whose subject contains ``subject_part``, in order."""
        async with self.runtime.sessions() as session:
            rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
        return [(row.subject, json.loads(row.payload)) for row in rows if subject_part in row.subject]


@pytest.fixture
async def api(database_url: str, nats_server: NatsServer, keys: Keys, tmp_path: Path) -> AsyncIterator[Api]:
    settings = RoutingSettings(
        database_url=database_url,
        nats_url=nats_server.url,
        tenants_dir=keys.tenants_dir,
        data_dir=tmp_path / "data",
        outbox_poll_interval_s=0.1,
        overdue_check_interval_s=3600,
        rules_watch_interval_s=3600,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
            yield Api(app, client, keys)
            # Let the relay finish before the bus closes: closing while a publish is in flight
            # makes the client's drain wait for its timeout.
            relay = app.state.runtime.relay
            for _ in range(200):
                if await relay.pending() == 0:
                    break
                await asyncio.sleep(0.05)
