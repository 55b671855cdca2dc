"""Helpers for the fault tests: load generation and reading whole subjects back from JetStream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import nats
from nats.js.api import DeliverPolicy


def servers(nats_url: str) -> list[str]:
    """A cluster's URL is the comma-separated list of its servers."""
    return [url for url in nats_url.split(",") if url]


async def read_subject(
    nats_url: str, subject: str, *, stream: str = "CIVIC", idle_s: float = 2.0
) -> list[Any]:
    """Every message stored under ``subject`` (wildcards allowed), read with an ordered consumer."""
    client = await nats.connect(servers(nats_url))
    try:
        js = client.jetstream()
        info = await js.stream_info(stream, subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values())
        messages: list[Any] = []
        if expected == 0:
            return messages
        done = asyncio.Event()

        async def _collect(msg: Any) -> None:
            messages.append(msg)
            if len(messages) >= expected:
                done.set()

        subscription = await js.subscribe(
            subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=_collect
        )
        try:
            await asyncio.wait_for(done.wait(), timeout=max(30.0, expected / 500))
        finally:
            await subscription.unsubscribe()
        return messages
    finally:
        await client.close()


async def subject_counts(nats_url: str, subject: str, stream: str = "CIVIC") -> int:
    client = await nats.connect(servers(nats_url))
    try:
        info = await client.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await client.close()


async def consumer_states(nats_url: str, stream: str = "CIVIC") -> str:
    """One line per durable consumer: what it has yet to get, holds unacknowledged, got again."""
    client = await nats.connect(servers(nats_url))
    try:
        infos = await client.jetstream().consumers_info(stream)
        return "\n".join(
            f"{info.name}: pending {info.num_pending}, unacknowledged {info.num_ack_pending}, "
            f"redelivered {info.num_redelivered}, waiting pulls {info.num_waiting}, "
            f"cluster leader {info.cluster.leader if info.cluster else '-'}"
            for info in sorted(infos, key=lambda info: str(info.name))
        )
    finally:
        await client.close()


def data_field_counts(messages: list[Any], field: str) -> Counter[str]:
    return Counter(str(json.loads(m.data)["data"][field]) for m in messages)


async def post_many(
    url: str,
    key: str,
    bodies: list[dict[str, Any]],
    *,
    concurrency: int = 16,
    retry_for_s: float = 0.0,
    attempts: Counter[int] | None = None,
) -> tuple[list[dict[str, Any]], Counter[int]]:
    """POST every body with ``concurrency`` clients; returns the 201 answers and the final status codes.

    With ``retry_for_s``, a client behaves like a careful portal: each body carries its own
    ``Idempotency-Key``, and a broken connection, a 409 (in flight) or a 503 is retried with the same
    key until that much time has passed. Status 0 stands for a connection that broke. ``attempts``,
    when given, counts the status of every attempt (retried ones too), so a test can tell that its
    fault really broke requests.
    """
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    created: list[dict[str, Any]] = []
    statuses: Counter[int] = Counter()

    async def _worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
            deadline = time.monotonic() + retry_for_s
            while True:
                try:
                    response = await client.post(url, json=body, headers=headers)
                    status = response.status_code
                except httpx.TransportError:
                    response, status = None, 0
                if attempts is not None:
                    attempts[status] += 1
                if status in (0, 409, 503) and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                    continue
                break
            statuses[status] += 1
            if response is not None and status == 201:
                created.append(response.json())

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(_worker(client) for _ in range(concurrency)))
    return created, statuses
