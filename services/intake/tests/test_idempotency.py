"""``Idempotency-Key`` after a crash (DESIGN §5): a retry never makes a second signal.

The key's claim reserves the id of the signal it will create. These tests leave the database as
a request that died at the worst moment would: the claim still in progress, with or without the
signal committed, and retry after the (shortened) abandon period. Real SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from civicsignals.common.events import utcnow
from civicsignals.common.ids import new_id
from civicsignals.intake import flows
from civicsignals.intake.models import Conversation, IdempotencyRecord, Signal, SignalCreate, SignalCreated

from .conftest import SIGNAL, Intake

ABANDON_AFTER_S = 0.5

pytestmark = pytest.mark.parametrize(
    "intake_settings_overrides", [{"idempotency_abandon_after_s": ABANDON_AFTER_S}]
)


async def post(intake: Intake, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    """POST a signal (the shared example unless ``body``) under ``Idempotency-Key: key``."""
    return await intake.client.post(
        "/v1/signals", json=body or SIGNAL, headers={**intake.auth(), "Idempotency-Key": key}
    )


async def crash_before_completion(intake: Intake, key: str) -> None:
    """Put the key back in progress, as if intake died after the signal's commit."""
    async with intake.runtime.sessions() as session, session.begin():
        await session.exec(
            update(IdempotencyRecord)
            .where(col(IdempotencyRecord.key) == key)
            .values(status_code=None, response=None)
        )


async def claim_only(intake: Intake, key: str, body: dict[str, Any], *, age_s: float) -> str:
    """A claim written by a request that died before its signal was committed; returns its id."""
    fingerprint = flows.service.request_fingerprint(SignalCreate.model_validate(body), "signals")
    reserved = new_id()
    async with intake.runtime.sessions() as session, session.begin():
        session.add(
            IdempotencyRecord(
                tenant="gouda",
                key=key,
                request_hash=fingerprint,
                resource_id=reserved,
                created_at=utcnow() - timedelta(seconds=age_s),
            )
        )
    return reserved


async def signal_ids(intake: Intake) -> list[str]:
    async with intake.runtime.sessions() as session:
        return list((await session.exec(select(Signal.id))).all())


async def test_the_claim_reserves_the_id_of_the_signal_it_creates(intake: Intake) -> None:
    response = await post(intake, "reserve-1")
    assert response.status_code == 201, response.text
    record = await intake.get(IdempotencyRecord, ("gouda", "reserve-1"))
    assert record.resource_id == response.json()["id"] and record.status_code == 201


async def test_a_retry_after_a_crash_between_commit_and_completion_gets_the_same_signal(
    intake: Intake, wait_until: Any
) -> None:
    first = await post(intake, "crash-1")
    assert first.status_code == 201, first.text
    await crash_before_completion(intake, "crash-1")

    await asyncio.sleep(ABANDON_AFTER_S + 0.2)  # the claim is abandoned now
    retry = await post(intake, "crash-1")
    assert retry.status_code == 201, retry.text
    assert retry.json() == first.json() and retry.headers["Idempotent-Replayed"] == "true"
    assert await signal_ids(intake) == [first.json()["id"]]
    record = await intake.get(IdempotencyRecord, ("gouda", "crash-1"))
    assert record.status_code == 201 and record.response == first.json()  # completed by the retry
    again = await post(intake, "crash-1")
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    await asyncio.sleep(0.5)  # the outbox relay runs every 0.1 s: a second event would be out now
    events = await intake.events("signal.received", wait_until)
    assert [e["data"]["signal_id"] for e in events] == [first.json()["id"]]


async def test_a_retry_before_the_abandon_period_also_finds_the_committed_signal(intake: Intake) -> None:
    first = await post(intake, "crash-2")
    await crash_before_completion(intake, "crash-2")
    retry = await post(intake, "crash-2")
    assert retry.status_code == 201 and retry.json() == first.json(), retry.text
    assert await intake.count(Signal) == 1


async def test_another_body_under_a_crashed_key_is_still_a_422(intake: Intake) -> None:
    first = await post(intake, "crash-3")
    await crash_before_completion(intake, "crash-3")
    await asyncio.sleep(ABANDON_AFTER_S + 0.2)
    other = await post(intake, "crash-3", {**SIGNAL, "text": "Iets heel anders."})
    assert other.status_code == 422, other.text
    assert other.json()["type"].endswith("idempotency-key-reused")
    assert await signal_ids(intake) == [first.json()["id"]]


