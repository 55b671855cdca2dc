"""The privacy API (``/v1/privacy/access`` and ``/v1/privacy/erasure``): a person's access and
erasure requests over HTTP, as the commands answer them, on the real databases and NATS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from civicsignals.common.tenants import add_key
from civicsignals.intake import accessrequest, casenotes
from civicsignals.intake.models import Attachment, AuditRecord, Contact, Signal

from .conftest import Intake
from .test_access_case_notes import STAND_IN_HISTORY, RoutingStandIn, routing_stand_in
from .test_access_request import _document, _people


@pytest.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[RoutingStandIn]:
    """Routing's case API for the access requests: case-1 (every signal's here) with an internal
    note; intake's service key for it in intake's data directory."""
    async with routing_stand_in(tmp_path / "data") as server:
        yield server


@pytest.fixture
def intake_settings_overrides(stand_in: RoutingStandIn) -> dict[str, Any]:
    return {"routing_url": stand_in.url, "notifier_url": stand_in.url}


async def _officer(intake: Intake) -> tuple[str, dict[str, str]]:
    """A privacy officer's key of gouda: ``privacy:admin`` and nothing else."""
    key_id, key = add_key(intake.gouda.folder, ["privacy:admin"], description="privacy desk")
    return key_id, {"Authorization": f"Bearer {key}"}


async def _audit(intake: Intake, action: str) -> list[AuditRecord]:
    async with intake.runtime.sessions() as session:
        rows = await session.exec(select(AuditRecord).where(col(AuditRecord.action) == action))
        return list(rows.all())


