"""The idempotent-consumer record (DESIGN §2), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, func, select

from civicsignals.common.db import SessionFactory, create_engine, session_factory, transaction
from civicsignals.common.inbox import ProcessedEvent, claim

pytestmark = pytest.mark.timeout(60)


class _Rollback(Exception):
    pass


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(
            lambda sync: SQLModel.metadata.create_all(sync, tables=[ProcessedEvent.__table__])  # type: ignore[attr-defined]
        )
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def _records(sessions: SessionFactory) -> int:
    async with sessions() as session:
        return int((await session.exec(select(func.count()).select_from(ProcessedEvent))).one())


async def test_first_claim_wins_and_the_second_is_refused(sessions: SessionFactory) -> None:
    async with transaction(sessions) as session:
        assert await claim(session, "routing-classified", "01JD0001") is True

    async with transaction(sessions) as session:
        assert await claim(session, "routing-classified", "01JD0001") is False

    assert await _records(sessions) == 1


async def test_claims_are_per_consumer(sessions: SessionFactory) -> None:
    async with transaction(sessions) as session:
        assert await claim(session, "notifier-received", "01JD0001") is True
        assert await claim(session, "insights-all", "01JD0001") is True
    async with transaction(sessions) as session:
        assert await claim(session, "notifier-received", "01JD0002") is True
    assert await _records(sessions) == 3


async def test_a_rolled_back_claim_is_forgotten(sessions: SessionFactory) -> None:
    with pytest.raises(_Rollback):
        async with transaction(sessions) as session:
            assert await claim(session, "routing-classified", "01JD0001") is True
            raise _Rollback  # the handler's own change failed: nothing of it may stay

    assert await _records(sessions) == 0
    async with transaction(sessions) as session:
        assert await claim(session, "routing-classified", "01JD0001") is True
    assert await _records(sessions) == 1


async def test_racing_deliveries_commit_once(sessions: SessionFactory) -> None:
    """Two deliveries of one event both claim it; the second commit fails and rolls back."""
    async with sessions() as first, sessions() as second:
        assert await claim(first, "routing-classified", "01JD0001") is True
        assert await claim(second, "routing-classified", "01JD0001") is True
        await first.commit()
        with pytest.raises(IntegrityError):
            await second.commit()
        await second.rollback()
    assert await _records(sessions) == 1
