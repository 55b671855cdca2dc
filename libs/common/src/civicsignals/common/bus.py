"""The bus: NATS JetStream with the conventions of DESIGN §2.

- ``Bus`` connects with unlimited reconnects, creates the ``CIVIC`` and ``CIVIC_DLQ`` streams and the
  consumers explicitly at start-up (``add_stream``/``add_consumer``, updated when their config
  changed), and publishes with ``Nats-Msg-Id`` and the W3C trace headers.
- ``Consumer`` runs one durable pull consumer: it acks what its handler processed, naks with a
  growing delay on a transient error, and sends a poison message to the dead-letter stream with the
  reason in a header, then terms it, so that the rest flows on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from civicsignals.common.events import CloudEvent
from civicsignals.common.tasks import cancel_requested
from civicsignals.common.telemetry import extract_trace_context, inject_trace_headers, tracer

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

STREAM = "CIVIC"
STREAM_SUBJECTS = ["civic.>"]
DLQ_STREAM = "CIVIC_DLQ"
DLQ_SUBJECTS = ["dlq.>"]
MSG_ID_HEADER = "Nats-Msg-Id"
DLQ_REASON_HEADER = "Civic-Dlq-Reason"
DLQ_CONSUMER_HEADER = "Civic-Dlq-Consumer"
DLQ_SUBJECT_HEADER = "Civic-Dlq-Subject"
DLQ_DELIVERIES_HEADER = "Civic-Dlq-Deliveries"

EVENTS_PUBLISHED = Counter("civic_events_published_total", "Events published to JetStream", ["service"])
EVENTS_CONSUMED = Counter(
    "civic_events_consumed_total", "Events handled by a consumer", ["consumer", "result"]
)
EVENT_HANDLING = Histogram("civic_event_handling_seconds", "Time a handler took per event", ["consumer"])


class PermanentError(Exception):
    """The message can never be processed (malformed, unknown tenant): dead-letter it."""


class TransientError(Exception):
    """The message may succeed later (a dependency is down): redeliver it after a delay."""


class NotReady(TransientError):
    """The event cannot be applied yet (it waits for another event): raised by an ``apply`` before it
    changed anything, so a transactional consumer redelivers it later and commits the rest of its batch."""


Handler = Callable[[CloudEvent, Msg], Awaitable[None]]
"""A handler that settles its own work (its own transaction, if it has one)."""
Apply = Callable[["AsyncSession", CloudEvent, Msg], Awaitable[None]]
Prepare = Callable[["AsyncSession", list[CloudEvent]], Awaitable[None]]
Settle = Callable[["AsyncSession"], Awaitable[None]]
"""A handler that applies one event inside a transaction it is given (see ``inbox.TransactionalConsumer``)."""


@dataclass
class ConsumerSpec:
    """One durable pull consumer: one service and one event kind (DESIGN §2)."""

    durable: str
    filter_subject: str
    handler: Handler | None = None
    apply: Apply | None = None
    """Instead of ``handler``: applied inside a transaction the consumer owns, a fetched batch in one."""
    after_commit: Callable[[], None] | None = None
    """Called after a transaction of ``apply`` committed (say, to wake a dispatcher)."""
    prepare: Prepare | None = None
    """With ``apply``: called once per transaction, before any ``apply``, with the events to be
    applied, to read what they all need in one query each (kept in ``session.info``). The applies
    then write without reading, so the transaction holds SQLite's one write lock only for its
    final flush, not while each event waits its turn on the event loop."""
    settle: Settle | None = None
    """With ``apply``: called once per transaction, after the last ``apply`` and before the commit
    (say, to read again under the write lock what another transaction may have committed after
    ``prepare`` read)."""
    exclusive: asyncio.Lock | None = None
    """With ``apply``: held for each whole transaction, from ``prepare`` to the commit. Consumers of
    one process that share it never interleave their transactions: on SQLite, where a read takes
    no lock, two that read the same row before either wrote would otherwise each write back what
    it read, and the later commit undo the earlier one's change (on PostgreSQL, ``prepare`` reads
    its rows ``FOR UPDATE`` instead, which holds across replicas too)."""
    max_deliver: int = 10
    ack_wait_s: float = 30.0
    batch_size: int = 50
    max_ack_pending: int = 1000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    extra_filter_subjects: list[str] = field(default_factory=list)
    concurrency: int | None = None
    """How many messages of a fetched batch are handled at once; None: the service's setting.
    Handlers must then tolerate order changes (they already must: redeliveries reorder too)."""

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.apply is None):
            raise ValueError(f"consumer {self.durable}: give exactly one of handler and apply")

    def config(self) -> ConsumerConfig:
        subjects = [self.filter_subject, *self.extra_filter_subjects]
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )


def redelivery_delay(num_delivered: int) -> float:
    """The growing delay before a failed message is tried again: 1, 2, 4 … seconds, at most 60."""
    return float(min(60, 2 ** max(0, num_delivered - 1)))


def not_ready_delay(num_delivered: int) -> float:
    """The delay before an event that waited for another (:class:`NotReady`) is tried again:
    0.25, 0.5, 1 … seconds, at most 60. Shorter than after a failure: the other event is usually
    handled a moment later by a sibling consumer of the same service."""
    return min(60.0, 0.25 * 2 ** max(0, num_delivered - 1))


class Bus:
    """A NATS connection with JetStream, used by every service."""

    def __init__(
        self, url: str, *, service: str, replicas: int = 1, duplicate_window_s: float = 300.0
    ) -> None:
        self.url = url
        self.service = service
        self.replicas = replicas
        self.duplicate_window_s = duplicate_window_s
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("bus is not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected")
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self, *, retry_forever: bool = True) -> None:
        """Connect, retrying while the server is not up yet; once connected, reconnect without limit."""
        delay = 0.2
        while True:
            try:
                self._nc = await nats.connect(
                    # A cluster is given as a comma-separated list of its servers' URLs.
                    [server.strip() for server in self.url.split(",") if server.strip()],
                    name=f"civicsignals-{self.service}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self._js = self._nc.jetstream(timeout=5)
                return
            except Exception as exc:
                if not retry_forever:
                    raise
                log.warning("bus: cannot reach NATS (%s), retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("bus: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("bus: disconnected from NATS")

    async def _on_reconnected(self) -> None:
        log.info("bus: reconnected to NATS")

    async def ensure_streams(self) -> None:
        """Create or update ``CIVIC`` and ``CIVIC_DLQ``, so that a changed config applies."""
        for name, subjects in ((STREAM, STREAM_SUBJECTS), (DLQ_STREAM, DLQ_SUBJECTS)):
            config = StreamConfig(
                name=name,
                subjects=subjects,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=self.duplicate_window_s,
            )
            try:
                await self.js.add_stream(config)
            except BadRequestError:
                # Exists with another configuration: bring it to this one.
                await self.js.update_stream(config)

    async def ensure_consumer(self, spec: ConsumerSpec) -> None:
        await self.js.add_consumer(STREAM, spec.config())

    async def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish and wait for JetStream's ack; raises when the stream did not store it."""
        await self.js.publish(subject, payload, headers=headers)
        EVENTS_PUBLISHED.labels(self.service).inc()

    async def publish(self, subject: str, event: CloudEvent) -> None:
        """Publish an event directly, for events that change no database (everything else: outbox)."""
        headers = {MSG_ID_HEADER: event.id}
        inject_trace_headers(headers)
        await self.publish_raw(subject, event.to_json(), headers)

    async def dead_letter(self, msg: Msg, durable: str, reason: str, tenant: str = "unknown") -> None:
        """Copy a message to ``dlq.<tenant>.<consumer>`` with why it was given up on."""
        metadata = msg.metadata
        safe_tenant = tenant if tenant.replace("-", "").isalnum() and tenant.islower() else "unknown"
        headers = {
            MSG_ID_HEADER: f"dlq-{durable}-{metadata.sequence.stream}",
            DLQ_REASON_HEADER: reason[:500].replace("\n", " "),
            DLQ_CONSUMER_HEADER: durable,
            DLQ_SUBJECT_HEADER: msg.subject,
            DLQ_DELIVERIES_HEADER: str(metadata.num_delivered),
        }
        for key in ("traceparent", "tracestate"):
            if msg.headers and key in msg.headers:
                headers[key] = msg.headers[key]
        await self.js.publish(f"dlq.{safe_tenant}.{durable}", msg.data, headers=headers)

    async def close(self) -> None:
        """Close the connection. Not ``drain()``: every publish already waited for its ack, and a
        drain waits for pull subscriptions whose fetch the consumers' shutdown cancelled."""
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._nc = None
        self._js = None


