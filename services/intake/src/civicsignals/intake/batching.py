"""Group commit: the rows of concurrent requests written in one transaction.

Each signal is a handful of rows (signal, first status, sealed contact, outbox event) that must
commit together. Committing them one request at a time costs a transaction per signal: on SQLite
every writer queues for the one write lock, on PostgreSQL every commit waits for its WAL flush,
and the outbox relay then wakes once per signal. Under load the requests that arrive while a
transaction is running are written together in the next one, so the cost of a commit is shared;
a request still answers only after its own rows are committed (durable before 201).

If a batch fails, each request of it is retried in a transaction of its own, so one bad request
(say, a duplicate key) fails alone and the others are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlmodel import SQLModel

from civicsignals.common.db import SessionFactory

log = logging.getLogger(__name__)


class GroupCommit:
    def __init__(
        self, sessions: SessionFactory, *, max_batch: int = 200, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[tuple[list[tuple[str, dict[str, Any]]], asyncio.Future[None]]] | None = (
            None
        )
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.rows = 0

    async def write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Commit ``rows`` ((table name, column values), parents first); returns once committed."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="intake-group-commit")
        assert self._queue is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, future))
        await asyncio.shield(future)  # a cancelled request does not cancel the others' commit

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit([rows for rows, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                else:
                    for rows, future in batch:
                        try:
                            await self._commit([rows])
                        except Exception as single:
                            _settle(future, single)
                        else:
                            _settle(future, None)
            else:
                for _, future in batch:
                    _settle(future, None)
            self.batches += 1
            self.rows += len(batch)
            if self._on_commit is not None:
                self._on_commit()

    async def _commit(self, groups: list[list[tuple[str, dict[str, Any]]]]) -> None:
        """One transaction; per table one multi-row INSERT, tables in the order they first appear
        (each write lists its parent row first: the signal before its status and contact)."""
        by_table: dict[str, list[dict[str, Any]]] = {}
        for rows in groups:
            for table, row in rows:
                by_table.setdefault(table, []).append(row)
        tables = SQLModel.metadata.tables
        async with self._sessions() as session, session.begin():
            connection = await session.connection()
            for table, values in by_table.items():
                await connection.execute(tables[table].insert(), values)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
