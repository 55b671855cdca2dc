"""What every service runs beside its HTTP routes: database, bus, outbox relay and consumers.

A service builds one :class:`ServiceRuntime`, registers its consumers, and hands it to
:func:`civicsignals.common.app.create_service_app`. HTTP starts answering at once; the bus is
connected in the background, and ``/readyz`` says ready only when the database and NATS answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import MetaData

from civicsignals.common.bus import Bus, Consumer, ConsumerSpec
from civicsignals.common.db import create_engine, create_schema, ping, session_factory
from civicsignals.common.inbox import TransactionalConsumer
from civicsignals.common.migrations import upgrade
from civicsignals.common.outbox import OutboxRelay
from civicsignals.common.settings import ServiceSettings
from civicsignals.common.tasks import cancel_and_wait, cancel_requested
from civicsignals.common.tenants import TenantRegistry

log = logging.getLogger(__name__)

CONSUMER_DRAIN_S = 10.0
"""How long a shutdown lets the consumers finish the batch in hand before it cancels them."""
STOP_TIMEOUT_S = 5.0
"""How long a shutdown then waits for what it cancelled."""


class ServiceRuntime:
    def __init__(self, settings: ServiceSettings, *, metadata: MetaData, outbox: bool = True) -> None:
        self.settings = settings
        self.service = settings.service_name
        self.metadata = metadata
        self.engine = create_engine(
            settings.database_url, statements_on_loop=settings.sqlite_statements_on_loop
        )
        self.sessions = session_factory(self.engine)
        self.tenants = TenantRegistry(settings.tenants_dir)
        self.bus = Bus(
            settings.nats_url,
            service=self.service,
            replicas=settings.stream_replicas,
            duplicate_window_s=settings.stream_duplicate_window_s,
        )
        self.relay = (
            OutboxRelay(
                self.sessions,
                self.bus,
                service=self.service,
                database_url=settings.database_url,
                batch_size=settings.outbox_batch_size,
                poll_interval_s=settings.outbox_poll_interval_s,
                linger_s=settings.outbox_linger_s,
                fault=settings.outbox_fault,
            )
            if outbox
            else None
        )
        self.consumer_specs: list[ConsumerSpec] = []
        self.background: list[Callable[[], Awaitable[None]]] = []
        self.consumers: list[Consumer] = []
        self.bus_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer_tasks: list[asyncio.Task[None]] = []

    def add_consumer(self, spec: ConsumerSpec) -> None:
        spec.max_deliver = self.settings.consumer_max_deliver
        spec.ack_wait_s = self.settings.consumer_ack_wait_s
        if spec.concurrency is None:
            spec.concurrency = self.settings.consumer_concurrency
        self.consumer_specs.append(spec)

    def add_background(self, job: Callable[[], Awaitable[None]]) -> None:
        """A coroutine that runs once the bus is up (timers, schedulers)."""
        self.background.append(job)

    def events_committed(self) -> None:
        """Tell the relay that a transaction with events committed, so they go out now."""
        if self.relay is not None:
            self.relay.wake()

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            package = f"civicsignals.{self.service}.migrations"
            if _has_module(package):
                await upgrade(self.engine, package)
            else:  # a service without migrations yet: create what is missing
                await create_schema(self.engine, self.metadata)
        self._tasks.append(asyncio.create_task(self._start_bus(), name=f"{self.service}-bus"))

    async def _start_bus(self) -> None:
        await self.bus.connect(retry_forever=True)
        while True:
            try:
                await self.bus.ensure_streams()
                break
            except Exception as exc:
                log.warning("bus: cannot create streams yet (%s), retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
        if self.relay is not None:
            self._spawn(self.relay.run, "outbox-relay")
        for spec in self.consumer_specs:
            consumer = (
                TransactionalConsumer(self.bus, spec, self.sessions, on_commit=self.events_committed)
                if spec.apply is not None
                else Consumer(self.bus, spec)
            )
            self.consumers.append(consumer)
            self._consumer_tasks.append(self._spawn(consumer.run, f"consumer-{spec.durable}"))
        for job in self.background:
            self._spawn(job, getattr(job, "__name__", "background"))
        self.bus_ready.set()

    def _spawn(self, job: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
        async def _supervised() -> None:
            # A loop that crashes is restarted after a pause rather than silently lost.
            while True:
                try:
                    await job()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if cancel_requested():  # a cancel that a driver turned into an error of its own
                        raise asyncio.CancelledError from exc
                    log.exception("%s: %s stopped with an error; restarting in 1s", self.service, name)
                    await asyncio.sleep(1.0)

        task = asyncio.create_task(_supervised(), name=f"{self.service}-{name}")
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        """Let the consumers finish the batch in hand, then cancel every task still running.

        Cancelling is the last resort: a transaction cancelled halfway is rolled back (its messages
        come again), but a database call cancelled halfway can leave asyncpg waiting for ever."""
        for consumer in self.consumers:
            consumer.stop()
        await cancel_and_wait(
            self._consumer_tasks, grace_s=CONSUMER_DRAIN_S, timeout_s=STOP_TIMEOUT_S, what=self.service
        )
        # A task stuck in a database driver may ignore the cancel; shutdown must not hang on it.
        await cancel_and_wait(self._tasks, timeout_s=STOP_TIMEOUT_S, what=self.service)
        self._tasks.clear()
        self._consumer_tasks.clear()
        with contextlib.suppress(Exception):
            await self.bus.close()
        await self.engine.dispose()

    async def database_ready(self) -> bool:
        return await ping(self.engine)

    async def bus_is_ready(self) -> bool:
        return self.bus_ready.is_set() and self.bus.connected


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package itself does not exist
        return False
