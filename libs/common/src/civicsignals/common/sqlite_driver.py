"""SQLAlchemy's aiosqlite adapter, with one thread hand-off per statement instead of three or four.

aiosqlite runs every call on the connection's own thread: the event loop queues the call, wakes
that thread and waits for its answer, and the thread in turn waits for the GIL. SQLAlchemy's
adapter makes one such call to open a cursor, one to execute, one to fetch the rows and one to
close the cursor, so a SELECT costs four hand-offs and an INSERT three. Under bench/pipeline's
load those hand-offs were the largest single item in py-spy's profile of notifier's event loop
(about an eighth of its samples) and of intake's (about a thirteenth).

:class:`OneCallCursor` does the four steps in one function on the connection's thread and keeps
what SQLAlchemy reads afterwards (the description, the rows, the row count, the last row id).
:class:`OneCallConnection` also skips the rollback SQLAlchemy issues when a session closes and
when a connection goes back to the pool if no transaction is open (after a commit, or after reads,
for which ``sqlite3`` opens none): a hand-off that changed nothing. Everything else (connections,
transactions, the exceptions SQLAlchemy maps, server-side cursors for streamed results) stays
SQLAlchemy's and aiosqlite's own.

With ``statements_on_loop`` (what a serving process uses; ``ServiceSettings.
sqlite_statements_on_loop``) most statements skip the hand-off altogether and run on the event
loop's own thread (``bench/sqlite/run.py``: a transaction of a SELECT, two INSERTs and an UPDATE
about 1,100 to 1,200 µs of CPU against 1,500 with a hand-off a statement and 2,400 with SQLAlchemy's
adapter; a read about 210 µs against 420 to 480 and 950). Only statements that can never wait
there for a lock do (:func:`runs_on_loop`): reads, which in WAL mode never wait for a writer, and
the statements of a transaction that has written already and so holds the write lock. The first
write of a transaction, which may wait up to the busy timeout for the write lock (perhaps for a
transaction of this very process, suspended at an ``await`` on this loop), the commit (which may
checkpoint the WAL and fsync) and the rollback still go to the driver's thread, so a lock wait
never stops the loop. A statement that runs long after a transaction's first write (the retention
job's UPDATE over a tenant's closed signals, say) holds the loop for as long as it runs; insights,
whose dashboard reads are long, keeps the setting off. The driver's connection is then opened
with ``check_same_thread=False``; the two threads never use it at once, because every statement
holds the adapter's mutex and SQLAlchemy commits or rolls back only between statements.

It uses private names of aiosqlite's ``Connection``, as SQLAlchemy's own adapter does for its
isolation level: ``_execute`` (queues a call on the thread), ``_conn`` (the ``sqlite3``
connection) and ``_connection`` (the same, or None once closed). aiosqlite is pinned in the lock
file, and ``libs/common/tests/test_sqlite_driver.py`` fails if they change.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

Outcome = tuple[Any, list[Any], int, int | None]
"""What SQLAlchemy reads of an executed cursor: description, rows, row count, last row id."""


def _run(connection: sqlite3.Connection, operation: str, parameters: Any) -> Outcome:
    """On the connection's thread: execute, fetch every row, close the cursor."""
    cursor = connection.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _run_many(connection: sqlite3.Connection, operation: str, parameters: Sequence[Any]) -> Outcome:
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, [], cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def runs_on_loop(database: sqlite3.Connection, operation: str) -> bool:
    """Whether ``operation`` can run on the event loop's thread without waiting there for a lock.

    True for a SELECT, since in WAL mode (every engine's, see ``db.create_engine``) a reader
    never waits for a writer, and for any statement once the connection has a transaction open:
    ``sqlite3``'s default transaction control, which SQLAlchemy's SQLite dialects keep, begins a
    transaction only right before an INSERT, UPDATE, DELETE or REPLACE, so an open one has taken
    the write lock already. Nothing in Civic Signals issues its own ``BEGIN``; a deferred one
    followed by reads would break that reasoning.
    """
    return database.in_transaction or operation[:6].upper() == "SELECT"


class OneCallCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose statement runs in a single call on the connection's thread, or
    on the loop's own thread where it cannot wait there for a lock (``statements_on_loop``)."""

    __slots__ = (
        "_arraysize",
        "_outcome_description",
        "_outcome_lastrowid",
        "_outcome_rowcount",
        "_statements_on_loop",
    )

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # No driver cursor is opened here (SQLAlchemy's opens one, a hand-off of its own).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._rows = deque()
        self._soft_closed_memoized = EMPTY_DICT
        self._outcome_description: Any = None
        self._outcome_rowcount = -1
        self._outcome_lastrowid: int | None = None
        self._arraysize = 1
        self._statements_on_loop = (
            isinstance(adapt_connection, OneCallConnection) and adapt_connection.statements_on_loop
        )

    @property
    def description(self) -> Any:
        return self._outcome_description

    @property
    def rowcount(self) -> int:
        return self._outcome_rowcount

    @property
    def lastrowid(self) -> int | None:  # type: ignore[override]
        return self._outcome_lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    def _keep(self, outcome: Outcome) -> None:
        self._outcome_description, rows, self._outcome_rowcount, self._outcome_lastrowid = outcome
        self._rows = deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._call(_run, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._call(_run_many, operation, seq_of_parameters)

    async def _call(
        self, function: Callable[[sqlite3.Connection, str, Any], Outcome], operation: str, parameters: Any
    ) -> None:
        """``function`` on the loop's thread where :func:`runs_on_loop` allows, else in one call
        on the connection's thread."""
        async with self._adapt_connection._execute_mutex:
            driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
            database = driver._conn
            if self._statements_on_loop and runs_on_loop(database, operation):
                self._keep(function(database, operation, parameters))
            else:
                self._keep(await driver._execute(function, database, operation, parameters))

    async def _async_soft_close(self) -> None:
        """Nothing to close: the driver's cursor was closed on its thread after the statement."""

    def close(self) -> None:
        self._rows.clear()


class OneCallConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("statements_on_loop",)
    _cursor_cls = OneCallCursor

    def __init__(self, dbapi: Any, connection: Any, *, statements_on_loop: bool = False) -> None:
        super().__init__(dbapi, connection)
        self.statements_on_loop = statements_on_loop

    def rollback(self) -> None:
        """Roll back only when a transaction is open. SQLAlchemy rolls back each connection it
        returns to the pool, and a session rolls back when it closes, also after a commit and
        after reads outside a transaction (``sqlite3`` begins one only for writes): one or two
        hand-offs a session that would change nothing. Nothing else runs on the connection at
        that point, so reading its state from this thread is safe."""
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        database = driver._connection
        if database is not None and not database.in_transaction:
            return
        super().rollback()


class OneCallDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect uses (``create_async_engine(module=…)``),
    handing out :class:`OneCallConnection` instead of SQLAlchemy's connection."""

    def __init__(self, *, statements_on_loop: bool) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.statements_on_loop = statements_on_loop

    def connect(self, *arg: Any, **kw: Any) -> OneCallConnection:
        if self.statements_on_loop:  # the loop's thread runs statements too, never at the same time
            kw["check_same_thread"] = False
        # SQLAlchemy's connect opens the driver's connection (and marks its thread a daemon); only
        # the small adapter object around it is swapped for ours.
        adapted = super().connect(*arg, **kw)
        return OneCallConnection(self, adapted._connection, statements_on_loop=self.statements_on_loop)


def dbapi(*, statements_on_loop: bool = False) -> OneCallDbapi:
    return OneCallDbapi(statements_on_loop=statements_on_loop)
