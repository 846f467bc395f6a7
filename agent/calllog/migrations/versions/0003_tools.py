"""Tool calls: ``turns.tools`` (each call's name, masked arguments, status, latency) and the two
timeline columns ``tool_request_ms`` and ``tool_result_ms``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 16:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("tools", json_type, nullable=True))
        batch.add_column(sa.Column("tool_request_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("tool_result_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("tool_result_ms")
        batch.drop_column("tool_request_ms")
        batch.drop_column("tools")
