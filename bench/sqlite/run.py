"""SQLite through SQLAlchemy's async engine: CPU a transaction and a read, three ways, in one run.

    .venv/bin/python bench/sqlite/run.py [--transactions 3000] [--rounds 3]

Each way runs the same work on a fresh database file (WAL, as every service's engine):

- **stock**: SQLAlchemy's own aiosqlite adapter (the reference: three or four hand-offs to the
  driver's thread a statement);
- **one call**: ``create_engine`` with statements on the driver's thread, one hand-off each;
- **on the loop**: ``create_engine(statements_on_loop=True)``, what a serving process uses: reads
  and the statements after a transaction's first write run on the event loop's thread.

The work is ``--transactions`` transactions of a SELECT, two INSERTs and an UPDATE (what a
consumer's batch or a group commit does), then as many reads outside a transaction. CPU is the
process's (every thread), so the driver's thread counts too. Rounds alternate the ways, so a
change in the machine's speed falls on all three.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from civicsignals.common.db import create_engine, set_sqlite_pragmas

metadata = MetaData()
events = Table(  # the shape of an outbox: a text key, a subject, a JSON payload, a mark
    "events",
    metadata,
    Column("id", String, primary_key=True),
    Column("subject", String, nullable=False, index=True),
    Column("payload", String, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
)
PAYLOAD = '{"signal_id": "01JD0000000000000000000000", "topic": "afval", "confidence": 0.93}'


def stock_engine(url: str) -> AsyncEngine:
    """SQLAlchemy's own adapter, with the pragmas ``create_engine`` sets on each connection."""
    engine = create_async_engine(url, connect_args={"timeout": 30})
    set_sqlite_pragmas(engine)
    return engine


WAYS: dict[str, Callable[[str], AsyncEngine]] = {
    "stock": stock_engine,
    "one call": lambda url: create_engine(url),
    "on the loop": lambda url: create_engine(url, statements_on_loop=True),
}


async def measure(
    make_engine: Callable[[str], AsyncEngine], path: Path, transactions: int
) -> tuple[float, float]:
    """CPU µs a write transaction and a read."""
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    sessions = async_sessionmaker(engine)
    start = time.process_time()
    for number in range(transactions):
        async with sessions() as session, session.begin():
            await session.execute(select(events.c.id).where(events.c.id == f"a{number}"))
            await session.execute(insert(events).values(id=f"a{number}", subject="civic.a", payload=PAYLOAD))
            await session.execute(insert(events).values(id=f"b{number}", subject="civic.b", payload=PAYLOAD))
            await session.execute(update(events).where(events.c.id == f"a{number}").values(attempts=1))
    written = time.process_time() - start
    start = time.process_time()
    for number in range(transactions):
        async with sessions() as session:
            (await session.execute(select(events).where(events.c.id == f"b{number}"))).one()
    read = time.process_time() - start
    await engine.dispose()
    return 1e6 * written / transactions, 1e6 * read / transactions


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="sqlite-bench-") as temporary:
        for round_number in range(args.rounds):
            for way, make_engine in WAYS.items():
                path = Path(temporary) / f"{way.replace(' ', '-')}-{round_number}.db"
                figures[way].append(await measure(make_engine, path, args.transactions))
    print(f"CPU µs per write transaction (SELECT, 2 INSERTs, UPDATE) and per read, {args.rounds} rounds:")
    stock_write = min(write for write, _ in figures["stock"])
    stock_read = min(read for _, read in figures["stock"])
    for way, rounds in figures.items():
        writes = " ".join(f"{write:6.0f}" for write, _ in rounds)
        reads = " ".join(f"{read:5.0f}" for _, read in rounds)
        best_write = min(write for write, _ in rounds)
        best_read = min(read for _, read in rounds)
        print(
            f"  {way:12s} transaction {writes}  read {reads}"
            f"   best against stock: {best_write / stock_write:.2f} / {best_read / stock_read:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
