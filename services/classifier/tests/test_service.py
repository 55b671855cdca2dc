"""The classifier service in-process: its API, the model registry, and its consumers over a real NATS,
with its real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlmodel import func, select

from civicsignals.classifier import service
from civicsignals.classifier.app import create_app
from civicsignals.classifier.model.inference import read_card
from civicsignals.classifier.models import Correction, ModelActivation
from civicsignals.classifier.pipeline import TrainOptions, train_bundle
from civicsignals.classifier.settings import ClassifierSettings
from civicsignals.common.bus import STREAM, Bus, stream_messages
from civicsignals.common.events import (
    ConversationReceived,
    ConversationTurn,
    SignalReceived,
    SignalReclassified,
    make_event,
)
from civicsignals.common.ids import new_id
from civicsignals.devstack.nats import NatsServer

FAST = TrainOptions(encoder=False, learning_curve=False, C_grid=(10.0,))


class Service:
    def __init__(
        self, app: FastAPI, client: httpx.AsyncClient, key: str, settings: ClassifierSettings
    ) -> None:
        self.app = app
        self.client = client
        self.key = key
        self.settings = settings

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def classify(self, text: str, key: str | None = None) -> httpx.Response:
        return await self.client.post("/v1/classify", json={"text": text}, headers=self.headers(key))

    async def register(self, tenant: str, bundle: Path) -> str:
        version, target = service.install_bundle(self.settings.models_dir, tenant, bundle)
        async with self.runtime.sessions() as session, session.begin():
            await service.register(session, tenant, read_card(target), kind="trained", actor="test")
        return version


@pytest.fixture
async def svc(
    database_url: str, nats_server: NatsServer, make_tenant, models_dir: Path, tmp_path: Path
) -> AsyncIterator[Service]:
    tenant = make_tenant("gouda", settings={"classifier": {"review_threshold": 0.05}})
    settings = ClassifierSettings(
        database_url=database_url,
        nats_url=nats_server.url,
        tenants_dir=tenant.tenants_dir,
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        outbox_poll_interval_s=0.1,
        registry_refresh_s=0.2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://classifier") as client:
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=10)
            yield Service(app, client, tenant.key, settings)


@pytest.fixture
def trained_bundle(tmp_path: Path, reports_csv: Path) -> Path:
    from civicsignals.classifier.data import read_labelled

    out = tmp_path / "trained"
    train_bundle(read_labelled(reports_csv), out, options=FAST, version="v1-test", progress=lambda _m: None)
    return out


async def test_classify_with_the_coldstart_model(svc: Service) -> None:
    response = await svc.classify("Er ligt afval naast de container op de Kerkstraat.")
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["topic"] == "afval" and result["model_version"].startswith("coldstart-")
    assert result["language"] == "nl" and len(result["alternatives"]) == 3
    assert result["needs_review"] == (result["confidence"] < 0.05)  # the tenant's threshold

    batch = await svc.client.post(
        "/v1/classify",
        json={"texts": ["The bin was not emptied", "Ik wil mijn paspoort verlengen"]},
        headers=svc.headers(),
    )
    assert [r["language"] for r in batch.json()["results"]] == ["en", "nl"]
    bad = await svc.client.post("/v1/classify", json={"texts": ["ok", "  "]}, headers=svc.headers())
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/texts/1"


async def test_register_activate_and_roll_back_without_restart(
    svc: Service, trained_bundle: Path, make_tenant
) -> None:
    listing = (await svc.client.get("/v1/models", headers=svc.headers())).json()
    assert listing["active_version"] is None and listing["items"][0]["kind"] == "coldstart"
    coldstart_version = listing["serving_version"]

    version = await svc.register("gouda", trained_bundle)
    assert (svc.settings.models_dir / "gouda" / version / "model.onnx").exists()
    listing = (await svc.client.get("/v1/models", headers=svc.headers())).json()
    assert [i["version"] for i in listing["items"] if i["kind"] == "trained"] == ["v1-test"]
    assert listing["serving_version"] == coldstart_version  # registered is not active

    reader = make_tenant("gouda", ["signals:read"]).key
    forbidden = await svc.client.post(f"/v1/models/{version}:activate", headers=svc.headers(reader))
    assert forbidden.status_code == 403
    missing = await svc.client.post("/v1/models/nope:activate", headers=svc.headers())
    assert missing.status_code == 404
    assert (await svc.client.get("/v1/models/bad%20name", headers=svc.headers())).status_code == 422

    activated = await svc.client.post(f"/v1/models/{version}:activate", headers=svc.headers())
    assert activated.status_code == 200, activated.text
    assert activated.json()["active_version"] == activated.json()["serving_version"] == "v1-test"
    result = (await svc.classify("de lantaarnpaal is kapot")).json()["results"][0]
    assert (result["model_version"], result["topic"]) == ("v1-test", "verlichting")
    card = (await svc.client.get(f"/v1/models/{version}", headers=svc.headers(reader))).json()
    assert card["card"]["version"] == "v1-test" and card["card"]["heldout"]["n"] > 0

    rolled = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert rolled.status_code == 200 and rolled.json()["active_version"] is None
    assert rolled.json()["serving_version"] == coldstart_version
    assert (await svc.classify("de lantaarnpaal is kapot")).json()["results"][0][
        "model_version"
    ] == coldstart_version
    again = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert again.json()["active_version"] == "v1-test"  # rollback undoes the last change

    async with svc.runtime.sessions() as session:
        history = (await session.exec(select(ModelActivation).order_by(ModelActivation.id))).all()
    assert [(h.action, h.version) for h in history] == [
        ("activate", "v1-test"),
        ("rollback", None),
        ("rollback", "v1-test"),
    ]


async def test_a_refresh_that_read_before_an_activation_does_not_undo_it(
    svc: Service, trained_bundle: Path
) -> None:
    """The refresh loop reads the database, then syncs: an activation through the API in between
    must survive that sync (under load this race once rolled a rollback back)."""
    version = await svc.register("gouda", trained_bundle)
    registry = svc.app.state.classifier.registry
    read_after = registry.applied
    stale = {"gouda": None}  # what a refresh read just before the activation: the cold start
    activated = await svc.client.post(f"/v1/models/{version}:activate", headers=svc.headers())
    assert activated.status_code == 200 and registry.serving_version("gouda") == version
    await registry.sync(stale, read_after=read_after)
    assert registry.serving_version("gouda") == version
    await registry.sync(stale)  # the same read without its time would undo the activation
    assert registry.serving_version("gouda") != version


async def test_another_replica_follows_an_activation(svc: Service, trained_bundle: Path, wait_until) -> None:
    """Another process that shares the database and folder picks the version up by itself."""
    version = await svc.register("gouda", trained_bundle)
    async with svc.runtime.sessions() as session, session.begin():
        await service.activate(session, "gouda", version, actor="test")  # as another replica's API would
    registry = svc.app.state.classifier.registry
    await wait_until(lambda: registry.serving_version("gouda") == version, timeout=5, message="refresh")


async def test_nothing_to_roll_back(svc: Service) -> None:
    response = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert response.status_code == 409 and response.headers["content-type"] == "application/problem+json"


async def _classified(bus_url: str) -> list[dict[str, Any]]:
    bus = Bus(bus_url, service="test")
    await bus.connect(retry_forever=False)
    try:
        messages = await stream_messages(bus.js, STREAM)
    finally:
        await bus.close()
    return [json.loads(m.data) for m in messages if m.subject.endswith(".signal.classified")]


def _received(text: str, **extra: Any) -> SignalReceived:
    return SignalReceived(
        signal_id=new_id(),
        tracking_code="ABCD-EFGH-JKLM",
        kind="report",
        channel="web",
        text=text,
        received_at=datetime.now(UTC),
        has_contact=False,
        source="test",
        **extra,
    )


async def test_signals_are_classified_in_batches_once_each(svc: Service, bus: Bus, wait_until) -> None:
    texts = [
        "Er ligt afval naast de container",
        "The streetlight in front of my house is broken",
        "Ik wil mijn paspoort verlengen",
        "Het gras in het park is niet gemaaid",
    ]
    events = [make_event(tenant="gouda", service="intake", data=_received(t)) for t in texts]
    for event in events:
        await bus.publish(SignalReceived.bus_subject("gouda"), event)
    await bus.publish(SignalReceived.bus_subject("gouda"), events[0].model_copy(update={}))  # a redelivery

    async def all_out() -> list[dict[str, Any]] | None:
        found = await _classified(svc.settings.nats_url)
        return found if len(found) >= len(texts) else None

    found = await wait_until(all_out, timeout=15, message="signal.classified for every signal")
    await asyncio.sleep(0.5)
    found = await _classified(svc.settings.nats_url)
    assert len(found) == len(texts)  # the duplicate was not classified twice
    by_signal = {e["data"]["signal_id"]: e["data"] for e in found}
    first = by_signal[events[0].data["signal_id"]]
    assert first["topic"] == "afval" and first["model_version"].startswith("coldstart-")
    assert first["topics"][0]["topic"] == "afval" and first["language"] == "nl"
    assert by_signal[events[1].data["signal_id"]]["language"] == "en"
    assert first["imported"] is False


async def test_corrections_are_stored_idempotently(svc: Service, bus: Bus, wait_until) -> None:
    signal_id = new_id()

    def correction(topic: str, minutes: int) -> Any:
        event = make_event(
            tenant="gouda",
            service="routing",
            data=SignalReclassified(
                signal_id=signal_id,
                case_id=new_id(),
                topic=topic,
                subtopic="container",
                previous_topic="schoon",
                text="Er staan vuilniszakken naast de container",
                actor="key:abc",
            ),
        )
        return event.model_copy(update={"time": datetime.now(UTC) + timedelta(minutes=minutes)})

    newer, older = correction("afval", 5), correction("schoon", 0)
    subject = SignalReclassified.bus_subject("gouda")
    for event in (newer, newer, older):  # a duplicate, then an older correction delivered late
        await bus.publish(subject, event)

    async def rows() -> list[Correction]:
        async with svc.runtime.sessions() as session:
            return list((await session.exec(select(Correction))).all())

    async def processed() -> int:
        async with svc.runtime.sessions() as session:
            from civicsignals.common.inbox import ProcessedEvent

            query = (
                select(func.count())
                .select_from(ProcessedEvent)
                .where(ProcessedEvent.consumer == "classifier-signal-reclassified")
            )
            return int((await session.exec(query)).one())

    await wait_until(lambda: _eq(processed(), 2), timeout=10, message="both corrections handled")
    [row] = await rows()
    assert (row.topic, row.subtopic, row.event_id) == ("afval", "container", newer.id)
    async with svc.runtime.sessions() as session:
        data = service.corrections_as_data(await service.corrections(session, "gouda"))
    assert data.texts == ["Er staan vuilniszakken naast de container"] and data.labels == [
        ("afval", "container")
    ]


async def _eq(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_a_conversation_may_carry_several_topics(svc: Service, bus: Bus, wait_until) -> None:
    conversation = ConversationReceived(
        signal_id=new_id(),
        channel="phone",
        started_at=datetime.now(UTC),
        duration_s=120,
        turns=[
            ConversationTurn(speaker="agent", text="Gemeente Gouda, goedemorgen."),
            ConversationTurn(
                speaker="citizen", text="Ik wil mijn paspoort verlengen, wanneer kan ik langskomen?"
            ),
            ConversationTurn(speaker="agent", text="Dat kan morgen."),
            ConversationTurn(
                speaker="citizen", text="En de lantaarnpaal bij mij voor de deur is al weken kapot."
            ),
            ConversationTurn(speaker="citizen", text="Dank u."),
        ],
    )
    await bus.publish(
        ConversationReceived.bus_subject("gouda"),
        make_event(tenant="gouda", service="intake", data=conversation),
    )

    async def out() -> list[dict[str, Any]]:
        return [
            e
            for e in await _classified(svc.settings.nats_url)
            if e["data"]["signal_id"] == conversation.signal_id
        ]

    [event] = await wait_until(out, timeout=15, message="the conversation's signal.classified")
    data = event["data"]
    topics = [t["topic"] for t in data["topics"]]
    assert data["topic"] == topics[0] and data["channel"] == "phone" and data["language"] == "nl"
    assert {"burgerzaken", "wegen-verkeer-straatmeubilair"} <= set(topics), data["topics"]
    assert "Gemeente Gouda" not in data["text"]  # only the citizen's turns


async def test_a_tenant_with_its_own_taxonomy_gets_its_own_coldstart(
    svc: Service, make_tenant, wait_until
) -> None:
    delft = make_tenant("delft")
    taxonomy = {
        "version": 3,
        "topics": [
            {
                "code": "grachten",
                "name_nl": "Grachten",
                "name_en": "Canals",
                "description_nl": "Alles over de grachten, kademuren en bruggen over het water.",
                "subtopics": [
                    {
                        "code": "kademuur",
                        "name_nl": "Kademuur",
                        "name_en": "Quay wall",
                        "description_nl": "Een kademuur verzakt, scheurt of brokkelt af.",
                    },
                    {
                        "code": "drijfvuil",
                        "name_nl": "Drijfvuil",
                        "name_en": "Floating litter",
                        "description_nl": "Afval, flessen en plastic drijven in de gracht.",
                    },
                ],
            },
            {
                "code": "fietsen",
                "name_nl": "Fietsen",
                "name_en": "Bicycles",
                "description_nl": "Fietsenstallingen, weesfietsen en fietspaden.",
                "subtopics": [
                    {
                        "code": "weesfiets",
                        "name_nl": "Weesfiets",
                        "name_en": "Abandoned bike",
                        "description_nl": "Een achtergelaten fiets staat al weken op dezelfde plek.",
                    },
                    {
                        "code": "stalling",
                        "name_nl": "Fietsenstalling",
                        "name_en": "Bike parking",
                        "description_nl": "De fietsenstalling is vol of kapot.",
                    },
                ],
            },
        ],
    }
    (delft.folder / "taxonomy.yaml").write_text(
        yaml.safe_dump(taxonomy, allow_unicode=True), encoding="utf-8"
    )

    async def classified() -> dict[str, Any] | None:
        response = await svc.classify("Er drijft veel plastic en afval in de gracht", key=delft.key)
        return response.json()["results"][0] if response.status_code == 200 else None

    result = await wait_until(classified, timeout=30, message="delft's own cold-start model")
    assert (result["topic"], result["subtopic"]) == ("grachten", "drijfvuil")
    assert result["model_version"].startswith("coldstart-3-")
    gouda = (await svc.classify("Er drijft veel plastic en afval in de gracht")).json()["results"][0]
    assert gouda["topic"] != "grachten"  # gouda keeps the default taxonomy