def _problem_pointers(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return sorted(error["pointer"] for error in response.json()["errors"])


async def test_access_answers_the_persons_document_audited_under_the_officers_key(
    intake: Intake, stand_in: RoutingStandIn
) -> None:
    photo, rated, piet = await _people(intake)
    key_id, officer = await _officer(intake)

    response = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    expected = await _document(intake, "email", "jan@example.org")
    accessrequest.include_case_notes(expected, {"case-1": casenotes.notes_of_history(STAND_IN_HISTORY)})
    accessrequest.include_mails(expected, {})  # the stand-in's notifier sent nothing
    assert {**document, "generated_at": None} == {**expected, "generated_at": None}
    assert document["case_notes_included"] is True and document["signals"][0]["case_notes"][0]["note"]
    assert document["mails_included"] is True and [part["mails"] for part in document["signals"]] == [[], []]
    # routing was asked once for their one case, notifier once for each signal's mails, each
    # with intake's service key
    assert stand_in.calls == [("case-1", "Bearer cs_standin.not-checked")]
    assert sorted(stand_in.delivery_calls) == sorted(
        (signal_id, "Bearer cs_standin.not-checked") for signal_id in (photo["id"], rated["id"])
    )
    assert [part["signal_id"] for part in document["signals"]] == [photo["id"], rated["id"]]
    assert piet["id"] not in response.text and "Piet" not in response.text
    assert document["signals"][0]["contact"]["email"] == "jan@example.org"  # decrypted: it is theirs
    reads = await _audit(intake, "person.access")
    assert sorted(record.object for record in reads) == sorted(
        [f"signal:{photo['id']}", f"signal:{rated['id']}"]
    )
    assert {record.actor for record in reads} == {f"key:{key_id}"}


async def test_access_by_phone_and_by_tracking_code(intake: Intake) -> None:
    photo, rated, _ = await _people(intake)
    _, officer = await _officer(intake)

    by_phone = await intake.client.post(
        "/v1/privacy/access", json={"phone": "+31 6 1234 5678"}, headers=officer
    )
    by_code = await intake.client.post(
        "/v1/privacy/access", json={"tracking_code": rated["tracking_code"].lower()}, headers=officer
    )

    assert [part["signal_id"] for part in by_phone.json()["signals"]] == [photo["id"], rated["id"]]
    assert [part["signal_id"] for part in by_code.json()["signals"]] == [rated["id"]]


async def test_the_privacy_api_keeps_tenants_apart_and_needs_its_scope(intake: Intake) -> None:
    await _people(intake)
    _, utrecht_key = add_key(intake.utrecht.folder, ["privacy:admin"], description="utrecht's desk")
    foreign = {"Authorization": f"Bearer {utrecht_key}"}
    _, portal_key = add_key(intake.gouda.folder, ["signals:write"], description="portal")
    portal = {"Authorization": f"Bearer {portal_key}"}

    seen = await intake.client.post("/v1/privacy/access", json={"email": "jan@example.org"}, headers=foreign)
    erased = await intake.client.post(
        "/v1/privacy/erasure", json={"email": "jan@example.org"}, headers=foreign
    )

    assert seen.status_code == 200 and seen.json()["signal_count"] == 0 and seen.json()["signals"] == []
    assert erased.status_code == 200 and erased.json()["signals"] == []
    assert erased.json()["erased"] == {"signals": 0, "contacts": 0, "attachment_files": 0}
    for path in ("/v1/privacy/access", "/v1/privacy/erasure"):
        refused = await intake.client.post(path, json={"email": "jan@example.org"}, headers=portal)
        assert refused.status_code == 403, refused.text
        assert "privacy:admin" in refused.json()["detail"]
    assert await intake.count(Contact) == 3  # nobody's contact went
    assert await _audit(intake, "person.erase") == []


@pytest.mark.parametrize(
    ("body", "pointers"),
    [
        ({}, ["/email", "/phone", "/tracking_code"]),
        ({"email": "jan@example.org", "phone": "0612345678"}, ["/email", "/phone"]),
        ({"phone": "bel me maar"}, ["/phone"]),
        ({"email": "jan-at-example.org"}, ["/email"]),
        ({"tracking_code": "7KQ"}, ["/tracking_code"]),
        ({"email": "jan@example.org", "name": "Jan Jansen"}, ["/name"]),
    ],
)
async def test_a_request_that_does_not_name_one_person_is_a_422_at_the_field(
    intake: Intake, body: dict[str, Any], pointers: list[str]
) -> None:
    await _people(intake)
    _, officer = await _officer(intake)

    for path in ("/v1/privacy/access", "/v1/privacy/erasure"):
        response = await intake.client.post(path, json=body, headers=officer)
        assert _problem_pointers(response) == pointers, (path, response.text)
    assert await _audit(intake, "person.access") == [] and await _audit(intake, "person.erase") == []
    assert await intake.count(Contact) == 3


async def test_erasure_first_shows_then_erases_and_tells_the_other_services(
    intake: Intake, wait_until: Any
) -> None:
    photo, rated, piet = await _people(intake)
    key_id, officer = await _officer(intake)
    jan = sorted([photo["id"], rated["id"]])

    look = await intake.client.post(
        "/v1/privacy/erasure", json={"email": "jan@example.org", "dry_run": True}, headers=officer
    )
    assert look.status_code == 200, look.text
    assert look.json()["dry_run"] is True and look.json()["erased"] is None
    assert [(s["signal_id"], s["tracking_code"], s["erased_before"]) for s in look.json()["signals"]] == [
        (photo["id"], photo["tracking_code"], None),
        (rated["id"], rated["tracking_code"], None),
    ]
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []

    # Only the signals confirmed: one more or one fewer than the person has is a 409, nothing erased.
    for confirmed in ([photo["id"]], [*jan, piet["id"]]):
        stale = await intake.client.post(
            "/v1/privacy/erasure", json={"email": "jan@example.org", "signal_ids": confirmed}, headers=officer
        )
        assert stale.status_code == 409, stale.text
        assert stale.headers["content-type"] == "application/problem+json"
        assert stale.json()["type"].endswith("/signals-changed")
        assert [s["signal_id"] for s in stale.json()["signals"]] == [photo["id"], rated["id"]]
    assert await intake.count(Contact) == 3 and await _audit(intake, "person.erase") == []

    done = await intake.client.post(
        "/v1/privacy/erasure", json={"email": "JAN@example.org", "signal_ids": jan}, headers=officer
    )

    assert done.status_code == 200, done.text
    assert done.headers["cache-control"] == "no-store"
    assert done.json()["erased"] == {"signals": 2, "contacts": 2, "attachment_files": 1}
    for signal_id in jan:
        signal = await intake.get(Signal, signal_id)
        assert signal.erased_at is not None and "Jan" not in signal.text
        assert await intake.get(Contact, signal_id) is None
    assert await intake.get(Contact, piet["id"]) is not None
    async with intake.runtime.sessions() as session:
        left = (await session.exec(select(Attachment.signal_id))).all()
    assert list(left) == [piet["id"]]
    erasures = await _audit(intake, "person.erase")
    assert sorted(r.object for r in erasures) == [f"signal:{i}" for i in jan]
    assert {(r.actor, r.detail) for r in erasures} == {(f"key:{key_id}", None)}  # no step-up on the API

    async def published() -> list[Any] | None:
        events = await intake.stream(".signal.erased")
        return events if len(events) == 2 else None

    events = await wait_until(published, timeout=10, message="both signal.erased events on the bus")
    assert sorted(json.loads(event.data)["data"]["signal_id"] for event in events) == jan

    again = await intake.client.post(
        "/v1/privacy/erasure", json={"email": "jan@example.org"}, headers=officer
    )
    assert again.json()["signals"] == []  # the contact that found them is gone
    by_code = await intake.client.post(
        "/v1/privacy/erasure",
        json={"tracking_code": photo["tracking_code"], "dry_run": True},
        headers=officer,
    )
    (found,) = by_code.json()["signals"]
    assert found["signal_id"] == photo["id"] and found["erased_before"] is not None
