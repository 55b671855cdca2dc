"""Group commit of intake's rows: the signals of concurrent requests written in one transaction.

Each signal is a handful of rows (signal, first status, sealed contact, outbox event) that must
commit together. Committing them one request at a time costs a transaction per signal: on SQLite
every writer queues for the one write lock, on PostgreSQL every commit waits for its WAL flush,
and the outbox relay then wakes once per signal. Under load the requests that arrive while a
transaction is running are written together in the next one (``civicsignals.common.groupcommit``),
one multi-row INSERT per table; a request still answers only after its own rows are committed
(durable before 201), and a bad request (say, a duplicate key) fails alone.

On SQLite the statements go to the driver directly (:func:`insert_sqlite`). aiosqlite runs every
call in its own thread, and SQLAlchemy's adapter makes three calls of each statement (open a
cursor, execute, close it): twelve thread hand-offs per batch for the four tables, each waking
the driver's thread and waiting for the GIL again. Profiled under bench/intake's load, the event
loop's thread spent about a tenth of its time in those hand-offs. ``executemany`` on the aiosqlite
connection is one hand-off per table, with the same SQL and the same bound values (each column's
own SQLAlchemy bind processor), in the same transaction that the session commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import SessionFactory
from civicsignals.common.groupcommit import GroupCommit

Rows = list[tuple[str, dict[str, Any]]]
"""One request's rows: (table name, column values), parents first."""

Processor = Callable[[Any], Any] | None


async def insert_rows(session: AsyncSession, groups: Sequence[Rows]) -> list[None]:
    """Per table one multi-row INSERT, tables in the order they first appear (each request lists
    its parent row first: the signal before its status and contact)."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for rows in groups:
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
    connection = await session.connection()
    if connection.dialect.name == "sqlite":
        await insert_sqlite(connection, by_table)
    else:
        tables = SQLModel.metadata.tables
        for table, values in by_table.items():
            await connection.execute(tables[table].insert(), values)
    return [None] * len(groups)


async def insert_sqlite(connection: AsyncConnection, by_table: dict[str, list[dict[str, Any]]]) -> None:
    """The same INSERTs as ``connection.execute(table.insert(), rows)``, one driver call per table
    and set of columns, inside the connection's current transaction."""
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection  # the aiosqlite connection the session's transaction is on
    assert driver is not None
    dialect = connection.dialect
    for table, values in by_table.items():
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in values:
            by_columns.setdefault(tuple(row), []).append(row)
        for columns, rows in by_columns.items():
            sql, order, processors = sqlite_insert(dialect, table, columns)
            await driver.executemany(
                sql,
                [
                    tuple(
                        value if process is None else process(value)
                        for value, process in zip(map(row.__getitem__, order), processors, strict=True)
                    )
                    for row in rows
                ],
            )


@cache
def sqlite_insert(
    dialect: Dialect, table: str, columns: tuple[str, ...]
) -> tuple[str, tuple[str, ...], tuple[Processor, ...]]:
    """SQLAlchemy's own ``INSERT INTO table (…) VALUES (?, …)`` for these columns, the columns in
    the order of its placeholders, and each one's bind processor (the conversion SQLAlchemy
    applies before handing a value to the driver: UTC timestamps and JSON to text, booleans to
    integers). Every column of the table must be given: the Python-side defaults that SQLAlchemy
    would fill in for a missing one are not applied here."""
    target = SQLModel.metadata.tables[table]
    unknown = [column for column in columns if column not in target.columns]
    missing = [
        column.name
        for column in target.columns
        if column.name not in columns
        and not (column.primary_key and column.autoincrement is not False)
        and column.server_default is None
    ]
    if unknown or missing:
        raise ValueError(f"rows for {table}: unknown columns {unknown}, missing columns {missing}")
    compiled = target.insert().compile(dialect=dialect, column_keys=list(columns))
    order = tuple(compiled.positiontup or ())
    if sorted(order) != sorted(columns):
        raise ValueError(f"rows for {table}: the statement binds {order}, not {columns}")
    # dialect_impl: what SQLAlchemy binds with on this dialect (SQLite's DATETIME for UtcDateTime).
    processors = tuple(
        target.columns[column].type.dialect_impl(dialect).bind_processor(dialect) for column in order
    )
    return str(compiled), order, processors


def row_writer(sessions: SessionFactory, on_commit: Callable[[], None]) -> GroupCommit[Rows, None]:
    """Intake's writer; ``on_commit`` wakes the outbox relay for the events just committed."""
    return GroupCommit(sessions, insert_rows, name="intake-group-commit", on_commit=on_commit)
