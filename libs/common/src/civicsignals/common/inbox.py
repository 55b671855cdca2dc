"""The idempotent-consumer record (DESIGN §2): JetStream delivers at least once, we act once.

A handler calls :func:`claim` inside the same transaction as its own changes. If the event was
processed before, ``claim`` says so and the handler does nothing; otherwise the record commits with
the handler's changes, or not at all.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import utcnow


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


async def claim(session: AsyncSession, consumer: str, event_id: str) -> bool:
    """True when this consumer has not yet processed ``event_id``; records it in the transaction.

    Two deliveries of one event racing each other both see no record; the second commit then fails
    on the primary key and its transaction, with all its effects, rolls back.
    """
    existing = await session.exec(
        select(ProcessedEvent).where(ProcessedEvent.consumer == consumer, ProcessedEvent.event_id == event_id)
    )
    if existing.first() is not None:
        return False
    session.add(ProcessedEvent(consumer=consumer, event_id=event_id))
    return True
