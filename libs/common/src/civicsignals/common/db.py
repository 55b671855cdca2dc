"""The async database: SQLite for the embedded run, PostgreSQL in production, one URL to choose.

Each service owns its own database (DESIGN §4); this module only knows how to open one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, Table, event, insert
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.schema import sort_tables
from sqlalchemy.types import TypeDecorator
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import sqlite_driver

SessionFactory = async_sessionmaker[AsyncSession]


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


SQLITE_POOL_SIZE = 32
"""Connections an SQLite engine keeps open; as many again may be opened for a burst (and closed
after it). Not fewer with no overflow: a request holding a connection may wait for a group commit
that needs one of its own."""


def create_engine(url: str, *, echo: bool = False, statements_on_loop: bool = False) -> AsyncEngine:
    """Open an engine; SQLite gets WAL and a busy timeout so that a relay and requests can share it,
    and, with ``statements_on_loop``, runs the statements that cannot wait for a lock on the event
    loop's thread (:mod:`civicsignals.common.sqlite_driver`). PostgreSQL ignores the flag."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            from pathlib import Path

            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": 30},
            # One hand-off to the driver's thread per statement instead of three or four.
            module=sqlite_driver.dbapi(statements_on_loop=statements_on_loop),
            # Keep 32 connections open: an aiosqlite connection is a thread of its own plus four
            # PRAGMAs to open, and the default pool (5, overflow 10) closed each one past the fifth
            # on its return, so under load a new one was opened for most sessions (py-spy under
            # bench/pipeline: intake's contact reads spent half their time in Thread.start).
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_SIZE,
        )

        set_sqlite_pragmas(engine)
        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


def set_sqlite_pragmas(engine: AsyncEngine) -> None:
    """WAL, no fsync at each commit, a 30-second busy timeout and foreign keys, on every connection
    ``engine`` opens (``create_engine`` does this; bench/sqlite does it for SQLAlchemy's own adapter)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


async def create_schema(engine: AsyncEngine, metadata: MetaData) -> None:
    """Create the service's tables when they are missing (the embedded run and the tests)."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


@asynccontextmanager
async def transaction(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose work commits together at the end, or not at all."""
    async with sessions() as session, session.begin():
        yield session


_STAGED = "civicsignals.staged_rows"
"""``session.info`` key: rows staged per table since the session last wrote them."""


def stage_insert(session: AsyncSession | Session, table: Table, row: dict[str, Any]) -> None:
    """Insert ``row`` in the session's transaction without building an ORM object for it.

    For rows that are only ever written (outbox events, inbox and audit records): a SQLModel
    object per row cost a consumer more CPU than the rest of handling its event (py-spy under
    bench/pipeline). Staged rows are inserted, one Core ``INSERT`` per table, before the session's
    next flush of ORM changes (an autoflush before a query included) and before its commit (a
    transaction with no ORM changes does not flush at all); they commit or roll back with the
    caller's changes, and a transaction that ends without committing forgets them. The tables go
    in the order of their foreign keys (parents first), so a staged row may refer to another staged
    row; it must not refer to an ORM object of the same flush (that is written after it).
    """
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    if sync_session.in_nested_transaction():
        # A savepoint's rollback would have to take back only the rows staged inside it; nothing
        # here stages inside one, so that is refused rather than half supported.
        raise RuntimeError("staging rows inside a SAVEPOINT is not supported")
    staged: dict[Table, list[dict[str, Any]]] = sync_session.info.setdefault(_STAGED, {})
    staged.setdefault(table, []).append(row)


def _insert_staged(session: Session, *_args: Any) -> None:
    staged: dict[Table, list[dict[str, Any]]] | None = session.info.pop(_STAGED, None)
    if not staged:
        return
    # Parents before the rows that refer to them, whatever order they were staged in.
    for table in sort_tables(staged) if len(staged) > 1 else staged:
        session.connection().execute(insert(table), staged[table])


def _forget_staged(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own transaction ended: committed, rolled back or closed
        session.info.pop(_STAGED, None)


event.listen(Session, "before_flush", _insert_staged)
event.listen(Session, "before_commit", _insert_staged)
event.listen(Session, "after_transaction_end", _forget_staged)


async def ping(engine: AsyncEngine) -> bool:
    from sqlalchemy import text

    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC and timezone-aware, on SQLite as on PostgreSQL.

    SQLite keeps no zone, so without this every time read back would be naive and the API's
    RFC 3339 times would lose their ``Z``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
