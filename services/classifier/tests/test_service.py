"""The classifier service in-process: its API, the model registry, and its consumers over a real NATS,
with its real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
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
from civicsignals.classifier.registry import TaxonomyRefused
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

from .test_tenant_taxonomy import GOOD

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
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
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
    # gouda's review_threshold (0.05) is for trained models: the cold start keeps its card's 0.1.
    assert result["needs_review"] == (result["confidence"] < 0.1)

    batch = await svc.client.post(
        "/v1/classify",
        json={"texts": ["The bin was not emptied", "Ik wil mijn paspoort verlengen"]},
        headers=svc.headers(),
    )
    assert [r["language"] for r in batch.json()["results"]] == ["en", "nl"]
    bad = await svc.client.post("/v1/classify", json={"texts": ["ok", "  "]}, headers=svc.headers())
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/texts/1"
    misspelt = await svc.client.post(
        "/v1/classify", json={"txt": "De lantaarnpaal is kapot."}, headers=svc.headers()
    )
    assert misspelt.status_code == 422
    assert "/txt" in [error["pointer"] for error in misspelt.json()["errors"]]


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
    # A second rollback goes further back, not forward again: before v1-test there was nothing.
    again = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"
    assert "nothing left to roll back to" in again.json()["detail"]
    assert (await svc.client.get("/v1/models", headers=svc.headers())).json()["active_version"] is None

    async with svc.runtime.sessions() as session:
        history = (await session.exec(select(ModelActivation).order_by(ModelActivation.id))).all()
    assert [(h.action, h.version) for h in history] == [("activate", "v1-test"), ("rollback", None)]


def _as_version(bundle: Path, target: Path, version: str) -> Path:
    """A copy of a bundle under another version (the same model: what matters here is its name)."""
    shutil.copytree(bundle, target)
    card = json.loads((target / "card.json").read_text(encoding="utf-8"))
    card["version"] = version
    (target / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return target


async def test_each_rollback_walks_one_step_further_back(
    svc: Service, trained_bundle: Path, tmp_path: Path
) -> None:
    """A, B, C activated: rollback serves B, the next rollback A (not C again: a double click on
    rollback must not bring back the model just rolled back from), then the cold start, then 409."""
    for name in ("a", "b", "c"):
        await svc.register("gouda", _as_version(trained_bundle, tmp_path / name, f"v-{name}"))
        response = await svc.client.post(f"/v1/models/v-{name}:activate", headers=svc.headers())
        assert response.status_code == 200, response.text
    registry = svc.app.state.classifier.registry

    served = []
    for _ in range(3):
        rolled = await svc.client.post("/v1/models:rollback", headers=svc.headers())
        assert rolled.status_code == 200, rolled.text
        served.append((rolled.json()["active_version"], registry.serving_version("gouda")))
    assert [active for active, _ in served] == ["v-b", "v-a", None]
    assert served[0][1] == "v-b" and served[1][1] == "v-a" and served[2][1].startswith("coldstart-")
    nowhere = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert nowhere.status_code == 409 and nowhere.headers["content-type"] == "application/problem+json"
    assert "nothing left to roll back to" in nowhere.json()["detail"]

    # Activating again starts a new step; rolling back from it skips the versions rolled back from.
    await svc.client.post("/v1/models/v-c:activate", headers=svc.headers())
    await svc.client.post("/v1/models/v-a:activate", headers=svc.headers())
    rolled = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert rolled.json()["active_version"] == "v-c"
    rolled = await svc.client.post("/v1/models:rollback", headers=svc.headers())
    assert rolled.json()["active_version"] is None  # what served before v-c was rolled back from
    async with svc.runtime.sessions() as session:
        history = (await session.exec(select(ModelActivation).order_by(ModelActivation.id))).all()
    assert [(h.action, h.version) for h in history][-5:] == [
        ("rollback", None),
        ("activate", "v-c"),
        ("activate", "v-a"),
        ("rollback", "v-c"),
        ("rollback", None),
    ]


def test_rollback_history_of_older_rows_and_simultaneous_rollbacks() -> None:
    """Rows written by the former rule (a second rollback undid the first) and two rollbacks that
    raced each other: the version a row says is what served, and the next rollback goes on from it."""

    def rows(*pairs: tuple[str, str | None]) -> list[ModelActivation]:
        return [ModelActivation(tenant="t", action=a, version=v, actor="test") for a, v in pairs]

    former = rows(
        ("activate", "a"), ("activate", "b"), ("activate", "c"), ("rollback", "b"), ("rollback", "c")
    )
    assert service.rollback_stack(former) == ["a", "c"]
    raced = rows(
        ("activate", "a"), ("activate", "b"), ("activate", "c"), ("rollback", "b"), ("rollback", "b")
    )
    assert service.rollback_stack(raced) == ["a", "b"]
    again = rows(("activate", "a"), ("activate", "a"), ("activate", "b"), ("rollback", "a"))
    assert service.rollback_stack(again) == ["a"]  # activating the version in force is no step


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


def _write(path: Path, text: str) -> None:
    """Write a tenant file with a modification time of its own (registries compare them)."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    stamp = max(previous + 1_000_000_000, path.stat().st_mtime_ns)
    os.utime(path, ns=(stamp, stamp))


def _refused(tenants: Any, code: str) -> bool:
    """Whether the tenant registry refused ``code``'s folder (after reading changed folders)."""
    tenants.codes()
    return code in tenants.errors


