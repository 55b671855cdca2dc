"""Benchmark of insights' read model: events applied per second, and the dashboard's trend queries.

    .venv/bin/python bench/insights/run.py                     # one million signals on PostgreSQL
    .venv/bin/python bench/insights/run.py --signals 100000    # a quicker run
    .venv/bin/python bench/insights/run.py --database sqlite   # the embedded store

It generates a year of synthetic signals (``civicsignals.insights.synthetic``: every signal with the
events the other services would publish for it), applies them to an empty read model in batches
as the consumers do (validation, inbox, facts, cube), then times the dashboard's trend queries.
Targets: 5,000 events a second or more; p95 of the trend queries at most 100 ms.

Each figure is printed beside a reference measured in the same run on the same database: the
apply rate beside a bare ``executemany`` insert of as many rows into a scratch table (what writing
alone costs), the query latencies beside a ``SELECT 1`` round trip. Results go to
``bench/results/insights-<timestamp>.json`` (git-ignored) as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Column, Integer, MetaData, String, Table, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from civicsignals.common.db import create_engine, create_schema, session_factory
from civicsignals.insights import models, service, synthetic  # noqa: F401  (registers the tables)
from civicsignals.insights.apply import apply_batch, parse
from civicsignals.insights.service import Filters

ROOT = Path(__file__).resolve().parents[2]
TENANT = "bench"


async def create_database(admin_url: str) -> str:
    import asyncpg

    url = make_url(admin_url)
    name = f"civic_bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, database_url: str) -> None:
    import asyncpg

    url = make_url(admin_url)
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(database_url).database}" WITH (FORCE)')
    finally:
        await connection.close()


async def reference_insert(engine: Any, rows: int, batch: int) -> float:
    """Rows a second of a bare executemany insert into a scratch table: the cost of writing alone."""
    scratch = Table(
        "bench_scratch",
        MetaData(),
        Column("id", String, primary_key=True),
        Column("n", Integer),
        Column("s", String),
    )
    async with engine.begin() as connection:
        await connection.run_sync(scratch.metadata.create_all)
    started = time.perf_counter()
    for start in range(0, rows, batch):
        async with engine.begin() as connection:
            await connection.execute(
                scratch.insert(),
                [{"id": f"{start + i:012d}", "n": i, "s": "x" * 40} for i in range(min(batch, rows - start))],
            )
    elapsed = time.perf_counter() - started
    async with engine.begin() as connection:
        await connection.run_sync(scratch.metadata.drop_all)
    return rows / elapsed


async def apply_all(engine: Any, signals: int, days: int, batch: int, zone: ZoneInfo) -> dict[str, Any]:
    sessions = session_factory(engine)
    end = date.today()
    start = end - timedelta(days=days)
    per_day = signals / days / (5 * 1.1 + 2 * 0.45) * 7  # the generator's weekday and weekend factors
    now = datetime.now(UTC)
    applied = generated_signals = 0
    apply_seconds = 0.0
    pending = []
    started = time.perf_counter()
    last_report = started

    async def flush() -> None:
        nonlocal applied, apply_seconds
        t0 = time.perf_counter()
        parsed = [p for e in pending if (p := parse(e)) is not None]  # validation counts: consumers do it
        async with sessions() as session, session.begin():
            result = await apply_batch(session, parsed, zone)
        apply_seconds += time.perf_counter() - t0
        applied += result.applied
        pending.clear()

    for event in synthetic.generate(TENANT, start, days, per_day, seed=2026, now=now):
        if event.type.endswith(("signal.received.v1", "conversation.received.v1")):
            generated_signals += 1
        pending.append(event)
        if len(pending) >= batch:
            await flush()
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                print(
                    f"  … {generated_signals:,} signals, {applied:,} events, {applied / apply_seconds:,.0f} events/s",
                    file=sys.stderr,
                )
    if pending:
        await flush()
    return {
        "signals": generated_signals,
        "events": applied,
        "apply_seconds": round(apply_seconds, 1),
        "events_per_second": round(applied / apply_seconds),
        "wall_seconds_including_generation": round(time.perf_counter() - started, 1),
        "period": [start.isoformat(), end.isoformat()],
    }


async def timed(engine: Any, run: Any, repeat: int) -> dict[str, float]:
    sessions = session_factory(engine)
    samples = []
    async with sessions() as session:
        await run(session)  # warm the plan and cache once
        for _ in range(repeat):
            t0 = time.perf_counter()
            await run(session)
            samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
        "max_ms": round(samples[-1], 2),
    }


async def query_bench(engine: Any, repeat: int) -> dict[str, Any]:
    today = date.today()
    last_90 = Filters(start=today - timedelta(days=89), end=today)
    last_365 = Filters(start=today - timedelta(days=364), end=today)
    queries = {
        "volume per day, 90 days, active/passive": lambda s: service.trend(
            s, TENANT, last_90, group_by="mode"
        ),
        "volume per week, a year, per topic": lambda s: service.trend(
            s, TENANT, last_365, interval="week", group_by="topic"
        ),
        "volume per month, a year, per channel": lambda s: service.trend(
            s, TENANT, last_365, interval="month", group_by="channel"
        ),
        "volume per day, 90 days, one topic": lambda s: service.trend(
            s, TENANT, last_90.narrowed(topic="burgerzaken")
        ),
        "volume per day, 90 days, topic+language+channel": lambda s: service.trend(
            s, TENANT, last_90.narrowed(topic="burgerzaken", language="en", channel="phone")
        ),
        "volume per day, a year, per language, passive only": lambda s: service.trend(
            s, TENANT, last_365.narrowed(mode="passive"), group_by="language"
        ),
        "breakdown by topic, 90 days": lambda s: service.breakdown(s, TENANT, last_90, "topic"),
        "breakdown by area, a year": lambda s: service.breakdown(s, TENANT, last_365, "area"),
        "topic by language, 90 days": lambda s: service.cross(s, TENANT, last_90, "topic", "language"),
    }
    results: dict[str, Any] = {}
    for name, query in queries.items():
        results[name] = await timed(engine, query, repeat)
        print(f"  {name}: {results[name]}", file=sys.stderr)
    others = {
        "departments, 90 days (not a trend query)": lambda s: service.departments(s, TENANT, last_90),
        "signal list, one topic, first page (not a trend query)": lambda s: service.signals(
            s, TENANT, last_90.narrowed(topic="afval"), limit=50
        ),
    }
    extra = {name: await timed(engine, query, max(5, repeat // 5)) for name, query in others.items()}
    reference = await timed(engine, lambda s: s.exec(text("SELECT 1")), repeat)
    trend_samples = [r["p95_ms"] for r in results.values()]
    return {
        "trend_queries": results,
        "worst_trend_p95_ms": max(trend_samples),
        "other_queries": extra,
        "select_1": reference,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch", type=int, default=1000, help="events per transaction")
    parser.add_argument("--repeat", type=int, default=100, help="runs of each query")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CIVIC_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="a server where a scratch database may be created and dropped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    zone = ZoneInfo("Europe/Amsterdam")

    if args.database == "postgres":
        database_url = await create_database(args.postgres_url)
    else:
        path = ROOT / ".data" / "bench" / f"insights-{uuid.uuid4().hex[:8]}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(database_url)
    report: dict[str, Any] = {"database": args.database, "machine": {"cpus": os.cpu_count()}}
    try:
        await create_schema(engine, SQLModel.metadata)
        print(
            f"applying {args.signals:,} signals to an empty read model ({args.database}) …", file=sys.stderr
        )
        report["apply"] = await apply_all(engine, args.signals, args.days, args.batch, zone)
        report["apply"]["reference_bare_insert_rows_per_second"] = round(
            await reference_insert(engine, 200_000, args.batch)
        )
        if args.database == "postgres":
            async with engine.begin() as connection:
                await connection.execute(text("ANALYZE"))
        async with engine.connect() as connection:
            counts = {
                table: (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                for table in ("insights_signal", "insights_daily", "insights_case", "insights_feedback")
            }
        report["rows"] = counts
        print("timing the dashboard's queries …", file=sys.stderr)
        report["queries"] = await query_bench(engine, args.repeat)
    finally:
        await engine.dispose()
        if args.database == "postgres" and not args.keep:
            await drop_database(args.postgres_url, database_url)
    apply = report["apply"]
    queries = report["queries"]
    print(
        f"\ninsights read model, {apply['signals']:,} signals ({apply['events']:,} events) on {args.database}:\n"
        f"  applied      {apply['events_per_second']:>10,} events/s   (target >= 5,000; reference: bare insert "
        f"{apply['reference_bare_insert_rows_per_second']:,} rows/s)\n"
        f"  trend p95    {queries['worst_trend_p95_ms']:>10} ms (worst of {len(queries['trend_queries'])} trend queries; "
        f"target <= 100 ms; reference: SELECT 1 p95 {queries['select_1']['p95_ms']} ms)"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"insights-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"  details: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
