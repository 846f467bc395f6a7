"""Call state shared by every process of one database: ``call_state`` (one JSON value per call and
kind: the conversation a resumed leg continues, the handoff record, the human leg's result, Plivo's
pending transfer, the operator's outcome; agent/calllog/state.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 02:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "call_state",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("value", json_type, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", "kind", name="pk_call_state"),
    )
    op.create_index("ix_call_state_updated_at", "call_state", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_call_state_updated_at", table_name="call_state")
    op.drop_table("call_state")
