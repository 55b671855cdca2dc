"""Fixtures of insights' tests: the service in-process on a real database and a real NATS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from civicsignals.common.bus import Bus
from civicsignals.common.events import CloudEvent
from civicsignals.devstack.nats import NatsServer
from civicsignals.insights.app import create_app
from civicsignals.insights.apply import (
    CASES,
    DAILY,
    FEEDBACK,
    INBOX,
    NOTES,
    NOTIFICATIONS,
    ROLLUP,
    SIGNALS,
    parse,
)
from civicsignals.insights.flows import InsightsContext, apply_events
from civicsignals.insights.projection import KIND_BY_TYPE
from civicsignals.insights.settings import InsightsSettings


@dataclass
class Insights:
    app: FastAPI
    client: httpx.AsyncClient
    key: str
    tenant: str
    tenants_dir: Path
    tenant_key: Any

    @property
    def ctx(self) -> InsightsContext:
        ctx: InsightsContext = self.app.state.insights
        return ctx

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def apply(self, events: Sequence[CloudEvent], batch: int = 300) -> None:
        """Apply events straight to the read model, as the consumers would."""
        parsed = [p for e in events if (p := parse(e)) is not None]
        for start in range(0, len(parsed), batch):
            await apply_events(self.ctx, parsed[start : start + batch])

    async def processed(self) -> int:
        async with self.ctx.runtime.sessions() as session:
            connection = await session.connection()
            query = select(func.count()).select_from(INBOX).where(INBOX.c.consumer.like("insights-%"))
            return int((await connection.execute(query)).scalar_one())

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every read-model table, sorted: two equal snapshots are the same read model."""
        result = {}
        async with self.ctx.runtime.sessions() as session:
            connection = await session.connection()
            for table in (DAILY, ROLLUP, SIGNALS, CASES, NOTES, FEEDBACK, NOTIFICATIONS):
                rows = (await connection.execute(select(table))).all()
                result[table.name] = sorted((tuple(row) for row in rows), key=repr)
        return result


def subject_of(event: CloudEvent) -> str:
    return KIND_BY_TYPE[event.type].model.bus_subject(event.tenant)


async def publish_all(bus: Bus, events: Sequence[CloudEvent]) -> None:
    for event in events:
        await bus.publish(subject_of(event), event)


@pytest.fixture
async def insights(
    database_url: str, nats_server: NatsServer, make_tenant, tmp_path: Path
) -> AsyncIterator[Insights]:
    tenant = make_tenant("gouda", scopes=["insights:read"], name="Gouda")
    settings = InsightsSettings(
        database_url=database_url,
        nats_url=nats_server.url,
        tenants_dir=tenant.tenants_dir,
        data_dir=tmp_path / "data",
        outbox_poll_interval_s=0.1,
        apply_batch_size=100,
        timezone="Europe/Amsterdam",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://insights") as client:
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
            yield Insights(app, client, tenant.key, "gouda", tenant.tenants_dir, tenant)