async def test_an_abandoned_claim_without_its_signal_is_taken_over_with_the_reserved_id(
    intake: Intake,
) -> None:
    reserved = await claim_only(intake, "lost-1", SIGNAL, age_s=10 * ABANDON_AFTER_S)
    retry = await post(intake, "lost-1")
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] == reserved and "Idempotent-Replayed" not in retry.headers
    assert await signal_ids(intake) == [reserved]


async def test_a_claim_still_in_flight_without_its_signal_is_a_409(intake: Intake) -> None:
    await claim_only(intake, "busy-1", SIGNAL, age_s=0.0)
    response = await post(intake, "busy-1")
    assert response.status_code == 409 and response.headers["Retry-After"] == "1", response.text
    assert await intake.count(Signal) == 0


async def test_retries_racing_for_an_abandoned_claim_make_one_signal(intake: Intake) -> None:
    reserved = await claim_only(intake, "lost-2", SIGNAL, age_s=10 * ABANDON_AFTER_S)
    racing = await asyncio.gather(*(post(intake, "lost-2") for _ in range(6)))
    statuses = sorted(r.status_code for r in racing)
    assert set(statuses) <= {201, 409} and 201 in statuses, [r.text for r in racing]
    assert {r.json()["id"] for r in racing if r.status_code == 201} == {reserved}
    assert await signal_ids(intake) == [reserved]
    later = await post(intake, "lost-2")
    assert later.status_code == 201 and later.json()["id"] == reserved


async def test_two_identical_requests_at_once_make_one_signal(intake: Intake) -> None:
    racing = await asyncio.gather(*(post(intake, "twin") for _ in range(2)))
    assert sorted(r.status_code for r in racing) in ([201, 201], [201, 409]), [r.text for r in racing]
    assert await intake.count(Signal) == 1
    assert len({r.json()["id"] for r in racing if r.status_code == 201}) == 1


async def test_a_slow_first_attempt_that_commits_the_reserved_id_wins_over_the_takeover(
    intake: Intake,
) -> None:
    """The takeover's own write fails on the primary key; it answers with the first attempt's signal."""
    payload = SignalCreate.model_validate(SIGNAL)
    reserved = await claim_only(intake, "slow-1", SIGNAL, age_s=10 * ABANDON_AFTER_S)
    context = intake.context

    async def late_first_attempt_then_ours(signal_id: str) -> SignalCreated:
        assert signal_id == reserved
        await flows.receive_signal(context, "gouda", payload, "portal", signal_id=signal_id)  # the slow one
        return await flows.receive_signal(context, "gouda", payload, "portal", signal_id=signal_id)

    result, replayed = await flows.run_once(
        context,
        "gouda",
        "slow-1",
        flows.service.request_fingerprint(payload, "signals"),
        late_first_attempt_then_ours,
        lambda session, signal_id: flows.find_signal(context, session, "gouda", signal_id),
        SignalCreated,
    )
    assert result.id == reserved and replayed
    assert await signal_ids(intake) == [reserved]
    record = await intake.get(IdempotencyRecord, ("gouda", "slow-1"))
    assert record.status_code == 201 and record.response["id"] == reserved


async def test_a_failing_request_releases_its_key(intake: Intake) -> None:
    payload = SignalCreate.model_validate(SIGNAL)

    async def fails(_signal_id: str) -> SignalCreated:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        await flows.run_once(
            intake.context,
            "gouda",
            "fails-1",
            flows.service.request_fingerprint(payload, "signals"),
            fails,
            lambda session, signal_id: flows.find_signal(intake.context, session, "gouda", signal_id),
            SignalCreated,
        )
    assert await intake.count(IdempotencyRecord) == 0
    response = await post(intake, "fails-1")
    assert response.status_code == 201 and "Idempotent-Replayed" not in response.headers


async def test_a_conversation_retried_after_a_crash_is_stored_once(intake: Intake) -> None:
    body = {
        "channel": "phone",
        "started_at": "2026-11-28T09:12:00Z",
        "duration_s": 60,
        "team": "kcc",
        "outcome": "melding aangemaakt",
        "turns": [{"speaker": "citizen", "text": "De lantaarnpaal doet het niet."}],
    }
    headers = {**intake.auth(), "Idempotency-Key": "call-crash"}
    first = await intake.client.post("/v1/conversations", json=body, headers=headers)
    assert first.status_code == 201, first.text
    await crash_before_completion(intake, "call-crash")
    await asyncio.sleep(ABANDON_AFTER_S + 0.2)
    retry = await intake.client.post("/v1/conversations", json=body, headers=headers)
    assert retry.status_code == 201 and retry.json() == first.json(), retry.text
    assert await intake.count(Conversation) == 1
