"""signal holders: the departments that hold a signal's case now, and the case sequence they are of

A key bound to departments reads the delivery log of the signals whose case one of its departments
holds now (``signal.routed``, then ``case.departments_changed``); a department the case left reads
it no more. Rows from before keep holders NULL and holders_sequence 0: notifier did not learn their
departments, so no department-bound key sees their deliveries until the case moves again (a key
bound to no department sees them as before).

Revision ID: 0003
Revises: '0002'
Create Date: 2026-12-07 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifier_signal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holders", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("holders_sequence", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("notifier_signal", schema=None) as batch_op:
        batch_op.drop_column("holders_sequence")
        batch_op.drop_column("holders")
