"""One API key's rate limit across replicas (``ratesharing``): the arithmetic with a hand-moved
clock, then two exchanges over a real nats-server, as two replicas of a service would run them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from civicsignals.common.bus import Bus
from civicsignals.common.ratelimit import TokenBucketLimiter
from civicsignals.common.ratesharing import LimitExchange, decode, encode, is_shareable

KEY = "key:0a1b2c3d4e5f6071"


def exchange_by_hand(*limiters: TokenBucketLimiter) -> None:
    """What the exchanges do over NATS: each replica's grants debited from every other replica."""
    drained = [limiter.drain_taken() for limiter in limiters]
    for index, taken in enumerate(drained):
        for other in limiters[:index] + limiters[index + 1 :]:
            for key, count in taken.items():
                other.taken_elsewhere(key, count)


def granted_over(seconds: int, limiters: list[TokenBucketLimiter], clock: Any, *, share: bool) -> int:
    """A client sending 10 requests a second to each replica in turn for ``seconds``, the
    exchange running every 0.25 s; how many got through."""
    granted = 0
    for step in range(seconds * 20):  # 0.05 s a step: 20 requests a second in all, 10 to each
        clock.now += 0.05
        granted += limiters[step % len(limiters)].acquire(KEY) == 0.0
        if share and step % 5 == 4:
            exchange_by_hand(*limiters)
    return granted


def replicas(clock: Any, count: int = 2, *, share: bool = True) -> list[TokenBucketLimiter]:
    limiters = [TokenBucketLimiter(2.0, 10, clock=clock) for _ in range(count)]
    for limiter in limiters:
        limiter.share_taken = share
    return limiters


def test_two_replicas_that_share_their_grants_hold_the_key_to_one_limit(manual_clock: Any) -> None:
    """Rate 2/s, burst 10, over 30 s: one bucket allows 10 + 60 = 70. Two replicas alone allow
    about twice that; sharing brings it back to the one limit, give or take what one exchange
    interval lets through on the other replica (at most its share of 0.25 s of refill, and the
    one burst each could grant before the first exchange)."""
    alone = granted_over(30, replicas(manual_clock, share=False), manual_clock, share=False)
    shared = granted_over(30, replicas(manual_clock), manual_clock, share=True)
    one_limit = 10 + 2 * 30
    assert alone >= 2 * one_limit - 2
    assert one_limit - 2 <= shared <= one_limit + 10 + 2, (alone, shared)


def test_a_burst_spent_on_one_replica_is_spent_on_the_other(manual_clock: Any) -> None:
    first, second = replicas(manual_clock)
    assert all(first.acquire(KEY) == 0.0 for _ in range(10))
    assert second.tokens(KEY) == 10.0  # not told yet
    exchange_by_hand(first, second)
    assert second.tokens(KEY) == pytest.approx(0.0)
    assert second.acquire(KEY) == pytest.approx(0.5)  # the next token in 1 / 2 s
    assert first.drain_taken() == {} and second.drain_taken() == {}  # a refusal grants nothing


def test_the_debt_from_other_replicas_is_bounded_by_one_burst(manual_clock: Any) -> None:
    """Three replicas that each granted a burst at the same moment: each bucket stops at minus one
    burst, so the key waits (10 + 1) / 2 s, not for the whole overdraft."""
    limiters = replicas(manual_clock, 3)
    for limiter in limiters:
        assert all(limiter.acquire(KEY) == 0.0 for _ in range(10))
    exchange_by_hand(*limiters)
    for limiter in limiters:
        assert limiter.tokens(KEY) == pytest.approx(-10.0)
        assert limiter.acquire(KEY) == pytest.approx(5.5)
    manual_clock.now += 5.5
    assert all(limiter.acquire(KEY) == 0.0 for limiter in limiters)


