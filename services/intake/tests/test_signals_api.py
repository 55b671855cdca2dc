"""Intake's HTTP API in-process, with its real database (SQLite and PostgreSQL) and a real NATS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import func, select

from civicsignals.common.bus import STREAM, stream_messages
from civicsignals.common.outbox import OutboxMessage
from civicsignals.devstack.nats import NatsServer
from civicsignals.intake.app import create_app
from civicsignals.intake.models import AuditRecord, Contact, IdempotencyRecord, Signal
from civicsignals.intake.settings import IntakeSettings

VALID = {
    "text": "Mijn buurman Jan zet zijn afval al weken naast de container. Bel mij op 06-12345678 of mail jan@example.org.",
    "channel": "web",
    "kind": "complaint",
    "location": {"lat": 52.01163, "lon": 4.71049, "address": {"street": "Kerkstraat", "number": "12"}},
    "reporter": {"name": "Jan Jansen", "email": "jan@example.org", "phone": "06-12345678", "consent": True},
    "metadata": {"portal_reference": "F-1"},
}


class Api:
    def __init__(self, app, client: httpx.AsyncClient, key: str) -> None:
        self.app = app
        self.client = client
        self.key = key

    @property
    def runtime(self):
        return self.app.state.runtime

    async def post(self, body: object, *, key: str | None = None, **headers: str) -> httpx.Response:
        content = body if isinstance(body, (str, bytes)) else json.dumps(body)
        all_headers = {
            "Authorization": f"Bearer {key or self.key}",
            "Content-Type": "application/json",
            **headers,
        }
        return await self.client.post("/v1/signals", content=content, headers=all_headers)

    async def count(self, model: type) -> int:
        async with self.runtime.sessions() as session:
            return int((await session.exec(select(func.count()).select_from(model))).one())


@pytest.fixture
async def api(database_url: str, nats_server: NatsServer, tenant_key, tmp_path: Path) -> AsyncIterator[Api]:
    settings = IntakeSettings(
        database_url=database_url,
        nats_url=nats_server.url,
        tenants_dir=tenant_key.tenants_dir,
        data_dir=tmp_path / "data",
        outbox_poll_interval_s=0.1,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
            yield Api(app, client, tenant_key.key)


async def test_a_valid_signal_is_stored_sealed_and_published_redacted(api: Api, wait_until) -> None:
    response = await api.post(VALID)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "tracking_code", "status_url"}
    assert response.headers["Location"] == f"/v1/signals/{body['id']}"
    assert response.headers["API-Version"]

    async with api.runtime.sessions() as session:
        signal = await session.get(Signal, body["id"])
        contact = await session.get(Contact, body["id"])
    assert signal is not None and signal.has_contact and signal.language == "nl"
    assert "[PHONE]" in signal.text_redacted and "[EMAIL]" in signal.text_redacted
    assert contact is not None and b"jan@example.org" not in contact.ciphertext

    messages = await wait_until(lambda: _stream(api), timeout=10, message="signal.received on the bus")
    assert [m.subject for m in messages] == ["civic.gouda.signal.received"]
    event = json.loads(messages[0].data)
    assert event["type"] == "nl.civicsignals.signal.received.v1" and event["subject"] == body["id"]
    data = event["data"]
    assert data["has_contact"] is True and data["kind"] == "complaint"
    assert data["location"]["lat"] == 52.012 and data["location"]["lon"] == 4.71
    raw = messages[0].data.decode()
    for secret in ("06-12345678", "jan@example.org", "Jan Jansen", "Kerkstraat"):
        assert secret not in raw


async def _stream(api: Api) -> list:
    return await stream_messages(api.runtime.bus.js, STREAM)


BAD_REQUESTS = [
    pytest.param("{not json", 400, "", id="malformed-json"),
    pytest.param({"channel": "web"}, 422, "/text", id="missing-text"),
    pytest.param({**VALID, "text": "   "}, 422, "/text", id="blank-text"),
    pytest.param({**VALID, "text": "x" * 10_001}, 422, "/text", id="text-too-long"),
    pytest.param({**VALID, "kind": "rant"}, 422, "/kind", id="unknown-kind"),
    pytest.param({**VALID, "channel": "pigeon"}, 422, "/channel", id="unknown-channel"),
    pytest.param(
        {**VALID, "reporter": {"email": "not-an-address", "consent": True}},
        422,
        "/reporter/email",
        id="bad-email",
    ),
    pytest.param({**VALID, "location": {"lat": 120, "lon": 4}}, 422, "/location/lat", id="bad-latitude"),
    pytest.param(
        {**VALID, "occurred_at": "2026-11-28T09:00:00"}, 422, "/occurred_at", id="time-without-zone"
    ),
    pytest.param([1, 2], 422, "", id="not-an-object"),
    # A field the contract does not have is refused, never dropped: a portal that sends the
    # resident's address as "contact" (the contract's name is "reporter") would otherwise get a 201
    # for a signal whose resident is never told anything.
    pytest.param(
        {**VALID, "contact": {"email": "bewoner@example.org", "consent": True}},
        422,
        "/contact",
        id="unknown-field",
    ),
    pytest.param(
        {**VALID, "reporter": {"mail": "bewoner@example.org", "consent": True}},
        422,
        "/reporter/mail",
        id="unknown-reporter-field",
    ),
    pytest.param(
        {**VALID, "location": {"lat": 52.01163, "lng": 4.71043}},
        422,
        "/location/lng",
        id="unknown-location-field",
    ),
    # Values SQLite stores and PostgreSQL refuses mid-transaction: refused before the route runs.
    pytest.param({**VALID, "text": "a\u0000b"}, 422, "/text", id="nul-in-text"),
    pytest.param({**VALID, "metadata": {"ref\u0000": "F-1"}}, 422, "/metadata/ref\u0000", id="nul-in-a-name"),
    pytest.param(
        json.dumps({**VALID, "metadata": {"depth": float("nan")}}), 422, "/metadata/depth", id="nan"
    ),
    pytest.param(
        json.dumps(VALID).replace('"lat": 52.01163', '"lat": -Infinity'), 422, "/location/lat", id="infinity"
    ),
    pytest.param(
        json.dumps({**VALID, "metadata": {"depth": 1}}).replace('"depth": 1', '"depth": 1e999'),
        422,
        "/metadata/depth",
        id="overflowing-number",
    ),
]


@pytest.mark.parametrize(("body", "status", "pointer"), BAD_REQUESTS)
async def test_bad_input_is_a_problem_and_stores_nothing(
    api: Api, body: object, status: int, pointer: str
) -> None:
    response = await api.post(body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert pointer in [error["pointer"] for error in problem["errors"]]
    assert await api.count(Signal) == 0 and await api.count(OutboxMessage) == 0


async def test_words_and_escapes_that_only_look_unstorable_pass(api: Api) -> None:
    """The input guard parses a body only when it may hold NUL, NaN or Infinity; these hold the
    words and a literal backslash, which are fine."""
    text = "NaN-bord op Infinity-plein, code \\u0000 en 1e999 liter water"
    response = await api.post({**VALID, "text": text, "metadata": {"note": "NaN", "max": 1e308}})
    assert response.status_code == 201, response.text
    assert await api.count(Signal) == 1


async def test_oversized_body_is_413(api: Api) -> None:
    response = await api.post({**VALID, "metadata": {"blob": "x" * 2_000_000}})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert await api.count(Signal) == 0


async def test_keys_and_scopes(api: Api, tenant_key, wait_until) -> None:
    assert (await api.client.post("/v1/signals", json=VALID)).status_code == 401
    assert (await api.post(VALID, key="cs_0000.nonsense")).status_code == 401
    _, reader = tenant_key.add_key(["cases:read"])

    async def refused_for_scope() -> httpx.Response | None:
        response = await api.post(VALID, key=reader)
        return response if response.status_code == 403 else None

    # A new key is picked up within moments of being written (the registry rescans on a miss).
    response = await wait_until(refused_for_scope, timeout=5, message="the new key to be known")
    assert response.headers["content-type"] == "application/problem+json"
    assert await api.count(Signal) == 0


async def test_idempotency_key_replays_refuses_other_bodies_and_survives_a_race(api: Api) -> None:
    first = await api.post(VALID, **{"Idempotency-Key": "abc-1"})
    again = await api.post(VALID, **{"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"
    other = await api.post({**VALID, "text": "iets anders"}, **{"Idempotency-Key": "abc-1"})
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert await api.count(Signal) == 1

    racing = await asyncio.gather(*(api.post(VALID, **{"Idempotency-Key": "race"}) for _ in range(5)))
    statuses = sorted(r.status_code for r in racing)
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    ids = {r.json()["id"] for r in racing if r.status_code == 201}
    assert len(ids) == 1
    assert await api.count(Signal) == 2 and await api.count(IdempotencyRecord) == 2


async def test_tracking_page_is_public_and_shows_no_personal_data(api: Api) -> None:
    created = (await api.post(VALID)).json()
    code = created["tracking_code"]
    response = await api.client.get(f"/v1/tracking/{code.lower().replace('-', ' ')}")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["tracking_code"] == code and page["status"] == "received"
    assert [entry["status"] for entry in page["history"]] == ["received"]
    assert page["received_at"].endswith("Z") or page["received_at"].endswith("+00:00")
    for secret in ("Jan", "example.org", "12345678", "Kerkstraat"):
        assert secret not in response.text
    missing = await api.client.get("/v1/tracking/0000-0000-0000")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


async def test_contact_lookup_answers_many_signals_once_each_within_the_tenant_audited(
    api: Api, tenant_key, make_tenant
) -> None:
    """notifier's look-up for the mails it sends at once: each signal asked for is answered once,
    with its contact or under ``missing``; another tenant's key finds nothing; every signal's read
    is audited on its own."""
    with_contact = (await api.post(VALID)).json()["id"]
    anonymous = (await api.post({key: value for key, value in VALID.items() if key != "reporter"})).json()[
        "id"
    ]
    _, notifier_key = tenant_key.add_key(["contact:read"])
    headers = {"Authorization": f"Bearer {notifier_key}"}
    asked = [with_contact, anonymous, "01NOSUCHSIGNAL0000000000000", with_contact]
    response = await api.client.post("/v1/contacts/lookup", json={"signal_ids": asked}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [contact["signal_id"] for contact in body["contacts"]] == [with_contact]
    assert body["contacts"][0]["email"] == "jan@example.org" and body["contacts"][0]["consent"] is True
    assert body["missing"] == [anonymous, "01NOSUCHSIGNAL0000000000000"]

    stranger = make_tenant("utrecht", ["contact:read"])
    hidden = await api.client.post(
        "/v1/contacts/lookup", json={"signal_ids": [with_contact]}, headers=stranger.authorization
    )
    assert hidden.status_code == 200 and hidden.json() == {"contacts": [], "missing": [with_contact]}
    _, portal_key = tenant_key.add_key(["signals:write"])
    forbidden = await api.client.post(
        "/v1/contacts/lookup",
        json={"signal_ids": [with_contact]},
        headers={"Authorization": f"Bearer {portal_key}"},
    )
    assert forbidden.status_code == 403
    for wrong in (
        {"signal_ids": []},
        {"signal_ids": [f"id{i}" for i in range(101)]},
        {"ids": [with_contact]},
    ):
        refused = await api.client.post("/v1/contacts/lookup", json=wrong, headers=headers)
        assert refused.status_code == 422, wrong
        assert refused.headers["content-type"] == "application/problem+json"
        assert {error["pointer"] for error in refused.json()["errors"]} & {"/signal_ids", "/ids"}

    async with api.runtime.sessions() as session:
        audit = (await session.exec(select(AuditRecord))).all()
    assert [(a.action, a.object, a.result, a.tenant) for a in audit] == [
        ("contact.read", f"signal:{with_contact}", "ok", "gouda"),
        ("contact.read", f"signal:{anonymous}", "not_found", "gouda"),
        ("contact.read", "signal:01NOSUCHSIGNAL0000000000000", "not_found", "gouda"),
        ("contact.read", f"signal:{with_contact}", "not_found", "utrecht"),
    ]


async def test_contact_endpoint_needs_its_scope_stays_in_the_tenant_and_is_audited(
    api: Api, tenant_key, make_tenant
) -> None:
    created = (await api.post(VALID)).json()
    _, notifier_key = tenant_key.add_key(["contact:read"])
    headers = {"Authorization": f"Bearer {notifier_key}"}
    response = await api.client.get(f"/v1/signals/{created['id']}/contact", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "jan@example.org" and response.json()["consent"] is True

    _, portal_key = tenant_key.add_key(["signals:write"])
    forbidden = await api.client.get(
        f"/v1/signals/{created['id']}/contact", headers={"Authorization": f"Bearer {portal_key}"}
    )
    assert forbidden.status_code == 403
    stranger = make_tenant("utrecht", ["contact:read"])
    hidden = await api.client.get(f"/v1/signals/{created['id']}/contact", headers=stranger.authorization)
    assert hidden.status_code == 404

    async with api.runtime.sessions() as session:
        audit = (await session.exec(select(AuditRecord))).all()
    assert [(a.action, a.result, a.tenant) for a in audit] == [
        ("contact.read", "ok", "gouda"),
        ("contact.read", "not_found", "utrecht"),
    ]
    assert all("example.org" not in f"{a.actor}{a.object}" for a in audit)


async def test_an_app_that_is_not_serving_leaves_the_collector_alone(api: Api) -> None:
    """Tests and embedding applications share their process: only ``serve`` tunes the collector."""
    import gc

    assert (await api.client.get("/livez")).status_code == 200
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] != 20_000
