"""Group commit of intake's rows: the signals of concurrent requests written in one transaction.

Each signal is a handful of rows (signal, first status, sealed contact, outbox event) that must
commit together. Committing them one request at a time costs a transaction per signal: on SQLite
every writer queues for the one write lock, on PostgreSQL every commit waits for its WAL flush,
and the outbox relay then wakes once per signal. Under load the requests that arrive while a
transaction is running are written together in the next one (``civicsignals.common.groupcommit``),
one multi-row INSERT per table; a request still answers only after its own rows are committed
(durable before 201), and a bad request (say, a duplicate key) fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import SessionFactory
from civicsignals.common.groupcommit import GroupCommit

Rows = list[tuple[str, dict[str, Any]]]
"""One request's rows: (table name, column values), parents first."""


async def insert_rows(session: AsyncSession, groups: Sequence[Rows]) -> list[None]:
    """Per table one multi-row INSERT, tables in the order they first appear (each request lists
    its parent row first: the signal before its status and contact)."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for rows in groups:
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
    tables = SQLModel.metadata.tables
    connection = await session.connection()
    for table, values in by_table.items():
        await connection.execute(tables[table].insert(), values)
    return [None] * len(groups)


def row_writer(sessions: SessionFactory, on_commit: Callable[[], None]) -> GroupCommit[Rows, None]:
    """Intake's writer; ``on_commit`` wakes the outbox relay for the events just committed."""
    return GroupCommit(sessions, insert_rows, name="intake-group-commit", on_commit=on_commit)
