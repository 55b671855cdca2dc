"""The runtime's supervision of background loops: restarted after an error, never after a cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import MetaData

from civicsignals.common.runtime import ServiceRuntime

from .conftest import ServiceFactory


def _runtime(tmp_path: Path) -> ServiceRuntime:
    (tmp_path / "tenants").mkdir()
    return ServiceRuntime(
        ServiceFactory(tmp_path).settings(tmp_path / "tenants"), metadata=MetaData(), outbox=False
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