def test_a_token_given_back_is_not_told_and_a_limiter_that_does_not_share_counts_nothing(
    manual_clock: Any,
) -> None:
    shared, alone = replicas(manual_clock, 1)[0], replicas(manual_clock, 1, share=False)[0]
    for limiter in (shared, alone):
        limiter.acquire(KEY)
        limiter.acquire(KEY)
        limiter.give_back(KEY)
    assert shared.drain_taken() == {KEY: 1}
    assert alone.drain_taken() == {}
    shared.acquire(KEY)
    shared.give_back(KEY)
    assert shared.drain_taken() == {}
    shared.taken_elsewhere(KEY, 0)  # nothing to debit
    assert shared.tokens(KEY) == pytest.approx(9.0)


def test_only_api_key_ids_may_travel_and_anything_else_on_the_subject_is_refused() -> None:
    assert is_shareable(KEY) and is_shareable("key:portal-1")
    for personal in (
        "person:8d2e-sub",
        "ip:192.0.2.1",
        "2001:db8::/64",
        "key:",
        "key:a b",
        "key:" + "a" * 65,
    ):
        assert not is_shareable(personal), personal
    assert decode(encode("r1", {KEY: 3})) == ("r1", {KEY: 3})
    for payload in (
        b"not json",
        b"[]",
        json.dumps({"replica": 1, "taken": {}}).encode(),
        json.dumps({"replica": "r", "taken": []}).encode(),
        json.dumps({"replica": "r", "taken": {"person:x": 1}}).encode(),
        json.dumps({"replica": "r", "taken": {KEY: 0}}).encode(),
        json.dumps({"replica": "r", "taken": {KEY: True}}).encode(),
        json.dumps({"replica": "r", "taken": {KEY: 1.5}}).encode(),
    ):
        with pytest.raises(ValueError):
            decode(payload)


async def test_two_replicas_share_a_keys_limit_over_nats(nats_server: Any, wait_until: Any) -> None:
    """Two exchanges on a real nats-server: a burst spent on one replica leaves the key nothing on
    the other, a person's and an address's buckets stay where they are (and never go on the bus),
    and a message on the subject that the exchange did not write changes nothing and stops
    nothing."""
    buses = [Bus(nats_server.url, service="intake") for _ in range(2)]
    for bus in buses:
        await bus.connect(retry_forever=False)
    first, second = (TokenBucketLimiter(0.01, 5) for _ in range(2))
    exchanges = [
        LimitExchange(limiter, bus, limit="keys", interval_s=0.05)
        for limiter, bus in zip((first, second), buses, strict=True)
    ]
    seen: list[bytes] = []

    async def record(message: Any) -> None:
        seen.append(message.data)

    listener = await buses[0].nc.subscribe(exchanges[0].subject, cb=record)
    tasks = [asyncio.create_task(exchange.run()) for exchange in exchanges]
    try:
        await asyncio.sleep(0.1)  # both subscribed
        person = "person:3f1c9a"
        assert all(first.acquire(KEY) == 0.0 for _ in range(5))
        assert all(first.acquire(person) == 0.0 for _ in range(5))
        await wait_until(lambda: second.tokens(KEY) < 1.0, timeout=5, message="the other replica to hear")
        assert second.acquire(KEY) > 0.0  # refused there too
        assert second.tokens(person) == 5.0 and second.acquire(person) == 0.0
        assert seen and all(b"person:" not in payload for payload in seen)
        assert exchanges[0].subject == "civicsignals.ratelimit.intake.keys"

        await buses[0].nc.publish(exchanges[0].subject, b'{"replica": "x", "taken": {"person:y": 9}}')
        await buses[0].nc.publish(exchanges[0].subject, b"\xff not json")
        other = "key:00ff00ff00ff00ff"
        assert second.acquire(other) == 0.0
        await wait_until(lambda: first.tokens(other) < 5.0, timeout=5, message="the exchange to go on")
        assert first.tokens("person:y") == 5.0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.unsubscribe()
        for bus in buses:
            await bus.close()
