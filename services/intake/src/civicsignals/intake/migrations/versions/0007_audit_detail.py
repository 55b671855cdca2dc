"""audit detail: a short note on an audit record, never personal data

An erasure from the privacy desk records how the officer proved it was them just before (the
step-up: a recent sign-in at the provider, or the desk's key typed again). Rows from before keep
NULL.

Revision ID: 0007
Revises: '0006'
Create Date: 2026-12-07 21:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detail", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_column("detail")
