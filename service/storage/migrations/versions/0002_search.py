"""full-text search over messages in a final state

Revision ID: 0002_search
Revises: 0001
Create Date: 2026-11-21

Postgres: a generated `tsvector` column with a GIN index. It is NULL while a reply streams, so the batched
flushes of a reply in flight never pay for text analysis; the final write computes it once.
SQLite: an external-content FTS5 table over `messages.content`, kept in sync by triggers that fire only for
rows in a final state (a flush updates a STREAMING row: every trigger's WHEN clause is false).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_search"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL_OLD = "old.status <> 'streaming'"
FINAL_NEW = "new.status <> 'streaming'"

SQLITE_UP = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "content, content='messages', content_rowid='seq', tokenize='porter unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN {FINAL_NEW} BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.seq, new.content);
    END""",
    f"""CREATE TRIGGER messages_fts_unindex AFTER UPDATE OF content, status ON messages WHEN {FINAL_OLD} BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    END""",
    f"""CREATE TRIGGER messages_fts_index AFTER UPDATE OF content, status ON messages WHEN {FINAL_NEW} BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.seq, new.content);
    END""",
    f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN {FINAL_OLD} BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.seq, old.content);
    END""",
    # Messages stored before this migration.
    "INSERT INTO messages_fts(rowid, content) SELECT seq, content FROM messages WHERE status <> 'streaming'",
]

SQLITE_DOWN = [
    "DROP TRIGGER messages_fts_insert",
    "DROP TRIGGER messages_fts_unindex",
    "DROP TRIGGER messages_fts_index",
    "DROP TRIGGER messages_fts_delete",
    "DROP TABLE messages_fts",
]

POSTGRES_UP = [
    "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
    "CASE WHEN status = 'streaming' THEN NULL ELSE to_tsvector('english', content) END) STORED",
    "CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)",
]

POSTGRES_DOWN = [
    "DROP INDEX ix_messages_search_vector",
    "ALTER TABLE messages DROP COLUMN search_vector",
]


def _statements(sqlite: list[str], postgres: list[str]) -> list[str]:
    return sqlite if op.get_bind().dialect.name == "sqlite" else postgres


def upgrade() -> None:
    for statement in _statements(SQLITE_UP, POSTGRES_UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(SQLITE_DOWN, POSTGRES_DOWN):
        op.execute(statement)
