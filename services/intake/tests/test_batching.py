"""The group commit's SQLite path writes exactly what SQLAlchemy's own INSERT would write.

``batching.insert_sqlite`` hands the rows to aiosqlite directly (one thread hand-off per table
instead of three per statement), so these tests compare it, row for row and column for column,
with ``connection.execute(table.insert(), rows)`` on a second database of the same schema, and
check that it stays inside the session's transaction (a failing batch leaves nothing).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from civicsignals.common.db import create_engine, session_factory
from civicsignals.common.events import make_event
from civicsignals.common.migrations import upgrade
from civicsignals.intake import flows, models, service  # noqa: F401  (models registers the tables)
from civicsignals.intake.batching import Rows, insert_rows, sqlite_insert
from civicsignals.intake.crypto import FieldCipher
from civicsignals.intake.models import SignalCreate
from civicsignals.intake.tenantconfig import Area

from .conftest import SIGNAL

TABLES = ("signal", "status_entry", "contact", "outbox")


def request_rows(cipher: FieldCipher, body: dict[str, Any], area: Area | None = None) -> Rows:
    """One request's rows, built by the same functions ``flows.receive_signal`` uses."""
    payload = SignalCreate.model_validate(body)
    signal = service.signal_row("gouda", payload, "key:test", area=area)
    rows: Rows = [("signal", signal), ("status_entry", service.status_row(signal))]
    if payload.reporter is not None and signal["has_contact"]:
        rows.append(("contact", service.contact_row(cipher, signal, payload.reporter)))
    event = make_event(tenant="gouda", service="intake", data=service.signal_received_from_row(signal))
    rows.append(("outbox", flows.outbox_row("civic.gouda.signal.received", event)))
    return rows


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher({"k1": os.urandom(32)}, "k1")


async def migrated(path: Path) -> AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine, "civicsignals.intake.migrations")
    return engine


def stored(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()


async def test_the_sqlite_path_stores_what_sqlalchemy_would(tmp_path: Path, cipher: FieldCipher) -> None:
    no_contact = {**SIGNAL, "reporter": None, "location": None, "occurred_at": "2026-03-01T10:00:00+01:00"}
    with_metadata = {**SIGNAL, "metadata": {"portal_reference": "F-1", "nested": {"n": [1, 2.5, None]}}}
    groups = [
        request_rows(
            cipher, SIGNAL, Area(code="centrum", district="Oost", name="Centrum", geometry=Point(4.7, 52.0))
        ),
        request_rows(cipher, no_contact),
        request_rows(cipher, with_metadata),
    ]
    direct, through_sqlalchemy = tmp_path / "direct.db", tmp_path / "sqlalchemy.db"
    engines = [await migrated(direct), await migrated(through_sqlalchemy)]
    try:
        async with session_factory(engines[0])() as session, session.begin():
            assert await insert_rows(session, groups) == [None, None, None]
        async with engines[1].begin() as connection:
            for table in TABLES:
                rows = [row for group in groups for name, row in group if name == table]
                await connection.execute(SQLModel.metadata.tables[table].insert(), rows)
    finally:
        for engine in engines:
            await engine.dispose()
    for table in TABLES:
        expected = stored(through_sqlalchemy, table)
        assert expected, table
        assert stored(direct, table) == expected, table
    assert len(stored(direct, "contact")) == 2  # the request without a reporter has no contact


async def test_a_failing_batch_leaves_nothing_behind(tmp_path: Path, cipher: FieldCipher) -> None:
    first = request_rows(cipher, SIGNAL)
    again = [(table, dict(row)) for table, row in request_rows(cipher, SIGNAL)]
    again[0][1]["id"] = first[0][1]["id"]  # the same signal id twice: the primary key refuses it
    engine = await migrated(tmp_path / "intake.db")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with session_factory(engine)() as session, session.begin():
                await insert_rows(session, [first, again])
    finally:
        await engine.dispose()
    for table in TABLES:
        assert stored(tmp_path / "intake.db", table) == [], table


def test_rows_without_a_column_are_refused() -> None:
    from sqlalchemy.dialects import sqlite

    columns = tuple(
        column.key for column in SQLModel.metadata.tables["outbox"].columns if column.key != "attempts"
    )
    with pytest.raises(ValueError, match="attempts"):
        sqlite_insert(sqlite.dialect(), "outbox", columns)
