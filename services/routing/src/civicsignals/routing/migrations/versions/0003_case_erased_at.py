"""case erased_at: when the resident's data of the signal was erased on request

Revision ID: 0003
Revises: '0002'
Create Date: 2026-12-06 20:12:34.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import civicsignals.common.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("erased_at", civicsignals.common.db.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
