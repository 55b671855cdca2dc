"""Staged rows (``stage_insert``) on a real SQLite file with foreign keys enforced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from civicsignals.common.db import create_engine, session_factory, stage_insert, transaction

METADATA = MetaData()
PARENTS = Table("parents", METADATA, Column("id", Integer, primary_key=True))
CHILDREN = Table(
    "children",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id"), nullable=False),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'staged.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)
    yield engine
    await engine.dispose()


async def test_staged_rows_go_in_parents_first_whatever_order_they_were_staged_in(
    engine: AsyncEngine,
) -> None:
    """A child staged before its parent (as when one transaction stages a row of each table for
    one record, then another pair) still commits: the tables are written in foreign-key order."""
    async with transaction(session_factory(engine)) as session:
        stage_insert(session, CHILDREN, {"id": 10, "parent_id": 1})
        stage_insert(session, PARENTS, {"id": 1})
        stage_insert(session, CHILDREN, {"id": 20, "parent_id": 2})
        stage_insert(session, PARENTS, {"id": 2})
    async with engine.connect() as connection:
        children = (await connection.execute(select(CHILDREN.c.id, CHILDREN.c.parent_id))).all()
    assert sorted(tuple(row) for row in children) == [(10, 1), (20, 2)]
