"""Durable pull consumers and the dead-letter stream (DESIGN §2), on a real nats-server.

Redelivery delays are the library's own (1, 2, 4 … s) in production; they are checked as values in
``test_redelivery_delay_grows_and_is_capped``, and shortened in the tests that wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.msg import Msg
from opentelemetry import trace

from civicsignals.common import bus as bus_module
from civicsignals.common.bus import (
    DLQ_STREAM,
    STREAM,
    Bus,
    Consumer,
    ConsumerSpec,
    PermanentError,
    TransientError,
    redelivery_delay,
    stream_messages,
)
from civicsignals.common.events import (
    CloudEvent,
    SignalClassified,
    SignalReceived,
    read_data,
)
from civicsignals.common.telemetry import tracer
from civicsignals.devstack.nats import NatsServer

from .conftest import received_event

pytestmark = pytest.mark.timeout(60)

DURABLE = "tests-received"
SUBJECT = "civic.gouda.signal.received"


class Recorder:
    """A handler that records what it saw and behaves as told."""

    def __init__(self, behaviour: Callable[[CloudEvent, Msg, int], Awaitable[None]] | None = None) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, int, float]] = []  # (event id, num_delivered, monotonic time)
        self.trace_ids: list[int] = []

    async def __call__(self, event: CloudEvent, msg: Msg) -> None:
        self.calls.append((event.id, msg.metadata.num_delivered, time.monotonic()))
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        if self.behaviour is not None:
            await self.behaviour(event, msg, len(self.calls))

    @property
    def ids(self) -> list[str]:
        return [call[0] for call in self.calls]


@contextlib.asynccontextmanager
async def running(bus: Bus, spec: ConsumerSpec) -> AsyncIterator[Consumer]:
    consumer = Consumer(bus, spec)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _spec(handler: Any, **options: Any) -> ConsumerSpec:
    options.setdefault("max_deliver", 5)
    options.setdefault("ack_wait_s", 10.0)
    return ConsumerSpec(durable=DURABLE, filter_subject="civic.*.signal.received", handler=handler, **options)


@pytest.fixture
def short_delays(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], float]:
    """Redeliver after 0.3 s times the delivery number instead of seconds."""

    def _delay(num_delivered: int) -> float:
        return 0.3 * num_delivered

    monkeypatch.setattr(bus_module, "redelivery_delay", _delay)
    return _delay


async def _settled(bus: Bus, last_seq: int) -> bool:
    """Every message up to ``last_seq`` was acked or termed, and nothing waits."""
    info = await bus.js.consumer_info(STREAM, DURABLE)
    return info.ack_floor.stream_seq >= last_seq and info.num_ack_pending == 0 and info.num_pending == 0


def test_redelivery_delay_grows_and_is_capped() -> None:
    assert [redelivery_delay(n) for n in range(0, 10)] == [1, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert redelivery_delay(1000) == 60


async def test_a_handled_message_is_acked(bus: Bus, wait_until: Any) -> None:
    handler = Recorder()
    event = received_event()
    await bus.publish(SUBJECT, event)
    await bus.publish("civic.gouda.signal.classified", received_event(2))  # another kind: not ours

    async with running(bus, _spec(handler)):
        await wait_until(lambda: handler.calls, message="the handler to run")
        await wait_until(lambda: _settled(bus, 1), message="the ack")

    assert handler.ids == [event.id]
    assert handler.calls[0][1] == 1
    info = await bus.js.consumer_info(STREAM, DURABLE)
    assert info.num_redelivered == 0
    assert await stream_messages(bus.js, DLQ_STREAM) == []


async def test_stop_ends_a_waiting_fetch_at_once(bus: Bus, wait_until: Any) -> None:
    """A shutdown does not wait for a fetch that waits for messages to time out."""
    idle = Consumer(bus, _spec(Recorder()))
    idle_task = asyncio.create_task(idle.run())
    await wait_until(lambda: idle._fetch is not None and not idle._fetch.done(), message="a fetch that waits")
    fetch = idle._fetch
    assert fetch is not None and not fetch.done()
    idle.stop()
    await asyncio.wait_for(idle_task, timeout=10)
    assert fetch.cancelled()  # ended by stop(), not by its own timeout


async def test_published_event_carries_its_id_and_is_deduplicated(bus: Bus) -> None:
    event = received_event()
    await bus.publish(SUBJECT, event)
    await bus.publish(SUBJECT, event)  # a retried publish
    messages = await stream_messages(bus.js, STREAM)
    assert len(messages) == 1
    assert messages[0].headers["Nats-Msg-Id"] == event.id


@pytest.mark.parametrize("error", [RuntimeError("database down"), TransientError("classifier busy")])
async def test_a_failing_handler_is_redelivered_after_a_delay_then_acked(
    bus: Bus, wait_until: Any, short_delays: Callable[[int], float], error: Exception
) -> None:
    async def fail_twice(_event: CloudEvent, _msg: Msg, call: int) -> None:
        if call <= 2:
            raise error

    handler = Recorder(fail_twice)
    await bus.publish(SUBJECT, received_event())

    async with running(bus, _spec(handler)):
        await wait_until(lambda: len(handler.calls) == 3, timeout=10, message="three deliveries")
        await wait_until(lambda: _settled(bus, 1), message="the ack")

    assert [delivered for _, delivered, _ in handler.calls] == [1, 2, 3]
    first, second, third = (at for _, _, at in handler.calls)
    # The nak carried the delay: JetStream held the message back at least that long.
    assert second - first >= short_delays(1) - 0.05
    assert third - second >= short_delays(2) - 0.05
    assert await stream_messages(bus.js, DLQ_STREAM) == []


async def test_malformed_payloads_are_dead_lettered_and_the_rest_flows_on(bus: Bus, wait_until: Any) -> None:
    handler = Recorder()
    wrong_tenant = received_event().model_dump(mode="json")
    wrong_tenant["tenant"] = "Gouda"
    poison = [
        b"this is not JSON",
        b'{"hello": "world"}',
        json.dumps(wrong_tenant).encode(),
    ]
    for payload in poison:
        await bus.js.publish(SUBJECT, payload)
    valid = received_event()
    await bus.publish(SUBJECT, valid)

    async with running(bus, _spec(handler)):
        await wait_until(lambda: handler.calls, message="the valid event to be handled")
        await wait_until(lambda: _settled(bus, 4), message="every message to be settled")

    assert handler.ids == [valid.id]
    info = await bus.js.consumer_info(STREAM, DURABLE)
    assert info.num_redelivered == 0  # termed, not retried

    dead = await stream_messages(bus.js, DLQ_STREAM)
    assert [message.data for message in dead] == poison
    for message in dead:
        assert message.subject == f"dlq.unknown.{DURABLE}"
        assert message.headers["Civic-Dlq-Reason"].startswith("malformed CloudEvent")
        assert message.headers["Civic-Dlq-Consumer"] == DURABLE
        assert message.headers["Civic-Dlq-Subject"] == SUBJECT
        assert message.headers["Civic-Dlq-Deliveries"] == "1"


async def test_a_permanent_error_is_dead_lettered_under_its_tenant(
    bus: Bus, wait_until: Any, spans: Any
) -> None:
    async def refuse(_event: CloudEvent, _msg: Msg, _call: int) -> None:
        raise PermanentError("department wegen is unknown")

    handler = Recorder(refuse)
    event = received_event(tenant="alphen-aan-den-rijn")
    with tracer().start_as_current_span("publisher"):
        await bus.publish("civic.alphen-aan-den-rijn.signal.received", event)

    async with running(bus, _spec(handler)):
        await wait_until(lambda: stream_messages(bus.js, DLQ_STREAM), message="the dead letter")
        await wait_until(lambda: _settled(bus, 1), message="the term")

    assert len(handler.calls) == 1
    [dead] = await stream_messages(bus.js, DLQ_STREAM)
    assert dead.subject == f"dlq.alphen-aan-den-rijn.{DURABLE}"
    assert dead.headers["Civic-Dlq-Reason"] == "PermanentError: department wegen is unknown"
    assert dead.headers["Civic-Dlq-Subject"] == "civic.alphen-aan-den-rijn.signal.received"
    assert dead.headers["Nats-Msg-Id"] == f"dlq-{DURABLE}-1"
    assert "traceparent" in dead.headers
    assert CloudEvent.from_json(dead.data) == event


async def test_data_that_does_not_fit_its_model_is_dead_lettered(bus: Bus, wait_until: Any) -> None:
    async def strict(event: CloudEvent, _msg: Msg, _call: int) -> None:
        read_data(event, SignalReceived)

    handler = Recorder(strict)
    event = received_event()
    event.data["kind"] = "rant"
    await bus.publish(SUBJECT, event)

    async with running(bus, _spec(handler)):
        await wait_until(lambda: stream_messages(bus.js, DLQ_STREAM), message="the dead letter")

    [dead] = await stream_messages(bus.js, DLQ_STREAM)
    assert dead.subject == f"dlq.gouda.{DURABLE}"
    reason = dead.headers["Civic-Dlq-Reason"]
    assert reason.startswith("ValidationError: kind:")
    assert "rant" not in reason  # reasons name fields, never their values


async def test_exceeding_max_deliver_dead_letters_the_message(
    bus: Bus, wait_until: Any, short_delays: Callable[[int], float]
) -> None:
    async def always_fail(_event: CloudEvent, _msg: Msg, _call: int) -> None:
        raise RuntimeError("database down")

    handler = Recorder(always_fail)
    await bus.publish(SUBJECT, received_event())

    async with running(bus, _spec(handler, max_deliver=2)):
        await wait_until(lambda: stream_messages(bus.js, DLQ_STREAM), timeout=10, message="the dead letter")
        await wait_until(lambda: _settled(bus, 1), message="the term")

    assert [delivered for _, delivered, _ in handler.calls] == [1, 2]
    [dead] = await stream_messages(bus.js, DLQ_STREAM)
    assert dead.subject == f"dlq.gouda.{DURABLE}"
    assert dead.headers["Civic-Dlq-Reason"] == "gave up after 2 deliveries: database down"
    assert dead.headers["Civic-Dlq-Deliveries"] == "2"


async def test_the_consumer_continues_the_publishers_trace(bus: Bus, wait_until: Any, spans: Any) -> None:
    handler = Recorder()
    with tracer().start_as_current_span("POST /v1/signals") as publisher:
        await bus.publish(SUBJECT, received_event())
    context = publisher.get_span_context()

    async with running(bus, _spec(handler)):
        await wait_until(lambda: handler.calls, message="the handler to run")

    assert handler.trace_ids == [context.trace_id]
    consume = [span for span in spans.get_finished_spans() if span.name.startswith("consume ")]
    assert [span.name for span in consume] == ["consume nl.civicsignals.signal.received.v1"]
    assert consume[0].parent is not None and consume[0].parent.span_id == context.span_id
    assert consume[0].kind == trace.SpanKind.CONSUMER


async def test_ensure_streams_is_repeatable_and_applies_a_changed_config(
    bus: Bus, nats_server: NatsServer
) -> None:
    for name in (STREAM, DLQ_STREAM):
        assert (await bus.js.stream_info(name)).config.duplicate_window == 120
    await bus.ensure_streams()  # unchanged: nothing to do, no error

    changed = Bus(nats_server.url, service="tests", duplicate_window_s=300.0)
    await changed.connect(retry_forever=False)
    try:
        await changed.ensure_streams()
        for name in (STREAM, DLQ_STREAM):
            info = await bus.js.stream_info(name)
            assert info.config.duplicate_window == 300
            assert info.config.subjects == (["civic.>"] if name == STREAM else ["dlq.>"])
    finally:
        await changed.close()


async def test_ensure_consumer_applies_a_changed_config(bus: Bus) -> None:
    await bus.ensure_consumer(_spec(Recorder(), max_deliver=5))
    await bus.ensure_consumer(_spec(Recorder(), max_deliver=5))
    assert (await bus.js.consumer_info(STREAM, DURABLE)).config.max_deliver == 5
    await bus.ensure_consumer(_spec(Recorder(), max_deliver=3))
    assert (await bus.js.consumer_info(STREAM, DURABLE)).config.max_deliver == 3


async def test_a_consumer_with_several_subjects(bus: Bus, wait_until: Any) -> None:
    handler = Recorder()
    received, classified = received_event(1), received_event(2)
    await bus.publish(SUBJECT, received)
    await bus.publish(SignalClassified.bus_subject("gouda"), classified)
    await bus.publish("civic.gouda.case.status_changed", received_event(3))
    spec = _spec(handler, extra_filter_subjects=[SignalClassified.subscription()])

    async with running(bus, spec):
        await wait_until(lambda: len(handler.calls) == 2, message="both kinds")
        await wait_until(lambda: _settled(bus, 2), message="the acks")

    assert sorted(handler.ids) == sorted([received.id, classified.id])