async def test_the_tenant_threshold_is_for_trained_models_the_cold_start_keeps_its_own(
    svc: Service, trained_bundle: Path, make_tenant, wait_until
) -> None:
    """A review_threshold tuned for a trained model (0.5) would send most cold-start predictions
    to triage, e.g. after a rollback to the cold start: the cold start is less sure of itself (of
    bench/classifier's 300 residents' reports, 33% reach 0.5 and 81% its own 0.1)."""
    leiden = make_tenant("leiden", settings={"classifier": {"review_threshold": 0.5}})
    texts = [  # each between the two thresholds
        "Losse stoeptegel voor de deur",
        "Mijn buren maken veel lawaai",
        "Ratten bij de vuilnisbakken",
    ]

    async def classify() -> list[dict[str, Any]]:
        response = await svc.client.post(
            "/v1/classify", json={"texts": texts}, headers=svc.headers(leiden.key)
        )
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    results = await classify()
    assert all(r["model_version"].startswith("coldstart-") for r in results)
    assert all(0.1 <= r["confidence"] < 0.5 for r in results), results  # above the card's 0.1
    assert not any(r["needs_review"] for r in results)
    listing = (await svc.client.get("/v1/models", headers=svc.headers(leiden.key))).json()
    assert listing["threshold"] == 0.1

    # The cold start's own threshold is a setting of its own.
    settings = {"name": "Leiden", "classifier": {"review_threshold": 0.5, "cold_start_review_threshold": 0.6}}
    _write(leiden.folder / "tenant.yaml", yaml.safe_dump(settings))

    async def all_in_review() -> bool:
        return all(r["needs_review"] for r in await classify())

    await wait_until(all_in_review, timeout=10, message="cold_start_review_threshold in force")

    # A trained model: the tenant's review_threshold applies.
    version = await svc.register("leiden", trained_bundle)
    activated = await svc.client.post(f"/v1/models/{version}:activate", headers=svc.headers(leiden.key))
    assert activated.json()["threshold"] == 0.5
    for result in await classify():
        assert result["model_version"] == version
        assert result["needs_review"] == (result["confidence"] < 0.5)
    # Rolled back to the cold start: its threshold again, not the trained model's.
    rolled = await svc.client.post("/v1/models:rollback", headers=svc.headers(leiden.key))
    assert rolled.json()["active_version"] is None and rolled.json()["threshold"] == 0.6


#: A tenant's own taxonomy as a municipality may well write it: Dutch names only, not every
#: description (the tenant schema requires codes only).
DUTCH_ONLY = (
    GOOD.replace("version: 2", "version: 4") + "      - code: stalling\n        name_nl: Fietsenstalling\n"
)
#: A broken change of it: a topic code used twice, which the classifier cannot use.
TWICE = DUTCH_ONLY.replace("code: fietsen", "code: grachten")
CANAL = "Er drijft veel plastic en afval in de gracht"


async def test_a_tenants_own_taxonomy_is_used_and_a_broken_change_keeps_it(
    svc: Service, make_tenant, wait_until
) -> None:
    delft = make_tenant("delft")
    path = delft.folder / "taxonomy.yaml"
    _write(path, DUTCH_ONLY)

    async def classified() -> dict[str, Any] | None:
        response = await svc.classify(CANAL, key=delft.key)
        return response.json()["results"][0] if response.status_code == 200 else None

    result = await wait_until(classified, timeout=30, message="delft's own cold-start model")
    assert (result["topic"], result["subtopic"]) == ("grachten", "drijfvuil")
    assert result["model_version"].startswith("coldstart-4-")

    _write(path, TWICE)
    tenants = svc.runtime.tenants
    await wait_until(lambda: _refused(tenants, "delft"), timeout=10, message="delft refused")
    assert f"{path} line 13: topic code 'grachten' is listed twice" in tenants.errors["delft"]
    again = await classified()
    assert again is not None and again["model_version"] == result["model_version"]
    assert (again["topic"], again["subtopic"]) == ("grachten", "drijfvuil")


async def test_a_tenant_never_loaded_with_a_taxonomy_of_its_own_waits_for_it(
    svc: Service, bus: Bus, wait_until, tmp_path: Path
) -> None:
    """A folder refused since the service started (no last good version) that has its own taxonomy:
    its signals are not classified with the default taxonomy; they wait until the file is fixed."""
    tenants = svc.runtime.tenants
    folder = tenants.root / "delft"
    folder.mkdir()
    _write(folder / "tenant.yaml", yaml.safe_dump({"name": "Delft"}))
    _write(folder / "taxonomy.yaml", TWICE)
    await wait_until(lambda: _refused(tenants, "delft"), timeout=10, message="delft refused")
    with pytest.raises(TaxonomyRefused):
        svc.app.state.classifier.serving_model("delft")

    event = make_event(tenant="delft", service="intake", data=_received(CANAL))
    await bus.publish(SignalReceived.bus_subject("delft"), event)

    async def out() -> list[dict[str, Any]]:
        return [e for e in await _classified(svc.settings.nats_url) if e["subject"] == event.subject]

    await asyncio.sleep(2)
    assert await out() == []  # not classified with the default taxonomy

    _write(folder / "taxonomy.yaml", DUTCH_ONLY)
    [classified] = await wait_until(out, timeout=40, message="delft's signal, once its taxonomy is fixed")
    assert (classified["data"]["topic"], classified["data"]["subtopic"]) == ("grachten", "drijfvuil")
