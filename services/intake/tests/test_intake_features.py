"""Signals with areas, conversations, attachments, feedback, tenant isolation, CORS and limits.

In-process over the real database (SQLite and PostgreSQL) and a real NATS server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from civicsignals.common.events import (
    CaseDepartmentsChanged,
    CaseStatusChanged,
    DepartmentAssigned,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.common.outbox import OutboxMessage
from civicsignals.common.tenants import add_key
from civicsignals.intake import service
from civicsignals.intake.app import create_app
from civicsignals.intake.models import (
    Attachment,
    AuditRecord,
    Contact,
    Conversation,
    Feedback,
    IdempotencyRecord,
    Signal,
)

from .conftest import GOUDA_ORIGIN, HEIC, JPEG, PDF, PNG, SCRIPT, SIGNAL, UTRECHT_ORIGIN, WEBP, Intake
from .test_following import assigned, change, routed

# -- location and area -----------------------------------------------------------------------------


async def test_area_and_district_come_from_the_polygons_and_travel_coarse(
    intake: Intake, wait_until: Any
) -> None:
    response = await intake.post_signal()
    assert response.status_code == 201, response.text
    signal = await intake.get(Signal, response.json()["id"])
    assert (signal.area, signal.district) == ("binnenstad", "centrum")
    [event] = await intake.events("signal.received", wait_until)
    assert event["data"]["location"] == {
        "lat": 52.012,
        "lon": 4.71,
        "area": "binnenstad",
        "district": "centrum",
    }
    assert "Jansen" not in json.dumps(event) and "06-12345678" not in json.dumps(event)


async def test_a_location_outside_the_municipality_is_refused_with_a_pointer(intake: Intake) -> None:
    body = {**SIGNAL, "location": {"lat": 52.37, "lon": 4.89}}  # Amsterdam
    response = await intake.post_signal(body, **{"Idempotency-Key": "outside"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["pointer"] for e in response.json()["errors"]] == ["/location"]
    assert await intake.count(Signal) == 0 and await intake.count(OutboxMessage) == 0
    assert await intake.count(IdempotencyRecord) == 0


# -- conversations ---------------------------------------------------------------------------------

CONVERSATION = {
    "channel": "phone",
    "started_at": "2026-11-28T09:12:00+01:00",
    "duration_s": 184,
    "team": "kcc-fysiek",
    "outcome": "melding aangemaakt",
    "turns": [
        {"speaker": "agent", "text": "Gemeente, goedemorgen, waarmee kan ik u helpen?"},
        {
            "speaker": "citizen",
            "text": "De lantaarnpaal doet het niet. Mijn nummer is 06-12345678, mail jan@example.org.",
        },
    ],
}


async def test_a_conversation_is_stored_and_published_redacted_once(intake: Intake, wait_until: Any) -> None:
    headers = {**intake.auth(), "Idempotency-Key": "call-42"}
    first = await intake.client.post("/v1/conversations", json=CONVERSATION, headers=headers)
    again = await intake.client.post("/v1/conversations", json=CONVERSATION, headers=headers)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    conversation = await intake.get(Conversation, first.json()["signal_id"])
    assert (
        conversation.language == "nl" and conversation.started_at.isoformat() == "2026-11-28T08:12:00+00:00"
    )
    stored = json.dumps(conversation.turns)
    assert "06-12345678" not in stored and "jan@example.org" not in stored and "[PHONE]" in stored
    [event] = await intake.events("conversation.received", wait_until)
    data = event["data"]
    assert event["type"] == "nl.civicsignals.conversation.received.v1"
    assert data["signal_id"] == first.json()["signal_id"] and data["outcome"] == "melding aangemaakt"
    assert [t["speaker"] for t in data["turns"]] == ["agent", "citizen"] and "[EMAIL]" in data["turns"][1][
        "text"
    ]
    assert data["duration_s"] == 184 and data["team"] == "kcc-fysiek" and data["language"] == "nl"
    assert await intake.count(Conversation) == 1


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"turns": [{"speaker": "robot", "text": "hi"}]}, "/turns/0/speaker"),
        ({"turns": []}, "/turns"),
        ({"channel": "email"}, "/channel"),
        ({"started_at": "2026-11-28T09:12:00"}, "/started_at"),
    ],
)
async def test_bad_conversations_are_problems(intake: Intake, change: dict[str, Any], pointer: str) -> None:
    response = await intake.client.post(
        "/v1/conversations", json={**CONVERSATION, **change}, headers=intake.auth()
    )
    assert response.status_code == 422
    assert pointer in [e["pointer"] for e in response.json()["errors"]]
    assert await intake.count(Conversation) == 0


# -- attachments -----------------------------------------------------------------------------------


async def _attach(
    intake: Intake, signal_id: str, name: str, content: bytes, content_type: str, key: str | None = None
) -> Any:
    return await intake.client.post(
        f"/v1/signals/{signal_id}/attachments",
        files={"file": (name, content, content_type)},
        headers=intake.auth(key),
    )


@pytest.mark.parametrize(
    ("name", "content", "content_type", "media_type"),
    [
        ("foto.png", PNG, "image/png", "image/png"),
        ("foto.jpg", JPEG, "image/jpeg", "image/jpeg"),
        ("scan.pdf", PDF, "application/pdf", "application/pdf"),
        ("foto.webp", WEBP, "image/webp", "image/webp"),
        ("IMG_0001.HEIC", HEIC, "application/octet-stream", "image/heic"),
    ],
)
async def test_photos_and_pdfs_are_stored_and_only_their_count_travels(
    intake: Intake, wait_until: Any, name: str, content: bytes, content_type: str, media_type: str
) -> None:
    signal_id = (await intake.post_signal()).json()["id"]
    response = await _attach(intake, signal_id, name, content, content_type)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["media_type"] == media_type and body["size"] == len(content) and body["attachments"] == 1
    stored = intake.settings.attachments_dir / "gouda" / signal_id / body["id"]
    assert stored.read_bytes() == content
    [event] = await intake.events("signal.attachment_added", wait_until)
    assert event["data"] == {"signal_id": signal_id, "attachments": 1}
    row = await intake.get(Attachment, body["id"])
    assert name not in json.dumps(row.model_dump(mode="json"))  # the uploader's file name is not kept


@pytest.mark.parametrize(
    ("name", "content", "content_type", "detail"),
    [
        ("foto.jpg", SCRIPT, "image/jpeg", "script"),
        ("foto.jpg", PNG, "image/jpeg", "named '*.jpg' but its content is PNG"),
        ("foto.png", PNG, "image/jpeg", "sent as 'image/jpeg'"),
        ("page.html", b"<html><body><script>alert(1)</script></body></html>", "text/html", "script"),
        ("plaatje.svg", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "image/svg+xml", "script"),
        ("notes.txt", b"gewoon wat tekst", "text/plain", "only JPEG"),
        ("foto.exe", PNG, "application/octet-stream", "cannot be attached"),
    ],
)
async def test_spoofed_and_unsupported_files_are_refused_and_nothing_is_kept(
    intake: Intake, name: str, content: bytes, content_type: str, detail: str
) -> None:
    signal_id = (await intake.post_signal()).json()["id"]
    response = await _attach(intake, signal_id, name, content, content_type)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert await intake.count(Attachment) == 0
    assert not (intake.settings.attachments_dir / "gouda" / signal_id).exists() or not any(
        (intake.settings.attachments_dir / "gouda" / signal_id).iterdir()
    )
    assert (await intake.get(Signal, signal_id)).attachments == 0


@pytest.mark.parametrize(
    "intake_settings_overrides", [{"max_attachment_bytes": 4096, "max_attachments_per_signal": 2}]
)
async def test_attachment_limits_and_tenant_isolation(intake: Intake) -> None:
    signal_id = (await intake.post_signal()).json()["id"]
    too_big = await _attach(intake, signal_id, "big.png", PNG + b"\x00" * 80_000, "image/png")
    assert too_big.status_code == 413 and too_big.headers["content-type"] == "application/problem+json"
    stranger = await _attach(intake, signal_id, "foto.png", PNG, "image/png", key=intake.utrecht.key)
    assert stranger.status_code == 404
    missing = await _attach(intake, "01NOSUCHSIGNAL0000000000000", "foto.png", PNG, "image/png")
    assert missing.status_code == 404
    results = await asyncio.gather(
        *(_attach(intake, signal_id, "foto.png", PNG, "image/png") for _ in range(4))
    )
    assert sorted(r.status_code for r in results) == [201, 201, 409, 409]
    assert (await intake.get(Signal, signal_id)).attachments == 2 and await intake.count(Attachment) == 2
    stored = list((intake.settings.attachments_dir / "gouda" / signal_id).iterdir())
    assert len(stored) == 2  # the refused uploads left no file behind


async def test_an_upload_retried_under_its_idempotency_key_is_stored_once(intake: Intake) -> None:
    signal_id = (await intake.post_signal()).json()["id"]

    async def upload(key: str, content: bytes) -> Any:
        return await intake.client.post(
            f"/v1/signals/{signal_id}/attachments",
            files={"file": ("foto.png", content, "image/png")},
            headers={**intake.auth(), "Idempotency-Key": key},
        )

    first = await upload("upload-1", PNG)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await upload("upload-1", PNG)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other_file = await upload("upload-1", JPEG)
    assert other_file.status_code == 422 and other_file.json()["type"].endswith("/idempotency-key-reused")
    assert (await intake.get(Signal, signal_id)).attachments == 1 and await intake.count(Attachment) == 1
    # A refused file releases its key: the right file may then be sent under it.
    refused = await upload("upload-2", SCRIPT)
    assert refused.status_code == 415
    second = await upload("upload-2", PNG + b"\x00")
    assert second.status_code == 201 and second.json()["attachments"] == 2


async def test_staff_open_a_signals_photos_and_each_opening_is_audited(intake: Intake) -> None:
    signal = (await intake.post_signal()).json()
    signal_id = signal["id"]
    photo = (await _attach(intake, signal_id, "foto.jpg", JPEG, "image/jpeg")).json()
    scan = (await _attach(intake, signal_id, "scan.pdf", PDF, "application/pdf")).json()
    listing = f"/v1/signals/{signal_id}/attachments"

    listed = await intake.client.get(listing, headers=intake.auth())
    assert listed.status_code == 200
    assert [(i["id"], i["media_type"]) for i in listed.json()["items"]] == [
        (photo["id"], "image/jpeg"),
        (scan["id"], "application/pdf"),
    ]
    opened = await intake.client.get(f"{listing}/{photo['id']}", headers=intake.auth())
    assert opened.status_code == 200 and opened.content == JPEG
    assert opened.headers["content-type"] == "image/jpeg"
    assert opened.headers["content-disposition"] == f'inline; filename="{photo["id"]}.jpeg"'
    assert opened.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in opened.headers["content-security-policy"]
    assert opened.headers["cache-control"] == "private, no-store"
    async with intake.runtime.sessions() as session:
        reads = (
            await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "attachment.read"))
        ).all()
    assert [(r.object, r.result, r.actor) for r in reads] == [
        (f"attachment:{photo['id']}", "ok", f"key:{intake.gouda.key_id}")
    ]

    # Another tenant's key, an unknown attachment, and another signal's attachment id: all 404.
    assert (await intake.client.get(listing, headers=intake.auth(intake.utrecht.key))).status_code == 404
    stranger = await intake.client.get(f"{listing}/{photo['id']}", headers=intake.auth(intake.utrecht.key))
    assert stranger.status_code == 404
    assert (
        await intake.client.get(f"{listing}/01NOSUCHATTACHMENT000000000", headers=intake.auth())
    ).status_code == 404
    other = (await intake.post_signal()).json()["id"]
    crossed = await intake.client.get(f"/v1/signals/{other}/attachments/{photo['id']}", headers=intake.auth())
    assert crossed.status_code == 404

    # A key bound to a department sees the signal once its department is responsible for it.
    _, bound = add_key(intake.gouda.folder, ["cases:read"], departments=["stadsbeheer"])
    assert (await intake.client.get(listing, headers=intake.auth(bound))).status_code == 404
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, routed(signal))
    assert (await intake.client.get(listing, headers=intake.auth(bound))).status_code == 200
    # A portal's key (signals:write only) posts photos but does not read them.
    _, portal = add_key(intake.gouda.folder, ["signals:write"])
    assert (await intake.client.get(listing, headers=intake.auth(portal))).status_code == 403
    # A partner organisation sees the photos of the signals forwarded to it, and no others.
    _, partner = add_key(intake.gouda.folder, ["partner:woonpartners"])
    assert (await intake.client.get(listing, headers=intake.auth(partner))).status_code == 404
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, routed(signal, partners=["woonpartners"]))
    forwarded = await intake.client.get(f"{listing}/{scan['id']}", headers=intake.auth(partner))
    assert forwarded.status_code == 200 and forwarded.content == PDF
    assert forwarded.headers["content-disposition"] == f'inline; filename="{scan["id"]}.pdf"'
    other_listing = await intake.client.get(f"/v1/signals/{other}/attachments", headers=intake.auth(partner))
    assert other_listing.status_code == 404
    # A partner the case is forwarded to later sees them from that change on.
    _, later = add_key(intake.gouda.folder, ["partner:zorgpartner"])
    assert (await intake.client.get(listing, headers=intake.auth(later))).status_code == 404
    forward = change(signal, "forwarded", 2, partners=["woonpartners", "zorgpartner"])
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_status_change(session, forward, utcnow())
    assert (await intake.client.get(listing, headers=intake.auth(later))).status_code == 200


# -- tracking and feedback -------------------------------------------------------------------------


async def _publish(bus: Any, tenant: str, data: Any) -> None:
    event = make_event(tenant=tenant, service="routing", data=data)
    await bus.publish(data.bus_subject(tenant), event)


async def test_tracking_follows_the_case_and_feedback_is_published_once(
    intake: Intake, bus: Any, wait_until: Any
) -> None:
    created = (await intake.post_signal()).json()
    signal_id, code = created["id"], created["tracking_code"]
    await _publish(
        bus,
        "gouda",
        SignalRouted(
            signal_id=signal_id,
            case_id="case-1",
            tracking_code=code,
            responsible="stadsbeheer",
            priority="normal",
            rule_id="afval",
            due_at="2026-12-03T17:00:00Z",
            service_promise="Binnen 5 werkdagen opgeruimd",
        ),
    )
    await _publish(
        bus,
        "gouda",
        CaseStatusChanged(
            case_id="case-1",
            signal_id=signal_id,
            tracking_code=code,
            to="in_progress",
            public_note="De ploeg komt donderdag.",
            actor="department",
            sequence=2,
        ),
    )

    async def followed() -> dict[str, Any] | None:
        page = (await intake.client.get(f"/v1/tracking/{code}")).json()
        return page if page["status"] == "in_progress" and page["expected_by"] else None

    page = await wait_until(followed, timeout=10, message="the tracking page to follow the case")
    assert [(h["status"], h["note"]) for h in page["history"]] == [
        ("received", None),
        ("in_progress", "De ploeg komt donderdag."),
    ]
    assert page["service_promise"] == "Binnen 5 werkdagen opgeruimd"
    assert "jan" not in json.dumps(page).lower()

    feedback = {"satisfied": True, "score": 4, "comment": "Prima! Bel me op 06-12345678 als er iets is."}
    early = await intake.client.post(f"/v1/tracking/{code}/feedback", json=feedback)
    assert early.status_code == 409 and early.json()["type"].endswith("/case-not-ended"), early.text
    await _publish(
        bus,
        "gouda",
        CaseStatusChanged(
            case_id="case-1",
            signal_id=signal_id,
            tracking_code=code,
            to="resolved",
            actor="department",
            sequence=3,
        ),
    )

    async def resolved() -> bool:
        return bool((await intake.client.get(f"/v1/tracking/{code}")).json()["status"] == "resolved")

    await wait_until(resolved, timeout=10, message="the tracking page to see the case resolved")
    first = await intake.client.post(f"/v1/tracking/{code.lower()}/feedback", json=feedback)
    assert first.status_code == 201, first.text
    second = await intake.client.post(f"/v1/tracking/{code}/feedback", json=feedback)
    assert second.status_code == 409 and second.headers["content-type"] == "application/problem+json"
    unknown = await intake.client.post("/v1/tracking/0000-0000-0000/feedback", json=feedback)
    assert unknown.status_code == 404
    bad = await intake.client.post(f"/v1/tracking/{code}/feedback", json={**feedback, "score": 9})
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/score"
    [event] = await intake.events("feedback.received", wait_until)
    assert event["data"] == {
        "signal_id": signal_id,
        "case_id": "case-1",
        "satisfied": True,
        "score": 4,
        "comment": "Prima! Bel me op [PHONE] als er iets is.",
    }
    assert await intake.count(Feedback) == 1


# -- isolation, CORS and limits --------------------------------------------------------------------


async def test_a_key_of_one_tenant_never_sees_another_tenants_signals(intake: Intake) -> None:
    created = (await intake.post_signal()).json()
    contact = await intake.client.get(
        f"/v1/signals/{created['id']}/contact", headers=intake.auth(intake.utrecht.key)
    )
    assert contact.status_code == 404
    # Open311 lists per jurisdiction; the request is gouda's and does not show under utrecht.
    async with intake.runtime.sessions() as session, session.begin():
        signal = await session.get(Signal, created["id"])
        signal.subtopic = "container"
        session.add(signal)
    gouda = await intake.client.get("/open311/v2/requests.json", params={"jurisdiction_id": "gouda"})
    utrecht = await intake.client.get("/open311/v2/requests.json", params={"jurisdiction_id": "utrecht"})
    assert [r["service_request_id"] for r in gouda.json()] == [created["id"]]
    assert utrecht.json() == []
    one = await intake.client.get(
        f"/open311/v2/requests/{created['id']}.json", params={"jurisdiction_id": "utrecht"}
    )
    assert one.status_code == 404


async def test_cors_follows_each_tenants_origins(intake: Intake) -> None:
    preflight = {
        "Origin": GOUDA_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    allowed = await intake.client.options("/v1/signals", headers=preflight)
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == GOUDA_ORIGIN
    refused = await intake.client.options(
        "/v1/signals", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

    own = await intake.post_signal(Origin=GOUDA_ORIGIN)
    assert own.status_code == 201 and own.headers["access-control-allow-origin"] == GOUDA_ORIGIN
    assert "Location" in own.headers["access-control-expose-headers"]
    # Utrecht's portal page cannot use a Gouda key: the origin is known, but not Gouda's.
    cross = await intake.post_signal(Origin=UTRECHT_ORIGIN)
    assert cross.status_code == 403 and cross.json()["type"].endswith("/origin-not-allowed")
    assert await intake.count(Signal) == 1


@pytest.mark.parametrize(
    "intake_settings_overrides",
    [
        {
            "rate_limit_per_s": 0.01,
            "rate_limit_burst": 3,
            "public_rate_limit_per_s": 0.01,
            "public_rate_limit_burst": 2,
        }
    ],
)
async def test_rate_limits_per_key_and_per_address(intake: Intake) -> None:
    statuses = [(await intake.post_signal()).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    limited = await intake.post_signal()
    assert limited.headers["content-type"] == "application/problem+json"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another key has its own bucket.
    other = await intake.post_signal({**SIGNAL, "location": None}, key=intake.utrecht.key)
    assert other.status_code == 201
    public = [(await intake.client.get("/v1/tracking/0000-0000-0000")).status_code for _ in range(3)]
    assert public == [404, 404, 429]
    assert await intake.count(Signal) == 4


@pytest.mark.parametrize(
    "intake_settings_overrides",
    [{"rate_limit_per_s": 0.01, "rate_limit_burst": 3, "rate_limit_share_interval_s": 0.05}],
)
async def test_a_keys_rate_limit_holds_across_two_replicas(intake: Intake, wait_until: Any) -> None:
    """Two replicas of intake on the same database and NATS server, as behind a load balancer: the
    burst a portal spent on one is spent on the other too (``ratesharing``), so the key gets its
    limit once, not once per replica; another key still has its whole burst on both."""
    second = create_app(intake.settings)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake-2") as client:
            await asyncio.wait_for(second.state.runtime.bus_ready.wait(), timeout=60)
            assert [(await intake.post_signal()).status_code for _ in range(3)] == [201, 201, 201]
            key = f"key:{intake.gouda.key_id}"

            def spent_on_the_second() -> bool:
                return bool(second.state.intake.key_limiter.tokens(key) < 1.0)

            await wait_until(
                spent_on_the_second, timeout=10, message="the second replica to hear of the burst"
            )
            refused = await client.post("/v1/signals", json=SIGNAL, headers=intake.auth())
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            body = {**SIGNAL, "location": None}
            other = await client.post("/v1/signals", json=body, headers=intake.auth(intake.utrecht.key))
            assert other.status_code == 201, other.text
    assert await intake.count(Signal) == 4


async def test_bodies_over_the_limit_are_refused(intake: Intake) -> None:
    response = await intake.client.post(
        "/v1/conversations",
        content=json.dumps({**CONVERSATION, "metadata": {"blob": "x" * 1_100_000}}),
        headers={**intake.auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
    assert await intake.count(Conversation) == 0


async def test_contact_is_sealed_for_open311_reporters_too(intake: Intake) -> None:
    form = {
        "api_key": intake.gouda.key,
        "jurisdiction_id": "gouda",
        "service_code": "container",
        "lat": "52.0116",
        "long": "4.7105",
        "email": "piet@example.org",
        "first_name": "Piet",
        "attribute[container_type]": "glas",
        "description": "Glasbak vol",
    }
    response = await intake.client.post("/open311/v2/requests.json", data=form)
    assert response.status_code == 200, response.text
    contact = await intake.get(Contact, response.json()[0]["service_request_id"])
    assert contact is not None and b"piet@example.org" not in contact.ciphertext and contact.consent is False


async def test_every_department_the_case_reaches_opens_its_photos_from_the_feed(
    intake: Intake, bus: Any, wait_until: Any
) -> None:
    """A department only informed of a case, or one it is reassigned or escalated to, hears of
    it on its feed (``dept.<code>.assigned``, which also tells it of new photos); intake follows
    those feeds over the bus, so that department's key opens the photos too. Other departments'
    keys still do not."""
    signal = (await intake.post_signal()).json()
    await _attach(intake, signal["id"], "foto.jpg", JPEG, "image/jpeg")
    listing = f"/v1/signals/{signal['id']}/attachments"
    _, informed_key = add_key(intake.gouda.folder, ["cases:read"], departments=["handhaving"])
    _, other_key = add_key(intake.gouda.folder, ["cases:read"], departments=["sociaal"])
    assert (await intake.client.get(listing, headers=intake.auth(informed_key))).status_code == 404

    feed = assigned(signal, "handhaving", None, role="informed")
    event = make_event(tenant="gouda", service="routing", data=feed)
    await bus.publish(DepartmentAssigned.department_subject("gouda", "handhaving"), event)

    async def readable() -> bool:
        return (await intake.client.get(listing, headers=intake.auth(informed_key))).status_code == 200

    await wait_until(readable, timeout=10, message="the informed department's key to open the photos")
    assert (await intake.client.get(listing, headers=intake.auth(other_key))).status_code == 404
    async with intake.runtime.sessions() as session, session.begin():  # a repeat adds nothing
        assert await service.apply_department_assigned(session, feed)
    async with intake.runtime.sessions() as session:
        stored = await session.get(Signal, signal["id"])
    assert stored is not None and stored.departments == ["handhaving"]


async def test_a_department_the_case_left_no_longer_opens_its_photos(
    intake: Intake, bus: Any, wait_until: Any
) -> None:
    """A resident's photos are for whoever handles the case now. Routing's
    ``case.departments_changed`` names who holds the case after each move; intake keeps the set of
    the highest sequence it has seen, so a department reassigned away or no longer informed gets a
    404, in whatever order the events come. The recipients an access request lists keep them all."""
    signal = (await intake.post_signal()).json()
    await _attach(intake, signal["id"], "foto.jpg", JPEG, "image/jpeg")
    listing = f"/v1/signals/{signal['id']}/attachments"
    keys = {
        code: add_key(intake.gouda.folder, ["cases:read"], departments=[code])[1]
        for code in ("stadsbeheer", "handhaving", "sociaal")
    }

    async def opens() -> set[str]:
        return {
            code
            for code, key in keys.items()
            if (await intake.client.get(listing, headers=intake.auth(key))).status_code == 200
        }

    def feed(department: str, sequence: int) -> DepartmentAssigned:
        return assigned(signal, department, sequence, role="informed")

    def moved(
        sequence: int, responsible: str, informed: list[str], left: list[str]
    ) -> CaseDepartmentsChanged:
        return CaseDepartmentsChanged(
            case_id="case-1",
            signal_id=signal["id"],
            sequence=sequence,
            responsible=responsible,
            informed=informed,
            left=left,
            change="assignment",
        )

    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_routed(session, routed(signal, informed=["handhaving"]))
    assert await opens() == {"stadsbeheer", "handhaving"}

    # Over the bus: reassigned to sociaal, handhaving no longer informed.
    event = make_event(
        tenant="gouda", service="routing", data=moved(2, "sociaal", [], ["stadsbeheer", "handhaving"])
    )
    await bus.publish(CaseDepartmentsChanged.bus_subject("gouda"), event)

    async def only_sociaal() -> bool:
        return await opens() == {"sociaal"}

    await wait_until(
        only_sociaal, timeout=10, message="only the department holding the case to open its photos"
    )
    steps: list[tuple[str, Any, set[str]]] = [
        ("the feed of the opening, late", feed("handhaving", 1), {"sociaal"}),
        ("handhaving informed again at 3, before its move", feed("handhaving", 3), {"sociaal", "handhaving"}),
        ("the move at 3", moved(3, "sociaal", ["handhaving"], []), {"sociaal", "handhaving"}),
        (
            "the move at 2 redelivered",
            moved(2, "sociaal", [], ["stadsbeheer", "handhaving"]),
            {"sociaal", "handhaving"},
        ),
        ("back to stadsbeheer at 4", moved(4, "stadsbeheer", [], ["sociaal", "handhaving"]), {"stadsbeheer"}),
    ]
    for label, data, expected in steps:
        async with intake.runtime.sessions() as session, session.begin():
            if isinstance(data, DepartmentAssigned):
                assert await service.apply_department_assigned(session, data)
            else:
                assert await service.apply_departments_changed(session, data)
        assert await opens() == expected, label
    async with intake.runtime.sessions() as session:
        stored = await session.get(Signal, signal["id"])
    assert stored is not None
    assert (stored.responsible, stored.holders, stored.holders_sequence) == (
        "stadsbeheer",
        ["stadsbeheer"],
        4,
    )
    assert set(stored.departments or []) == {"sociaal", "handhaving", "stadsbeheer"}  # every recipient
    # Staff without a department binding still see it all.
    assert (await intake.client.get(listing, headers=intake.auth())).status_code == 200


async def test_a_case_routed_before_the_holders_were_kept_still_opens_for_every_department_it_reached(
    intake: Intake,
) -> None:
    """Rows from before migration 0006 have no holders: every department the case reached opens the
    photos, as before, until the case's next move names who holds it."""
    signal = (await intake.post_signal()).json()
    await _attach(intake, signal["id"], "foto.jpg", JPEG, "image/jpeg")
    listing = f"/v1/signals/{signal['id']}/attachments"
    _, sociaal = add_key(intake.gouda.folder, ["cases:read"], departments=["sociaal"])
    async with intake.runtime.sessions() as session, session.begin():
        row = await session.get(Signal, signal["id"])
        assert row is not None
        row.responsible, row.departments = "stadsbeheer", ["stadsbeheer", "sociaal"]  # as 0004 left it
        session.add(row)
    assert (await intake.client.get(listing, headers=intake.auth(sociaal))).status_code == 200
    changed = CaseDepartmentsChanged(
        case_id="case-1",
        signal_id=signal["id"],
        sequence=5,
        responsible="stadsbeheer",
        informed=[],
        left=["sociaal"],
        change="reclassification",
    )
    async with intake.runtime.sessions() as session, session.begin():
        assert await service.apply_departments_changed(session, changed)
    assert (await intake.client.get(listing, headers=intake.auth(sociaal))).status_code == 404
