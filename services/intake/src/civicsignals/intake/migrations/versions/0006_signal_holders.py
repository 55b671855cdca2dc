"""signal holders: the departments that hold the case now, and the case sequence they are of

A department the case left (reassigned, rerouted, no longer informed) stops opening the signal's
attachments. Rows from before keep holders NULL and holders_sequence 0: their ``departments``
(every department the case reached) decides, as before, until the case's next move names the
holders.

Revision ID: 0006
Revises: '0005'
Create Date: 2026-12-07 14:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("signal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holders", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("holders_sequence", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("signal", schema=None) as batch_op:
        batch_op.drop_column("holders_sequence")
        batch_op.drop_column("holders")
