"""Group commit: items from concurrent tasks, written together in one transaction.

A service that commits once per request or per delivery pays a transaction each time: on SQLite
every writer queues for the one write lock, on PostgreSQL every commit waits for its WAL flush.
Under load, the items that arrive while a transaction runs are written together in the next one,
so a commit's cost is shared and the writer can load what the items need in one query instead of
one each; each caller still returns only after its own item has committed.

The writer gets the session and a list of items and must only change the database through that
session, so that it can run again: if a shared transaction fails, it rolls back whole and each item
is written once more in a transaction of its own, so one failing item fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import SessionFactory
from civicsignals.common.tasks import cancel_and_wait, cancel_requested

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
Writer = Callable[[AsyncSession, Sequence[ItemT]], Awaitable[Sequence[ResultT]]]


class GroupCommit(Generic[ItemT, ResultT]):
    """Submit items one by one; ``write(session, items)`` writes a batch and returns one result each."""

    def __init__(
        self,
        sessions: SessionFactory,
        write: Writer[ItemT, ResultT],
        *,
        name: str,
        max_batch: int = 200,
        on_commit: Callable[[], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """``linger_s``: how long the writer waits after the first item of a batch for more to join
        it; for items whose submitters can wait (0: a batch is what came while the last commit ran)."""
        self._sessions = sessions
        self._on_commit = on_commit
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._linger_s = linger_s
        # Items with the future of their result; None tells the writer to stop.
        self._queue: asyncio.Queue[tuple[ItemT, asyncio.Future[ResultT]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: ItemT) -> ResultT:
        """Write ``item`` in the next shared transaction; returns its result once that committed."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._loop(), name=self._name)
        assert self._queue is not None
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await asyncio.shield(future)  # a cancelled caller does not cancel the others' commit

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer once what was submitted before is written; cancel it after ``timeout_s``.

        Cancelling is the last resort: a database call cancelled halfway may leave its driver
        waiting for ever (asyncpg's issue 873), and the items of the cancelled transaction are not
        written (their submitters see ``CancelledError``)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        assert self._queue is not None
        self._queue.put_nowait(None)  # the writer stops when it comes to this
        await cancel_and_wait([task], grace_s=timeout_s, timeout_s=timeout_s, what=self._name)

    async def _loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        batch: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        try:
            while True:
                first = await queue.get()
                if first is None:
                    return
                if self._linger_s:
                    await asyncio.sleep(self._linger_s)
                batch, closing = [first], False
                while len(batch) < self._max_batch and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        closing = True
                        break
                    batch.append(item)
                await self._write_batch(batch)
                batch = []
                if closing:
                    return
        finally:
            # Stopped: whoever still waits for an item learns that it was not written.
            for _, future in batch:
                future.cancel()
            while not queue.empty():
                left = queue.get_nowait()
                if left is not None:
                    left[1].cancel()

    async def _write_batch(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        """Write the batch in one transaction; if that fails, each item in one of its own."""
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as exc:
            if cancel_requested():  # the driver turned our cancel into an error of its own
                raise asyncio.CancelledError from exc
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            log.info("%s: a batch of %d failed (%s); one by one", self._name, len(batch), type(exc).__name__)
            for item, future in batch:
                try:
                    (result,) = await self._commit([item])
                except Exception as single:
                    if cancel_requested():
                        raise asyncio.CancelledError from single
                    _settle(future, error=single)
                else:
                    _settle(future, result=result)
            return
        self.batches += 1
        self.items += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def _commit(self, items: list[ItemT]) -> Sequence[ResultT]:
        async with self._sessions() as session, session.begin():
            results = await self._write(session, items)
        if self._on_commit is not None:
            self._on_commit()
        return results


def _settle(
    future: asyncio.Future[ResultT], *, result: ResultT | None = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
