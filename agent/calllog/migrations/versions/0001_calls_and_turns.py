"""The call log's first schema: calls and turns (see agent/calllog/schema.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-26 17:17:19.697658

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("stream_sid", sa.String(length=64), nullable=True),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("carrier", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("caller_hash", sa.String(length=64), nullable=True),
        sa.Column("caller_number", sa.String(length=32), nullable=True),
        sa.Column("to_number", sa.String(length=32), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("outcome_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("policy", sa.String(length=64), nullable=True),
        sa.Column("routing_class", sa.String(length=48), nullable=True),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("handoff", JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", name=op.f("pk_calls")),
    )
    op.create_index(op.f("ix_calls_caller_hash"), "calls", ["caller_hash"])
    op.create_index(op.f("ix_calls_policy"), "calls", ["policy"])
    op.create_index(op.f("ix_calls_started_at"), "calls", ["started_at"])
    op.create_index(op.f("ix_calls_tenant"), "calls", ["tenant"])

    op.create_table(
        "turns",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("routing_class", sa.String(length=48), nullable=True),
        sa.Column("stakes", sa.String(length=8), nullable=True),
        sa.Column("tier", sa.String(length=16), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("route", JSON, nullable=True),
        sa.Column("answered_by", sa.String(length=64), nullable=True),
        sa.Column("answered_model", sa.String(length=128), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("usage", JSON, nullable=True),
        sa.Column("budget_ms", sa.Integer(), nullable=True),
        sa.Column("first_audio_ms", sa.Float(), nullable=True),
        sa.Column("within_budget", sa.Boolean(), nullable=False),
        sa.Column("bridge", sa.Boolean(), nullable=False),
        sa.Column("bridge_kind", sa.String(length=16), nullable=True),
        sa.Column("hedges", sa.Integer(), nullable=False),
        sa.Column("fallback_count", sa.Integer(), nullable=False),
        sa.Column("model_failures", sa.Integer(), nullable=False),
        sa.Column("fallbacks", JSON, nullable=True),
        sa.Column("handoff", sa.Boolean(), nullable=False),
        sa.Column("barged_in", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("heard", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("speech_end_ms", sa.Float(), nullable=True),
        sa.Column("endpoint_ms", sa.Float(), nullable=True),
        sa.Column("stt_final_ms", sa.Float(), nullable=True),
        sa.Column("route_ms", sa.Float(), nullable=True),
        sa.Column("llm_request_ms", sa.Float(), nullable=True),
        sa.Column("llm_first_token_ms", sa.Float(), nullable=True),
        sa.Column("first_chunk_ms", sa.Float(), nullable=True),
        sa.Column("tts_request_ms", sa.Float(), nullable=True),
        sa.Column("tts_first_audio_ms", sa.Float(), nullable=True),
        sa.Column("first_audio_out_ms", sa.Float(), nullable=True),
        sa.Column("first_audio_heard_ms", sa.Float(), nullable=True),
        sa.Column("bridge_out_ms", sa.Float(), nullable=True),
        sa.Column("done_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["call_sid"], ["calls.call_sid"], name=op.f("fk_turns_call_sid_calls"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_sid", "turn_index", name=op.f("pk_turns")),
    )
    op.create_index(op.f("ix_turns_routing_class"), "turns", ["routing_class"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f("ix_turns_routing_class"), table_name="turns")

    op.drop_table("turns")
    op.drop_index(op.f("ix_calls_tenant"), table_name="calls")
    op.drop_index(op.f("ix_calls_started_at"), table_name="calls")
    op.drop_index(op.f("ix_calls_policy"), table_name="calls")
    op.drop_index(op.f("ix_calls_caller_hash"), table_name="calls")

    op.drop_table("calls")
