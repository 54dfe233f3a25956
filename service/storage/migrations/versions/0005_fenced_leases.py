"""fenced leases, stored failure reasons, bounded search text

Revision ID: 0005_fenced_leases
Revises: 0004_usage_estimated
Create Date: 2026-12-01

- `messages.lease_epoch`: every write a generation makes is conditional on (lease_owner, lease_epoch); whoever
  ends or takes over a reply moves the epoch on, so a replica that lost the lease can never write it again.
- `messages.error_reason`: a FAILED reply's error reason, so every reader (live, resumed, retried) gets the
  same status.
- Postgres: the search vector reads at most the first 100,000 characters of a message. `to_tsvector` refuses
  results over 1 MB, and a generated column that refuses a row refuses the whole UPDATE: one huge reply could
  never be ended (and every lease sweep including it failed).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_fenced_leases"
down_revision: str | None = "0004_usage_estimated"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_TEXT_CHARS = 100_000


def _search_vector(content: str) -> list[str]:
    return [
        "DROP INDEX ix_messages_search_vector",
        "ALTER TABLE messages DROP COLUMN search_vector",
        "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
        f"CASE WHEN status = 'streaming' THEN NULL ELSE to_tsvector('english', {content}) END) STORED",
        "CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)",
    ]


def upgrade() -> None:
    # Plain ALTER TABLE, also on SQLite: a batch (copy-and-move) rebuild would drop the search triggers.
    op.add_column("messages", sa.Column("lease_epoch", sa.Integer(), server_default="0", nullable=False))
    op.add_column("messages", sa.Column("error_reason", sa.String(length=32), server_default="", nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        for statement in _search_vector(f"left(content, {SEARCH_TEXT_CHARS})"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _search_vector("content"):
            op.execute(statement)
    op.drop_column("messages", "error_reason")
    op.drop_column("messages", "lease_epoch")
