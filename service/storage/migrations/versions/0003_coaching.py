"""coaching sessions

Revision ID: 0003_coaching
Revises: 0002_search
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_coaching"
down_revision: str | None = "0002_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "coaching_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("conversation_id", sa.String(length=36), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("end_reason", sa.String(length=16), server_default="", nullable=False),
        sa.Column("turns_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_turns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_duration_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_coaching_sessions_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coaching_sessions")),
    )
    with op.batch_alter_table("coaching_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_coaching_sessions_conversation_id"), ["conversation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("coaching_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_coaching_sessions_conversation_id"))
    op.drop_table("coaching_sessions")
