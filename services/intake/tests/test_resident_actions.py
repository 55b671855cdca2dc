"""The resident's own moves (answer a question, reopen, withdraw) from the tracking page and the
JSON API: what intake checks, and what it sends to routing. A real HTTP server stands in for
routing's ``POST /v1/cases/{id}/updates`` here, so that its answers (409, 503, none at all) can be
chosen; ``tests/test_resident_actions.py`` runs the same moves through the real routing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from civicsignals.intake import privacy
from civicsignals.intake.models import Attachment, Signal

from .conftest import JPEG, PNG, SCRIPT, Intake, Receiver
from .test_resident_pages import BROWSER, move_case, reported


@pytest.fixture
def routing(intake: Intake, receiver: Receiver) -> Receiver:
    """Intake pointed at the stand-in, with a service key for routing as ``make run`` writes one."""
    intake.context.settings.routing_url = receiver.url
    key_file = intake.settings.service_keys_dir / "gouda"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("cs_intake.servicekey\n")
    return receiver


async def _page(intake: Intake, code: str, query: str = "") -> str:
    page = await intake.client.get(f"/v1/tracking/{code}{query}", headers=BROWSER)
    assert page.status_code == 200
    return page.text


async def test_a_question_is_answered_from_the_page_on_the_residents_behalf(
    intake: Intake, routing: Receiver
) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "waiting_on_resident", 2, note="Bij welke container precies?")
    page = await _page(intake, code)
    assert "Wij hebben een vraag aan u" in page and "Bij welke container precies?" in page
    assert 'name="action" value="reply"' in page and 'name="action" value="withdraw"' in page
    assert 'value="reopen"' not in page

    answer = "Die achter het gemeentehuis. Bel 06-12345678 als u mij zoekt."
    sent = await intake.client.post(
        f"/v1/tracking/{code}/updates", data={"action": "reply", "text": answer}, headers=BROWSER
    )
    assert sent.status_code == 303 and sent.headers["location"] == f"/v1/tracking/{code}?sent=reply"
    [(case_id, authorization, body)] = routing.received
    assert (case_id, authorization) == ("case-1", "Bearer cs_intake.servicekey")
    assert body["status"] == "in_progress" and body["on_behalf_of_resident"] is True
    assert body["public_note"] == "Die achter het gemeentehuis. Bel [PHONE] als u mij zoekt."
    assert body["update_id"].startswith("resident:")

    # The page confirms, and does not offer the answer again while it waits for the case's event.
    after = await _page(intake, code, "?sent=reply")
    assert "Uw antwoord is verstuurd." in after and 'value="reply"' not in after

    # Sent twice (a double click, a reload of the POST): one update at routing, the same id.
    again = await intake.client.post(f"/v1/tracking/{code}/updates", json={"action": "reply", "text": answer})
    assert again.status_code == 202
    assert again.json() == {"tracking_code": code, "action": "reply", "status": "in_progress"}
    assert routing.received[1][2]["update_id"] == body["update_id"]


async def test_only_what_the_status_allows_is_offered_and_accepted(intake: Intake, routing: Receiver) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    updates = f"/v1/tracking/{code}/updates"

    # No case yet: nothing to act on.
    early = await intake.client.post(updates, json={"action": "withdraw"})
    assert early.status_code == 409 and early.json()["allowed"] == []
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "resolved", 2, note="Opgeruimd.")
    page = await _page(intake, code)
    assert 'value="reopen"' in page and 'value="reply"' not in page and 'value="withdraw"' not in page

    wrong = await intake.client.post(updates, json={"action": "reply", "text": "Hallo"})
    assert wrong.status_code == 409 and wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["allowed"] == ["reopen"]
    no_text = await intake.client.post(updates, json={"action": "reopen", "text": "   "})
    assert no_text.status_code == 422 and no_text.json()["errors"][0]["pointer"] == "/text"
    unknown_action = await intake.client.post(updates, json={"action": "escalate", "text": "x"})
    assert unknown_action.status_code == 422 and unknown_action.json()["errors"][0]["pointer"] == "/action"
    not_json = await intake.client.post(updates, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    unknown = await intake.client.post("/v1/tracking/0000-0000-0000/updates", json={"action": "withdraw"})
    assert unknown.status_code == 404
    assert routing.received == []  # none of these reached routing

    # From the page, a reopening without a text comes back with the reason, the form open.
    empty = await intake.client.post(updates, data={"action": "reopen", "text": ""}, headers=BROWSER)
    assert empty.status_code == 422 and 'role="alert"' in empty.text
    assert "<details open>" in empty.text and "Schrijf hier uw tekst" in empty.text
    assert routing.received == []

    reopened = await intake.client.post(updates, json={"action": "reopen", "text": "Het ligt er weer."})
    assert reopened.status_code == 202 and reopened.json()["status"] == "reopened"
    assert routing.received[0][2]["status"] == "reopened"


async def test_routings_answers_become_the_residents_messages(intake: Intake, routing: Receiver) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    updates = f"/v1/tracking/{code}/updates"
    await move_case(intake, signal, "assigned", 1)
    typed = "Ik heb het zelf opgeruimd."

    # The case moved on at routing before intake heard of it: 409, with the page explaining.
    routing.status = 409
    moved = await intake.client.post(updates, data={"action": "withdraw", "text": typed}, headers=BROWSER)
    assert moved.status_code == 409 and "de status van uw melding is intussen veranderd" in moved.text
    assert f">{typed}</textarea>" in moved.text  # what was typed is kept
    assert (await intake.client.post(updates, json={"action": "withdraw"})).status_code == 409

    # Routing down or refusing intake's key: 503 with Retry-After, and the page says try later.
    routing.status = 500
    down = await intake.client.post(updates, json={"action": "withdraw"})
    assert down.status_code == 503 and down.headers["retry-after"] == "60"
    page = await intake.client.post(updates, data={"action": "withdraw"}, headers=BROWSER)
    assert page.status_code == 503 and "Probeer het over een minuut opnieuw." in page.text
    intake.context.settings.routing_url = "http://127.0.0.1:9"  # nothing listens there
    assert (await intake.client.post(updates, json={"action": "withdraw"})).status_code == 503

    # No service key configured: the same for the resident (the operator's log says what is missing).
    (intake.settings.service_keys_dir / "gouda").unlink()
    assert (await intake.client.post(updates, json={"action": "withdraw"})).status_code == 503


def _statuses(received: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [body["status"] for _, _, body in received]


async def test_english_pages_and_a_withdrawal_without_a_reason(intake: Intake, routing: Receiver) -> None:
    signal = await reported(intake, language="en")
    code = signal["tracking_code"]
    await move_case(intake, signal, "assigned", 1)
    page = await _page(intake, code)
    assert "Withdraw this report" in page
    sent = await intake.client.post(
        f"/v1/tracking/{code}/updates", data={"action": "withdraw"}, headers=BROWSER
    )
    assert sent.status_code == 303
    assert "Your report was withdrawn." in await _page(intake, code, "?sent=withdraw")
    assert _statuses(routing.received) == ["cancelled"] and routing.received[0][2]["public_note"] is None


async def test_a_case_that_ended_long_ago_is_not_reopened_but_reported_anew(
    intake: Intake, routing: Receiver
) -> None:
    """The tenant's window (30 days by default) runs from when the case was resolved; routing
    closing it later does not restart it. After it, neither the page nor the API reopens."""
    now = datetime.now(UTC)
    late, recent = await reported(intake), await reported(intake, language="en")
    for signal, resolved_days_ago in ((late, 40), (recent, 10)):
        await move_case(intake, signal, "assigned", 1, at=now - timedelta(days=resolved_days_ago + 1))
        await move_case(
            intake, signal, "resolved", 2, note="Opgeruimd.", at=now - timedelta(days=resolved_days_ago)
        )
        await move_case(intake, signal, "closed", 3, at=now - timedelta(days=2))

    fresh = (await intake.client.get(f"/v1/tracking/{recent['tracking_code']}")).json()
    assert fresh["actions"] == ["reopen"]
    until = datetime.fromisoformat(fresh["reopen_until"])
    assert abs(until - (now + timedelta(days=20))) < timedelta(seconds=5)
    page = await _page(intake, recent["tracking_code"])
    assert 'value="reopen"' in page and "You can do this until" in page

    code = late["tracking_code"]
    view = (await intake.client.get(f"/v1/tracking/{code}")).json()
    assert view["status"] == "closed" and view["actions"] == []
    assert datetime.fromisoformat(view["reopen_until"]) < now
    page = await _page(intake, code)
    assert 'value="reopen"' not in page and "Deze melding kan niet meer worden heropend" in page

    refused = await intake.client.post(
        f"/v1/tracking/{code}/updates", json={"action": "reopen", "text": "Weer."}
    )
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/reopen-window-passed") and problem["allowed"] == []
    assert problem["reopen_until"] == view["reopen_until"].replace("Z", "+00:00")
    from_page = await intake.client.post(
        f"/v1/tracking/{code}/updates", data={"action": "reopen", "text": "Weer."}, headers=BROWSER
    )
    assert (
        from_page.status_code == 409
        and from_page.text.count("Deze melding kan niet meer worden heropend") == 1
    )
    assert routing.received == []  # nothing reached routing

    # Within the window, a refusal by routing (the case moved on meanwhile) is not the window's.
    routing.status, asked = 409, len(routing.received)
    moved_on = await intake.client.post(
        f"/v1/tracking/{recent['tracking_code']}/updates", json={"action": "reopen", "text": "It is back."}
    )
    assert moved_on.status_code == 409 and moved_on.json()["type"].endswith("/resident-action-not-possible")
    assert len(routing.received) == asked + 1
    routing.status = 201
    routing.received.clear()

    # Within the window it goes through as before.
    done = await intake.client.post(
        f"/v1/tracking/{recent['tracking_code']}/updates", json={"action": "reopen", "text": "It is back."}
    )
    assert done.status_code == 202 and _statuses(routing.received) == ["reopened"]


# -- the resident's photo ---------------------------------------------------------------------------


async def _attachments(intake: Intake, signal: dict[str, Any]) -> int:
    count: int = (await intake.get(Signal, signal["id"])).attachments
    return count


async def test_an_answer_from_the_page_can_carry_a_photo(
    intake: Intake, routing: Receiver, wait_until: Any
) -> None:
    """Asked for a photo, the resident sends it with their answer: checked before the move goes to
    routing, stored once routing made it, and stored once however often the form is sent."""
    signal = await reported(intake)
    code = signal["tracking_code"]
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "waiting_on_resident", 2, note="Kunt u een foto sturen?")
    page = await _page(intake, code)
    assert 'enctype="multipart/form-data"' in page and 'type="file"' in page

    form = {"action": "reply", "text": "Hierbij de foto."}
    photo = {"file": ("IMG_0042.jpg", JPEG, "image/jpeg")}
    sent = await intake.client.post(f"/v1/tracking/{code}/updates", data=form, files=photo, headers=BROWSER)
    assert sent.status_code == 303, sent.text
    assert _statuses(routing.received) == ["in_progress"]
    assert await _attachments(intake, signal) == 1
    async with intake.runtime.sessions() as session:
        [row] = (await session.exec(select(Attachment).where(Attachment.signal_id == signal["id"]))).all()
    assert row.media_type == "image/jpeg"
    assert (intake.settings.attachments_dir / "gouda" / signal["id"] / row.id).read_bytes() == JPEG
    [event] = await intake.events("signal.attachment_added", wait_until)
    assert event["data"] == {"signal_id": signal["id"], "attachments": 1}
    # The resident sees that it arrived: a count, never a file or its name.
    assert (await intake.client.get(f"/v1/tracking/{code}")).json()["attachments"] == 1
    shown = await _page(intake, code)
    assert "<dt>Foto&#39;s en bestanden</dt><dd>1</dd>" in shown and "IMG_0042" not in shown

    # The same form again (a reload of the POST): one update at routing, still one photo.
    again = await intake.client.post(f"/v1/tracking/{code}/updates", data=form, files=photo, headers=BROWSER)
    assert again.status_code == 303
    assert routing.received[1][2]["update_id"] == routing.received[0][2]["update_id"]
    assert await _attachments(intake, signal) == 1

    # An empty file field (no photo chosen) is an answer without a photo.
    empty = {"file": ("", b"", "application/octet-stream")}
    plain = await intake.client.post(
        f"/v1/tracking/{code}/updates", data={**form, "text": "Nog iets."}, files=empty, headers=BROWSER
    )
    assert plain.status_code == 303 and await _attachments(intake, signal) == 1


async def test_a_refused_photo_changes_nothing_and_a_refused_move_stores_no_photo(
    intake: Intake, routing: Receiver
) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    updates = f"/v1/tracking/{code}/updates"
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "waiting_on_resident", 2, note="Kunt u een foto sturen?")
    form = {"action": "reply", "text": "Hierbij."}

    script = await intake.client.post(
        updates, data=form, files={"file": ("foto.jpg", SCRIPT, "image/jpeg")}, headers=BROWSER
    )
    assert script.status_code == 415 and "Dit bestand kunnen wij niet aannemen" in script.text
    assert ">Hierbij.</textarea>" in script.text  # what was typed is kept
    assert routing.received == [] and await _attachments(intake, signal) == 0

    routing.status = 500  # routing cannot take the answer: the photo is not kept either
    down = await intake.client.post(
        updates, data=form, files={"file": ("foto.png", PNG, "image/png")}, headers=BROWSER
    )
    assert down.status_code == 503 and await _attachments(intake, signal) == 0
    assert not (intake.settings.attachments_dir / "gouda" / signal["id"]).exists()

    # Once the person's data is erased, no new photo of theirs is taken, by either door.
    routing.status, asked = 201, len(routing.received)
    async with intake.runtime.sessions() as session, session.begin():
        await privacy.erase_signals(session, "gouda", [signal["id"]], "test", intake.settings.attachments_dir)
    photo = {"file": ("foto.png", PNG, "image/png")}
    page = await intake.client.post(updates, data=form, files=photo, headers=BROWSER)
    assert page.status_code == 409 and page.headers["content-type"].startswith("text/html")
    assert "uw gegevens bij deze melding gewist" in page.text and ">Hierbij.</textarea>" in page.text
    assert len(routing.received) == asked
    direct = await intake.client.post(f"/v1/tracking/{code}/attachments", files=photo)
    assert direct.status_code == 409 and direct.json()["type"].endswith("/signal-erased")
    assert await _attachments(intake, signal) == 0


@pytest.mark.parametrize("intake_settings_overrides", [{"max_attachment_bytes": 4096}])
async def test_a_portal_adds_the_residents_photo_by_the_tracking_code(intake: Intake) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    url = f"/v1/tracking/{code}/attachments"

    added = await intake.client.post(url, files={"file": ("foto.png", PNG, "image/png")})
    assert added.status_code == 201, added.text
    assert added.json() == {
        "tracking_code": code,
        "media_type": "image/png",
        "size": len(PNG),
        "attachments": 1,
    }
    assert signal["id"] not in added.text  # a public answer: no internal ids

    too_big = await intake.client.post(url, files={"file": ("big.png", PNG + b"\x00" * 8000, "image/png")})
    assert too_big.status_code == 413 and too_big.json()["errors"][0]["pointer"] == "/file"
    spoofed = await intake.client.post(url, files={"file": ("foto.jpg", SCRIPT, "image/jpeg")})
    assert spoofed.status_code == 415 and spoofed.headers["content-type"] == "application/problem+json"
    no_file = await intake.client.post(url, data={"text": "geen bestand"})
    assert no_file.status_code == 422 and no_file.json()["errors"][0]["pointer"] == "/file"
    unknown = await intake.client.post(
        "/v1/tracking/0000-0000-0000/attachments", files={"file": ("foto.png", PNG, "image/png")}
    )
    assert unknown.status_code == 404

    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "resolved", 2, note="Opgeruimd.")
    ended = await intake.client.post(url, files={"file": ("foto.jpg", JPEG, "image/jpeg")})
    assert ended.status_code == 409 and ended.json()["type"].endswith("/case-ended")
    assert await _attachments(intake, signal) == 1


async def test_a_residents_photo_under_an_idempotency_key_is_stored_once_even_sent_twice_at_once(
    intake: Intake,
) -> None:
    """A portal or app sending a photo for the resident retries with the same key: two copies at
    once make one attachment; another file under the key is a 422. Residents' keys are kept per
    signal, so another resident who picked the same key is not answered with this one's photo."""
    signal, other = await reported(intake), await reported(intake)
    url = f"/v1/tracking/{signal['tracking_code']}/attachments"
    headers = {"Idempotency-Key": "foto-1"}
    photo = {"file": ("foto.png", PNG, "image/png")}

    first, second = await asyncio.gather(
        intake.client.post(url, files=photo, headers=headers),
        intake.client.post(url, files=photo, headers=headers),
    )
    statuses = sorted([first.status_code, second.status_code])
    # The second copy either waits out the first (a 409 to retry) or replays its answer.
    assert statuses in ([201, 201], [201, 409]), (first.text, second.text)
    again = await intake.client.post(url, files=photo, headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == {
        "tracking_code": signal["tracking_code"],
        "media_type": "image/png",
        "size": len(PNG),
        "attachments": 1,
    }
    assert await _attachments(intake, signal) == 1

    reused = await intake.client.post(url, files={"file": ("foto.jpg", JPEG, "image/jpeg")}, headers=headers)
    assert reused.status_code == 422 and reused.json()["type"].endswith("/idempotency-key-reused")
    assert await _attachments(intake, signal) == 1

    elsewhere = await intake.client.post(
        f"/v1/tracking/{other['tracking_code']}/attachments",
        files={"file": ("foto.jpg", JPEG, "image/jpeg")},
        headers=headers,
    )
    assert elsewhere.status_code == 201 and "idempotent-replayed" not in elsewhere.headers
    assert elsewhere.json()["media_type"] == "image/jpeg"
    assert await _attachments(intake, other) == 1
