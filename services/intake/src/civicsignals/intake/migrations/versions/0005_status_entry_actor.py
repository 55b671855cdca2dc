"""status entry actor: who made each change of the case, as a role, so that an erasure on request
drops the notes of the resident's own moves (their words) and keeps staff's

Rows from before keep actor NULL: their notes stay on an erasure, as before.

Revision ID: 0005
Revises: '0004'
Create Date: 2026-12-06 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("status_entry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("status_entry", schema=None) as batch_op:
        batch_op.drop_column("actor")