class Consumer:
    """The pull loop of one durable consumer."""

    def __init__(self, bus: Bus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._stopping = asyncio.Event()
        self._fetch: asyncio.Future[list[Msg]] | None = None

    def stop(self) -> None:
        """End the loop without cutting a batch short: a fetch that waits is cancelled (what it
        would have brought comes again after ``ack_wait``), a batch being handled is finished."""
        self._stopping.set()
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()

    def running(self) -> bool:
        """Whether to fetch again; a subclass may add conditions of its own."""
        return not self._stopping.is_set()

    async def run(self) -> None:
        await self.bus.ensure_consumer(self.spec)
        subscription = await self.bus.js.pull_subscribe_bind(durable=self.spec.durable, stream=STREAM)
        limit = asyncio.Semaphore(max(1, self.spec.concurrency or 1))
        while self.running():
            self._fetch = asyncio.ensure_future(subscription.fetch(self.spec.batch_size, timeout=1.0))
            try:
                messages = await self._fetch
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
                if not self.running():
                    return  # stop() cancelled the fetch
                continue  # cancelled from elsewhere: fetch again
            except Exception as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                log.warning("consumer %s: fetch failed: %s", self.spec.durable, type(exc).__name__)
                with contextlib.suppress(TimeoutError):  # a pause that stop() ends at once
                    async with asyncio.timeout(0.5):
                        await self._stopping.wait()
                continue
            finally:
                self._fetch = None
            await self.handle_fetched(messages, limit)

    async def handle_fetched(self, messages: list[Msg], limit: asyncio.Semaphore) -> None:
        """Handle a fetched batch: each message on its own, ``limit`` of them at a time."""
        await asyncio.gather(*(self._handle_bounded(limit, message) for message in messages))

    async def process(self, event: CloudEvent, msg: Msg) -> None:
        """Do the work of one event; raising decides how the message is settled (see ``handle``)."""
        assert self.spec.handler is not None
        await self.spec.handler(event, msg)

    @contextmanager
    def consume_span(self, event: CloudEvent, msg: Msg) -> Iterator[trace.Span]:
        """The consumer span of one event, a child of the span that published it."""
        with tracer().start_as_current_span(
            f"consume {event.type}", context=extract_trace_context(msg.headers), kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", msg.subject)
            span.set_attribute("messaging.message.id", event.id)
            span.set_attribute("civic.tenant", event.tenant)
            yield span

    async def _handle_bounded(self, limit: asyncio.Semaphore, msg: Msg) -> None:
        async with limit:
            await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        """Process one message and settle it: ack, nak with delay, or dead-letter and term."""
        durable = self.spec.durable
        try:
            event = CloudEvent.from_json(msg.data)
        except (ValidationError, ValueError) as exc:
            await self.give_up(msg, f"malformed CloudEvent: {short_reason(exc)}", "unknown")
            return
        with self.consume_span(event, msg), EVENT_HANDLING.labels(durable).time():
            try:
                await self.process(event, msg)
            except (PermanentError, ValidationError) as exc:
                await self.give_up(msg, f"{type(exc).__name__}: {short_reason(exc)}", event.tenant)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delivered = msg.metadata.num_delivered
                if delivered >= self.spec.max_deliver:
                    await self.give_up(
                        msg, f"gave up after {delivered} deliveries: {short_reason(exc)}", event.tenant
                    )
                    return
                not_ready = isinstance(exc, NotReady)
                delay = not_ready_delay(delivered) if not_ready else redelivery_delay(delivered)
                log.log(
                    logging.INFO if not_ready else logging.WARNING,
                    "consumer %s: event %s failed (%s), redelivery %d in %.2fs",
                    durable,
                    event.id,
                    type(exc).__name__,
                    delivered,
                    delay,
                    # A transient error is expected; anything else is a bug whose trace we need.
                    exc_info=not isinstance(exc, TransientError),
                )
                EVENTS_CONSUMED.labels(durable, "retry").inc()
                await msg.nak(delay=delay)
                return
        await msg.ack()
        EVENTS_CONSUMED.labels(durable, "ok").inc()

    async def give_up(self, msg: Msg, reason: str, tenant: str) -> None:
        log.error(
            "consumer %s: dead-lettering message %s: %s",
            self.spec.durable,
            msg.metadata.sequence.stream,
            reason,
        )
        try:
            await self.bus.dead_letter(msg, self.spec.durable, reason, tenant)
        except Exception:
            # Without the copy in the DLQ we must not drop it: let JetStream deliver it again.
            await msg.nak(delay=redelivery_delay(msg.metadata.num_delivered))
            return
        await msg.term()
        EVENTS_CONSUMED.labels(self.spec.durable, "dead_lettered").inc()


def short_reason(exc: Exception) -> str:
    """A reason without payload: validation messages name fields, never their values."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'/'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:5]
        )
    return str(exc)[:300]


async def stream_messages(js: JetStreamContext, stream: str) -> list[Any]:
    """Every message currently in a stream (for tests and tools), read by sequence."""
    info = await js.stream_info(stream)
    messages = []
    # An empty stream reports first_seq 0, which is not a sequence one can ask for.
    for sequence in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        try:
            messages.append(await js.get_msg(stream, sequence))
        except NotFoundError:
            continue
    return messages
