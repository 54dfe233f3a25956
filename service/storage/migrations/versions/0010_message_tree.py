"""the message tree: each message's parent, each conversation's current branch

Revision ID: 0010_message_tree
Revises: 0009_attachments_shares
Create Date: 2026-12-02

- `messages.parent_id`: the message a message follows ('' for a first message). Existing conversations come in
  unchanged: each message's parent is the one before it (by `seq`), so each is one branch.
- `conversations.current_message_id`: the current branch's leaf; for existing conversations, their last message.
- A trigger keeps the release before this one (which knows no tree, and may still serve during a rolling upgrade)
  right: a message it inserts (no `parent_id`) goes on the end of the current branch and becomes its leaf, which
  is what that release meant by adding a message to the conversation.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_message_tree"
down_revision: str | None = "0009_attachments_shares"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXISTING = [
    "UPDATE messages SET parent_id = COALESCE((SELECT p.id FROM messages p "
    "WHERE p.conversation_id = messages.conversation_id AND p.seq < messages.seq ORDER BY p.seq DESC LIMIT 1), '')",
    "UPDATE conversations SET current_message_id = "
    "(SELECT m.id FROM messages m WHERE m.conversation_id = conversations.id ORDER BY m.seq DESC LIMIT 1)",
]

SQLITE_UP = [
    """CREATE TRIGGER messages_join_current_branch AFTER INSERT ON messages WHEN new.parent_id IS NULL BEGIN
        UPDATE messages SET parent_id = COALESCE(
            (SELECT current_message_id FROM conversations WHERE id = new.conversation_id), '') WHERE seq = new.seq;
        UPDATE conversations SET current_message_id = new.id WHERE id = new.conversation_id;
    END""",
]
SQLITE_DOWN = ["DROP TRIGGER messages_join_current_branch"]

POSTGRES_UP = [
    """CREATE FUNCTION messages_join_current_branch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.parent_id := COALESCE((SELECT current_message_id FROM conversations WHERE id = NEW.conversation_id), '');
        UPDATE conversations SET current_message_id = NEW.id WHERE id = NEW.conversation_id;
        RETURN NEW;
    END
    $$""",
    "CREATE TRIGGER messages_join_current_branch BEFORE INSERT ON messages FOR EACH ROW "
    "WHEN (NEW.parent_id IS NULL) EXECUTE FUNCTION messages_join_current_branch()",
]
POSTGRES_DOWN = [
    "DROP TRIGGER messages_join_current_branch ON messages",
    "DROP FUNCTION messages_join_current_branch()",
]


def _statements(sqlite: list[str], postgres: list[str]) -> list[str]:
    return sqlite if op.get_bind().dialect.name == "sqlite" else postgres


def upgrade() -> None:
    # Plain ALTER TABLE, also on SQLite: a batch (copy-and-move) rebuild would drop the search triggers.
    op.add_column("messages", sa.Column("parent_id", sa.String(length=36), nullable=True))
    op.add_column("conversations", sa.Column("current_message_id", sa.String(length=36), nullable=True))
    for statement in EXISTING:
        op.execute(statement)
    op.create_index("ix_messages_conversation_parent", "messages", ["conversation_id", "parent_id", "seq"])
    for statement in _statements(SQLITE_UP, POSTGRES_UP):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(SQLITE_DOWN, POSTGRES_DOWN):
        op.execute(statement)
    op.drop_index("ix_messages_conversation_parent", table_name="messages")
    op.drop_column("conversations", "current_message_id")
    op.drop_column("messages", "parent_id")
