"""Notifier's tables: every delivery attempt, never the address it went to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from civicsignals.common.db import UtcDateTime
from civicsignals.common.events import utcnow


class Delivery(SQLModel, table=True):
    """One message for one event over one channel; the unique key makes redeliveries harmless."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("event_id", "channel", "template"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(index=True)
    event_id: str
    signal_id: str = Field(index=True)
    channel: str
    template: str
    status: str = Field(description="sent, skipped_no_consent, skipped_no_contact, failed")
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
