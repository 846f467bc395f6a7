"""The timeline column ``first_chunk_text_ms``: when the model's text that completed the turn's first
speakable chunk reached the turn (agent/timeline.py). Before it the model was still streaming; from
it to ``first_chunk`` is the runtime's own work (bench/overhead.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 12:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("first_chunk_text_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("first_chunk_text_ms")
