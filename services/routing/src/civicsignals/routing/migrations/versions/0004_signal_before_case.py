"""signal before case: a signal's photo count and erasure heard before its case opened

Revision ID: 0004
Revises: '0003'
Create Date: 2026-12-06 22:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import civicsignals.common.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_signal_before_case",
        sa.Column("signal_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("attachments", sa.Integer(), nullable=False),
        sa.Column("erased_at", civicsignals.common.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("recorded_at", civicsignals.common.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signal_id"),
    )


def downgrade() -> None:
    op.drop_table("routing_signal_before_case")
