"""The one-hand-off SQLite adapter answers exactly as SQLAlchemy's own aiosqlite adapter does.

Each test runs the same statements through an engine with SQLAlchemy's stock adapter and through
``create_engine`` (which uses :mod:`civicsignals.common.sqlite_driver`), on real SQLite files.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from civicsignals.common.db import create_engine
from civicsignals.common.sqlite_driver import OneCallConnection, OneCallCursor

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("size", Integer),
)


@pytest.fixture(params=[False, True], ids=["on the driver's thread", "on the loop where safe"])
async def engines(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """(stock adapter, one-call adapter), each on a database file of its own; the one-call adapter
    with and without ``statements_on_loop``."""
    stock = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}")
    ours = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ours.db'}", statements_on_loop=request.param)
    for engine in (stock, ours):
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    yield stock, ours
    for engine in (stock, ours):
        await engine.dispose()


async def test_the_driver_keeps_the_private_names_the_adapter_uses() -> None:
    """aiosqlite's ``Connection._execute``, ``_conn`` and ``_connection``: if an upgrade renames
    them, this fails before anything else does."""
    async with aiosqlite.connect(":memory:") as connection:
        assert connection._connection is connection._conn
        assert connection._conn.in_transaction is False
        thread_of_call = await connection._execute(lambda: threading.current_thread())
        assert thread_of_call is not threading.current_thread()  # it ran on the driver's thread
        assert await connection._execute(lambda: connection._conn.execute("select 41 + 1").fetchone()) == (
            42,
        )


async def test_engine_uses_the_one_call_cursor(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    _, ours = engines
    async with ours.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneCallConnection)
        assert isinstance(raw.dbapi_connection.cursor(), OneCallCursor)


async def _script(engine: AsyncEngine) -> list[Any]:
    """Statements of every kind, and what SQLAlchemy made of each one's cursor."""
    seen: list[Any] = []
    async with engine.begin() as connection:
        one = await connection.execute(insert(items).values(name="lamp", size=3))
        seen.append(("insert", one.rowcount, one.inserted_primary_key))
        many = await connection.execute(insert(items), [{"name": f"tree {i}", "size": i} for i in range(5)])
        seen.append(("executemany", many.rowcount))
        changed = await connection.execute(update(items).where(items.c.size < 3).values(size=0))
        seen.append(("update", changed.rowcount))
        rows = await connection.execute(select(items).order_by(items.c.id))
        seen.append(("keys", list(rows.keys())))
        seen.append(("rows", [tuple(row) for row in rows]))
        first = await connection.execute(select(items.c.name).order_by(items.c.name))
        seen.append(("fetchone", first.fetchone(), "fetchmany", first.fetchmany(2), "rest", first.fetchall()))
        none = await connection.execute(select(items).where(items.c.id < 0))
        seen.append(("empty", none.fetchall()))
        returned = await connection.execute(
            insert(items).values(name="bench", size=9).returning(items.c.id, items.c.name)
        )
        seen.append(("returning", returned.all()))
        seen.append(("text", (await connection.execute(text("select count(*), sum(size) from items"))).one()))
    streamed: list[Any] = []
    async with engine.connect() as connection:  # a server-side cursor stays SQLAlchemy's own
        result = await connection.stream(select(items.c.name).order_by(items.c.id))
        async for row in result:
            streamed.append(row.name)
    seen.append(("streamed", streamed))
    return seen


