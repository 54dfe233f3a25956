"""usage_estimated: whether a reply's token counts are the provider's or the server's estimates

Revision ID: 0004_usage_estimated
Revises: 0003_coaching
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_usage_estimated"
down_revision: str | None = "0003_coaching"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not batch mode: on SQLite a batch would copy `messages` into a new table, and the full-text
# index's triggers (0002_search) would go with the old one. SQLite adds and drops columns natively (3.35+).


def upgrade() -> None:
    # Replies stored before this revision read false: whether their counts were estimated was not recorded.
    op.add_column("messages", sa.Column("usage_estimated", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("messages", "usage_estimated")
