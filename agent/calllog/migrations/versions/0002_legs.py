"""Legs of a call: ``calls.legs`` and ``turns.leg`` (a caller back from a failed transfer is leg 2;
its turns continue the first leg's numbering instead of overwriting them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 12:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("legs", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("leg", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("leg")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("legs")