async def test_every_kind_of_statement_answers_as_with_sqlalchemys_adapter(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    stock, ours = engines
    expected = await _script(stock)
    assert await _script(ours) == expected
    assert (
        "rows",
        [
            (1, "lamp", 3),
            (2, "tree 0", 0),
            (3, "tree 1", 0),
            (4, "tree 2", 0),
            (5, "tree 3", 3),
            (6, "tree 4", 4),
        ],
    ) in expected


async def test_a_failing_statement_raises_the_same_error_and_rolls_back_its_transaction(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    for engine in engines:
        async with engine.begin() as connection:
            await connection.execute(insert(items).values(name="lamp", size=1))
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(insert(items).values(name="bin", size=2))
                await connection.execute(insert(items).values(name="lamp", size=3))  # unique name
        with pytest.raises(OperationalError, match="no such table"):
            async with engine.begin() as connection:
                await connection.execute(text("select * from missing"))
        async with engine.connect() as connection:
            names = (await connection.execute(select(items.c.name))).scalars().all()
        assert names == ["lamp"], engine  # "bin" went with its transaction


async def test_a_session_closed_without_commit_leaves_nothing(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """The rollback that SQLAlchemy issues on close still happens when a transaction is open."""
    for engine in engines:
        sessions = async_sessionmaker(engine)
        async with sessions() as session:
            await session.execute(insert(items).values(name="left open", size=1))
        async with sessions() as session:
            await session.execute(insert(items).values(name="kept", size=2))
            await session.commit()
        async with engine.connect() as connection:
            names = (await connection.execute(select(items.c.name))).scalars().all()
        assert names == ["kept"], engine


async def test_one_call_per_statement_and_none_for_a_rollback_with_nothing_to_undo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed transaction of a SELECT and an INSERT: two calls and the commit, where
    SQLAlchemy's adapter made nine (a cursor, execute, fetch for the SELECT and close for each, the
    commit, and the pool's rollback); a read outside a transaction: one call, where it made six."""
    ours = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ours.db'}")
    async with ours.begin() as connection:
        await connection.run_sync(metadata.create_all)
    calls = _count_driver_calls(monkeypatch)
    sessions = async_sessionmaker(ours)
    async with sessions() as session:  # the pool opens its connection before counting starts
        await session.execute(select(items.c.id))
    calls.clear()
    async with sessions() as session, session.begin():
        await session.execute(select(items.c.id).where(items.c.name == "lamp"))
        await session.execute(insert(items).values(name="lamp", size=1))
    assert calls == ["_run", "_run", "commit"]
    calls.clear()
    async with sessions() as session:
        assert (await session.execute(select(items.c.name))).scalars().all() == ["lamp"]
    assert calls == ["_run"]
    await ours.dispose()


def _count_driver_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions handed to any aiosqlite connection's thread from now on."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", "?"))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


async def test_on_the_loop_only_the_first_write_and_the_commit_go_to_the_drivers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads, and what a transaction does after its first write, run on the loop: a committed
    transaction of a SELECT, three INSERTs and an UPDATE is two hand-offs; a read none."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}", statements_on_loop=True)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    calls = _count_driver_calls(monkeypatch)
    sessions = async_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await session.execute(select(items.c.id).where(items.c.name == "lamp"))
        await session.execute(insert(items).values(name="lamp", size=1))
        await session.execute(insert(items), [{"name": "bin", "size": 2}, {"name": "tree", "size": 3}])
        await session.execute(update(items).where(items.c.name == "bin").values(size=20))
    assert calls == ["_run", "commit"]  # the first INSERT takes the write lock on the driver's thread
    calls.clear()
    async with sessions() as session:
        rows = (await session.execute(select(items.c.name, items.c.size).order_by(items.c.id))).all()
    assert [tuple(row) for row in rows] == [("lamp", 1), ("bin", 20), ("tree", 3)]
    assert calls == []
    await engine.dispose()


async def test_waiting_for_the_write_lock_never_stops_the_loop(tmp_path: Path) -> None:
    """One transaction of this process holds the write lock while it awaits something else; a second
    transaction's first write waits for it on the driver's thread. Had it waited on the loop's
    thread (SQLite's busy timeout sleeps), the first could never finish: the loop would stand
    still until the 30-second timeout and the second would fail with "database is locked"."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'lock.db'}", statements_on_loop=True)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    sessions = async_sessionmaker(engine)
    first_wrote = asyncio.Event()
    release_first = asyncio.Event()
    ticks = 0

    async def first() -> None:
        async with sessions() as session, session.begin():
            await session.execute(insert(items).values(name="first", size=1))
            first_wrote.set()
            await release_first.wait()  # holds the write lock across an await

    async def second() -> None:
        await first_wrote.wait()
        async with sessions() as session, session.begin():
            await session.execute(insert(items).values(name="second", size=2))
            # a read in the waiting transaction sees its own row and the first's, committed by then
            names = (await session.execute(select(items.c.name).order_by(items.c.id))).scalars().all()
            assert names == ["first", "second"]

    async def ticker() -> None:
        nonlocal ticks
        await first_wrote.wait()
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        release_first.set()  # only a running loop gets here

    await asyncio.wait_for(asyncio.gather(first(), second(), ticker()), timeout=20)
    assert ticks == 20
    async with sessions() as session:
        assert (await session.execute(select(items.c.name).order_by(items.c.id))).scalars().all() == [
            "first",
            "second",
        ]
    await engine.dispose()


async def test_a_read_on_the_loop_sees_only_what_was_committed(tmp_path: Path) -> None:
    """A read that runs on the loop while another connection's transaction has written: WAL gives
    it the last committed state, without waiting."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}", statements_on_loop=True)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.execute(insert(items).values(name="kept", size=1))
    sessions = async_sessionmaker(engine)
    async with sessions() as writer, writer.begin():
        await writer.execute(insert(items).values(name="pending", size=2))
        async with sessions() as reader:
            seen = (await reader.execute(select(items.c.name))).scalars().all()
        assert seen == ["kept"]
    await engine.dispose()
