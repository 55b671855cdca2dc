"""Group commit on a real SQLite file: concurrent units share a transaction; a failing one fails alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import create_engine, session_factory
from civicsignals.common.groupcommit import GroupCommit
from civicsignals.common.tasks import cancel_and_wait

ROWS = Table("rows", MetaData(), Column("number", Integer, primary_key=True))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(ROWS.metadata.create_all)
    yield engine
    await engine.dispose()


async def _insert_all(session: AsyncSession, numbers: Sequence[int]) -> list[int]:
    """The writer: every number of the batch in one statement, each answered with ten times it."""
    await session.exec(insert(ROWS), params=[{"number": number} for number in numbers])
    return [number * 10 for number in numbers]


async def _stored(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        return sorted(row[0] for row in await connection.execute(select(ROWS.c.number)))


async def test_concurrent_units_commit_together_and_each_gets_its_result(engine: AsyncEngine) -> None:
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda _connection: commits.append(1))
    writer: GroupCommit[int, int] = GroupCommit(session_factory(engine), _insert_all, name="test")
    try:
        results = await asyncio.gather(*(writer.submit(number) for number in range(50)))
    finally:
        await writer.close()
    assert results == [number * 10 for number in range(50)]
    assert await _stored(engine) == list(range(50))
    assert len(commits) < 50 and writer.items == 50 and writer.batches == len(commits)


@pytest.mark.parametrize("linger_s", [0.0, 0.3])
async def test_a_lingering_writer_takes_items_submitted_soon_after_the_first_along(
    engine: AsyncEngine, linger_s: float
) -> None:
    """Items submitted one by one, 50 ms apart: one commit each without a linger, one for all
    with it."""
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda _connection: commits.append(1))
    writer: GroupCommit[int, int] = GroupCommit(
        session_factory(engine), _insert_all, name="test", linger_s=linger_s
    )

    async def submit_later(number: int) -> int:
        await asyncio.sleep(0.05 * number)
        return await writer.submit(number)

    try:
        results = await asyncio.gather(*(submit_later(number) for number in range(4)))
    finally:
        await writer.close()
    assert results == [0, 10, 20, 30]
    assert len(commits) == (1 if linger_s else 4)


async def test_a_failing_unit_fails_alone(engine: AsyncEngine) -> None:
    writer: GroupCommit[int, int] = GroupCommit(session_factory(engine), _insert_all, name="test")
    try:
        outcomes = await asyncio.gather(
            writer.submit(1),
            writer.submit(2),
            writer.submit(1),  # the same primary key: this one cannot commit
            writer.submit(3),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert outcomes[0] == 10 and outcomes[1] == 20 and outcomes[3] == 30
    assert isinstance(outcomes[2], Exception) and "UNIQUE" in str(outcomes[2])
    assert await _stored(engine) == [1, 2, 3]


async def test_close_writes_what_was_submitted_before_it(engine: AsyncEngine) -> None:
    """A shutdown lets the writer finish: items submitted before ``close`` are written, not
    cancelled halfway through their transaction."""
    writer: GroupCommit[int, int] = GroupCommit(session_factory(engine), _insert_all, name="test")
    submitted = [asyncio.create_task(writer.submit(number)) for number in range(20)]
    await asyncio.sleep(0)  # every submit has queued its item
    await writer.close(timeout_s=30)
    assert [task.result() for task in submitted] == [number * 10 for number in range(20)]
    assert await _stored(engine) == list(range(20))


async def test_close_ends_even_when_the_driver_turns_the_cancel_into_an_error_of_its_own(
    engine: AsyncEngine,
) -> None:
    """A database driver interrupted mid-statement may raise its own error instead of
    ``CancelledError``; the writer must still stop, and every waiting submitter must learn that its
    item was not written (before, close() waited for ever and so did the service's shutdown)."""
    writing = asyncio.Event()

    async def interrupted_writer(session: AsyncSession, numbers: Sequence[int]) -> list[int]:
        await session.exec(insert(ROWS), params=[{"number": number} for number in numbers])
        writing.set()
        try:
            await asyncio.Event().wait()  # a statement that does not end by itself
        except asyncio.CancelledError:
            raise RuntimeError("connection left in the middle of an operation") from None
        return list(numbers)

    writer: GroupCommit[int, int] = GroupCommit(session_factory(engine), interrupted_writer, name="test")
    first = asyncio.create_task(writer.submit(1))
    await writing.wait()
    queued = asyncio.create_task(writer.submit(2))  # waits for the next batch, which never comes
    await asyncio.sleep(0)
    await writer.close(timeout_s=0.5)  # the write never ends by itself: close cancels it
    outcomes = await asyncio.gather(first, queued, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes), outcomes
    assert await _stored(engine) == []  # the interrupted transaction was rolled back


async def test_a_task_that_ignores_its_cancel_does_not_hold_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``cancel_and_wait`` gives up after its timeout and says where the task waits."""

    released = asyncio.Event()

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await released.wait()  # swallowed its cancel and waits on

    task = asyncio.create_task(stubborn(), name="stubborn")
    obedient = asyncio.create_task(asyncio.sleep(3600), name="obedient")
    await asyncio.sleep(0)
    assert await cancel_and_wait([task, obedient], timeout_s=0.2, what="test") is False
    assert obedient.cancelled() and not task.done()
    (message,) = [record.getMessage() for record in caplog.records if "did not stop" in record.getMessage()]
    assert "stubborn" in message and "in stubborn" in message
    assert await cancel_and_wait([obedient], timeout_s=0.2, what="test") is True
    finishing = asyncio.create_task(asyncio.sleep(0.05))  # ends by itself within its grace
    assert await cancel_and_wait([finishing], grace_s=30, timeout_s=0.2, what="test") is True
    assert finishing.done() and not finishing.cancelled()
    released.set()
    await task
