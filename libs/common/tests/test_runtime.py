"""The runtime's background loops: restarted after an error, never after a cancel; a shutdown lets
the consumers finish the batch in hand before it cancels anything."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from sqlalchemy import MetaData

from civicsignals.common.bus import STREAM, Bus, ConsumerSpec
from civicsignals.common.events import CloudEvent
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.devstack.nats import NatsServer

from .conftest import ServiceFactory, received_event


def _runtime(tmp_path: Path, nats_url: str = "nats://127.0.0.1:1") -> ServiceRuntime:
    (tmp_path / "tenants").mkdir()
    return ServiceRuntime(
        ServiceFactory(tmp_path).settings(tmp_path / "tenants", nats_url), metadata=MetaData(), outbox=False
    )


async def test_a_loop_that_fails_is_restarted(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    runs: list[int] = []
    second_run = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("a bug in one pass")
        second_run.set()
        await asyncio.Event().wait()

    runtime._spawn(flaky, "flaky")
    await asyncio.wait_for(second_run.wait(), timeout=30)
    await runtime.stop()
    assert runs == [0, 1]


async def test_a_loop_whose_cancel_the_driver_turns_into_an_error_stops_and_is_not_restarted(
    tmp_path: Path,
) -> None:
    """A database driver interrupted mid-operation may raise its own error instead of
    ``CancelledError``; the supervisor must take that as the stop it is, not as a crash to restart
    from (which kept the loop running and the shutdown waiting)."""
    runtime = _runtime(tmp_path)
    runs: list[int] = []
    running = asyncio.Event()

    async def interrupted() -> None:
        runs.append(len(runs))
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("connection left in the middle of an operation") from None

    runtime._spawn(interrupted, "interrupted")
    (task,) = runtime._tasks
    await running.wait()
    await runtime.stop()
    assert task.done() and task.cancelled()
    assert runs == [0]


async def test_a_shutdown_lets_the_event_in_hand_finish_and_be_acked(
    tmp_path: Path, nats_server: NatsServer, bus: Bus, wait_until: Any
) -> None:
    """Stopping a service while a consumer handles an event: the handler runs to its end and the
    event is acknowledged, instead of being cancelled halfway and delivered again after
    ``ack_wait`` (and a database call cancelled halfway can hang asyncpg)."""
    runtime = _runtime(tmp_path, nats_server.url)
    handling, finished = asyncio.Event(), asyncio.Event()

    async def slow(_event: CloudEvent, _msg: Msg) -> None:
        handling.set()
        await asyncio.sleep(0.5)
        finished.set()

    runtime.add_consumer(
        ConsumerSpec(durable="tests-shutdown", filter_subject="civic.*.signal.received", handler=slow)
    )
    await runtime.start()
    await asyncio.wait_for(runtime.bus_ready.wait(), timeout=60)
    await bus.publish("civic.gouda.signal.received", received_event())
    await asyncio.wait_for(handling.wait(), timeout=20)
    await runtime.stop()
    assert finished.is_set()

    async def acknowledged() -> bool:
        info = await bus.js.consumer_info(STREAM, "tests-shutdown")
        return info.ack_floor.stream_seq >= 1 and info.num_ack_pending == 0

    await wait_until(acknowledged, message="the event's ack")
