"""A resident's own moves through the real services: intake's tracking page passes them to
routing on the resident's behalf, routing's lifecycle allows them for the role ``resident``, and
the change comes back to the page through the bus. Separate processes, real nats-server, SQLite."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import SERVICE_NAMES, Stack
from tests.test_pipeline import post_signal, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
BROWSER = {"Accept": "text/html"}


def _staff_moves(stack: Stack, case_id: str, to: str, note: str) -> None:
    with stack.client() as client:
        moved = client.post(
            f"{stack.url('routing')}/v1/cases/{case_id}/transitions", json={"to": to, "public_note": note}
        )
    assert moved.status_code == 200, moved.text


def _case(stack: Stack, tracking_code: str) -> dict:
    with stack.client() as client:
        found = client.get(f"{stack.url('routing')}/v1/cases", params={"tracking_code": tracking_code})
        assert found.status_code == 200, found.text
        [case] = found.json()["items"]
        detail = client.get(f"{stack.url('routing')}/v1/cases/{case['id']}")
    assert detail.status_code == 200, detail.text
    body: dict = detail.json()
    return body


def _resident(stack: Stack, tracking_code: str, action: str, text: str | None) -> httpx.Response:
    """As the page's form sends it: no key, form-encoded, a browser's Accept."""
    with httpx.Client(timeout=10) as client:
        return client.post(
            f"{stack.url('intake')}/v1/tracking/{tracking_code}/updates",
            data={"action": action, **({"text": text} if text else {})},
            headers=BROWSER,
        )


async def test_a_resident_answers_the_question_and_later_reopens_the_case(stack: Stack) -> None:
    for name in SERVICE_NAMES:
        stack.start(name)
    code = (await asyncio.to_thread(post_signal, stack))["tracking_code"]
    await asyncio.to_thread(wait_for_status, stack, code, "assigned")
    case_id = (await asyncio.to_thread(_case, stack, code))["id"]

    await asyncio.to_thread(_staff_moves, stack, case_id, "waiting_on_resident", "Welke container bedoelt u?")
    await asyncio.to_thread(wait_for_status, stack, code, "waiting_on_resident")
    answered = await asyncio.to_thread(
        _resident, stack, code, "reply", "Die bij de bakker. Mail: a@example.org"
    )
    assert answered.status_code == 303, answered.text
    tracking = await asyncio.to_thread(wait_for_status, stack, code, "in_progress")
    assert tracking["history"][-1]["note"] == "Die bij de bakker. Mail: [EMAIL]"

    await asyncio.to_thread(_staff_moves, stack, case_id, "resolved", "Opgeruimd.")
    await asyncio.to_thread(wait_for_status, stack, code, "resolved")
    reopened = await asyncio.to_thread(_resident, stack, code, "reopen", "Er ligt weer afval.")
    assert reopened.status_code == 303, reopened.text
    tracking = await asyncio.to_thread(wait_for_status, stack, code, "reopened")
    assert tracking["expected_by"] is not None  # a reopened case gets a new due date, shown at once

    # Routing recorded both moves as the resident's, and refuses what the lifecycle does not allow.
    case = await asyncio.to_thread(_case, stack, code)
    by_resident = [entry for entry in case["history"] if entry["actor"] == "resident"]
    assert [entry["to_status"] for entry in by_resident] == ["in_progress", "reopened"], case["history"]
    refused = await asyncio.to_thread(_resident, stack, code, "withdraw", None)
    assert refused.status_code == 409 and "intussen veranderd" in refused.text
