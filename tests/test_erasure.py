"""Erasure on request (AVG article 17) reaches every service, and every recipient is told
(article 19): separate processes, a real nats-server, SQLite, a real partner endpoint.

A resident's signal goes the whole way first: routed to a department and forwarded to a partner,
an internal note by staff, a correction of its topic (which the classifier keeps as training
data), resolved, and a satisfaction answer with a comment. Then ``civicsignals-intake erase`` runs
as an operator runs it. Afterwards intake, routing, the classifier and insights keep what
statistics need and nothing more, the partner's endpoint has received a ``signal.erased``
webhook and the department's feed a ``dept.erased`` event. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from civicsignals.devstack.ports import free_port
from tests.conftest import SERVICE_NAMES, Stack
from tests.faults import read_subject
from tests.test_pii_canary import Receiver, cases_of, query, resolve_as_staff, wait_for
from tests.test_pipeline import post_signal, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

INTERNAL_NOTE = "Mevrouw De Vries belde terug, zij woont op nummer 14 en is overdag thuis."
FEEDBACK_COMMENT = "Het duurde lang, maar de mevrouw van de gemeente was vriendelijk."


def _erase(stack: Stack, tracking_code: str) -> str:
    """``civicsignals-intake erase`` against the stack's intake database, as an operator runs it."""
    command = Path(sys.executable).with_name("civicsignals-intake")
    done = subprocess.run(
        [str(command), "erase", "--tenant", "demo", "--tracking-code", tracking_code, "--yes"],
        env={**os.environ, **stack.env("intake")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "erased: 1 signal(s), 1 contact(s)" in output, output
    return output


def _case_detail(stack: Stack, case_id: str) -> dict[str, Any]:
    with stack.client() as client:
        detail = client.get(f"{stack.url('routing')}/v1/cases/{case_id}")
    assert detail.status_code == 200, detail.text
    body: dict[str, Any] = detail.json()
    return body


def _webhook_types(receiver: Receiver) -> list[tuple[str, str]]:
    """(type, signal id) of every webhook the partner received."""
    seen = []
    for body in list(receiver.bodies):
        envelope = json.loads(body)
        seen.append((str(envelope["type"]), str(envelope["data"].get("signal_id"))))
    return seen


async def test_erasure_reaches_every_service_and_every_recipient(stack: Stack) -> None:
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    stack.forward_rule_to("afval", "woonpartners")
    for name in SERVICE_NAMES:
        stack.start(name)
    db = stack.data_dir / "db"
    headers = {"Authorization": f"Bearer {stack.dev_key}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        notifier = stack.url("notifier")
        partner = await client.post(f"{notifier}/v1/partners", json={"code": "woonpartners"})
        assert partner.status_code in (201, 409), partner.text
        endpoint = await client.post(
            f"{notifier}/v1/partners/woonpartners/endpoints", json={"url": f"http://127.0.0.1:{port}/hook"}
        )
        assert endpoint.status_code == 201, endpoint.text

    created = await asyncio.to_thread(post_signal, stack)
    signal_id, code = str(created["id"]), str(created["tracking_code"])
    cases = await wait_for("the signal's case", lambda: cases_of(stack, [signal_id]), stack)
    case_id = str(cases[signal_id]["id"])
    assert "woonpartners" in cases[signal_id]["partners"], cases

    # Staff's internal note, and a correction of the topic (the classifier keeps it for training).
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        routing = stack.url("routing")
        noted = await client.post(
            f"{routing}/v1/cases/{case_id}/notes", json={"internal_note": INTERNAL_NOTE}
        )
        assert noted.status_code == 200, noted.text
        corrected = await client.post(
            f"{routing}/v1/cases/{case_id}/reclassification",
            json={"topic": "afval", "subtopic": "dumping", "internal_note": INTERNAL_NOTE},
        )
        assert corrected.status_code == 200, corrected.text
    await asyncio.to_thread(resolve_as_staff, stack, case_id, "De vuilniszakken zijn opgehaald.")
    await asyncio.to_thread(wait_for_status, stack, code, "resolved")
    async with httpx.AsyncClient(timeout=30) as client:
        feedback = await client.post(
            f"{stack.url('intake')}/v1/tracking/{code}/feedback",
            json={"satisfied": False, "score": 2, "comment": FEEDBACK_COMMENT},
        )
        assert feedback.status_code == 201, feedback.text

    # Everything has arrived where it is kept, so the erasure has something to take away.
    await wait_for(
        "the correction at the classifier",
        lambda: query(db / "classifier.db", "SELECT text FROM correction WHERE signal_id = ?", signal_id),
        stack,
    )
    await wait_for(
        "the feedback and the signal's text at insights",
        lambda: query(
            db / "insights.db",
            "SELECT 1 FROM insights_feedback f JOIN insights_signal s ON s.signal_id = f.signal_id "
            "WHERE f.signal_id = ? AND s.text IS NOT NULL",
            signal_id,
        ),
        stack,
    )
    before = _case_detail(stack, case_id)
    assert INTERNAL_NOTE in {entry["internal_note"] for entry in before["history"]}, before["history"]
    statuses_before = [entry["to_status"] for entry in before["history"]]
    departments = {before["responsible"], *before.get("informed", [])}

    await asyncio.to_thread(_erase, stack, code)

    # Routing: the internal notes are gone, the history (statuses, public notes) stays.
    def routing_erased() -> dict[str, Any] | None:
        detail = _case_detail(stack, case_id)
        return detail if all(entry["internal_note"] is None for entry in detail["history"]) else None

    after = await wait_for("routing's internal notes to go", routing_erased, stack)
    assert [entry["to_status"] for entry in after["history"]] == statuses_before
    assert "De vuilniszakken zijn opgehaald." in {entry["public_note"] for entry in after["history"]}

    # The classifier no longer trains on the signal's text.
    await wait_for(
        "the correction's text to go at the classifier",
        lambda: (
            not query(
                db / "classifier.db",
                "SELECT 1 FROM correction WHERE signal_id = ? AND text IS NOT NULL",
                signal_id,
            )
        ),
        stack,
    )

    # Insights keeps the counts and the score, not the text (it never keeps feedback comments).
    await wait_for(
        "the text to go at insights",
        lambda: query(
            db / "insights.db",
            "SELECT 1 FROM insights_feedback f JOIN insights_signal s ON s.signal_id = f.signal_id "
            "WHERE f.signal_id = ? AND s.text IS NULL AND f.score = 2",
            signal_id,
        ),
        stack,
    )

    # The recipients are told: the partner by a signed webhook, the departments on their feeds.
    await wait_for(
        "the partner's signal.erased webhook",
        lambda: ("nl.civicsignals.signal.erased.v1", signal_id) in _webhook_types(receiver),
        stack,
    )

    async def department_feeds() -> set[str]:
        messages = await read_subject(stack.nats.url, "civic.demo.dept.*.erased")
        return {
            str(json.loads(message.data)["data"]["department"])
            for message in messages
            if json.loads(message.data)["data"]["signal_id"] == signal_id
        }

    for _ in range(100):
        told = await department_feeds()
        if departments <= told:
            break
        await asyncio.sleep(0.3)
    assert departments <= told, (departments, told, stack.logs())

    # Intake's public page still shows the case's history: statistics and the case add up.
    tracking = await asyncio.to_thread(wait_for_status, stack, code, "resolved")
    assert [entry["status"] for entry in tracking["history"]][-1] == "resolved"
