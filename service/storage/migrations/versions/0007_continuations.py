"""continuations: where a reply was taken over and continued by another replica

Revision ID: 0007_continuations
Revises: 0006_service_secrets
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_continuations"
down_revision: str | None = "0006_service_secrets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, also on SQLite: a batch (copy-and-move) rebuild would drop the search triggers.
    op.add_column("messages", sa.Column("continued_at", sa.String(length=200), server_default="", nullable=False))


def downgrade() -> None:
    op.drop_column("messages", "continued_at")
