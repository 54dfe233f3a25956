"""The schema as SQLAlchemy Core tables. Alembic migrations create it; queries use these definitions."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# A 64-bit auto-incrementing key on Postgres, SQLite's rowid alias on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(200), nullable=False, server_default=""),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("create_time", Time, nullable=False),
    sa.Column("last_used_time", Time),
    sa.Column("revoke_time", Time),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("persona", sa.String(64), nullable=False, server_default=""),
    sa.Column("system_prompt", sa.Text, nullable=False, server_default=""),
    sa.Column("create_time", Time, nullable=False),
    sa.Column("update_time", Time, nullable=False),
    # The current branch's leaf (the message tree: messages.parent_id); NULL while there are no messages.
    sa.Column("current_message_id", sa.String(36)),
    # ListConversations: the owner's, newest activity first (keyset on update_time, id).
    sa.Index("ix_conversations_owner_update", "owner", "update_time", "id"),
)

messages = sa.Table(
    "messages",
    metadata,
    # `seq` orders messages (timestamps can tie) and is the keyset for ListMessages.
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column(
        "conversation_id",
        sa.String(36),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("model", sa.String(200), nullable=False, server_default=""),
    sa.Column("request_id", sa.String(64)),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()),  # not the provider's
    sa.Column("finish_reason", sa.String(16), nullable=False, server_default=""),
    sa.Column("error_message", sa.String(500), nullable=False, server_default=""),
    sa.Column("error_reason", sa.String(32), nullable=False, server_default=""),
    sa.Column("create_time", Time, nullable=False),
    sa.Column("update_time", Time, nullable=False),
    # The replica generating a STREAMING reply, and until when its claim holds (renewed on each flush).
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", Time),
    # Moves on whenever the lease changes hands or the reply is ended by someone else: every write a generation
    # makes is conditional on (lease_owner, lease_epoch), so a replica that lost the lease writes nothing.
    sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"),
    # Each takeover that continued the reply on another replica, as "generation:offset" separated by commas.
    sa.Column("continued_at", sa.String(200), nullable=False, server_default=""),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # The message tree: the message this one follows, '' for a first message. NULL only from a writer that knows
    # no tree (the release before 0010_message_tree): a trigger puts such a message on the current branch.
    sa.Column("parent_id", sa.String(36)),
    sa.Index("ix_messages_conversation_seq", "conversation_id", "seq"),
    # Children and siblings, in order: (conversation, parent) and seq.
    sa.Index("ix_messages_conversation_parent", "conversation_id", "parent_id", "seq"),
    # AIP-155 idempotency: one user message (and one reply) per (owner, request_id).
    sa.UniqueConstraint("owner", "request_id", "role", name="uq_messages_owner_request_role"),
    # Replies in flight: few rows, scanned by the flusher and the lease sweeper.
    sa.Index(
        "ix_messages_streaming",
        "lease_owner",
        "lease_expires_at",
        postgresql_where=sa.text("status = 'streaming'"),
        sqlite_where=sa.text("status = 'streaming'"),
    ),
)

# Coaching sessions: the wrap-up stage, turns and limits, persisted so a dropped stream rejoins where it was.
coaching_sessions = sa.Table(
    "coaching_sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column(
        "conversation_id",
        sa.String(36),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("persona", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("end_reason", sa.String(16), nullable=False, server_default=""),
    sa.Column("turns_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_turns", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_duration_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("start_time", Time, nullable=False),
    sa.Column("update_time", Time, nullable=False),
)

# Secrets shared by every replica on the database (the page-token key): random, made by the first to need one.
service_secrets = sa.Table(
    "service_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("create_time", Time, nullable=False),
)

# Attachments: metadata here, bytes in the attachment store (by default `attachment_chunks`, keyed by the id).
attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(127), nullable=False),
    sa.Column("sniffed_content_type", sa.String(127), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("create_time", Time, nullable=False),
)

# The database's attachment store: an attachment's bytes as numbered chunks. No foreign key: the store is a
# place for bytes like an object store would be, written before the metadata (service/attachments.py).
attachment_chunks = sa.Table(
    "attachment_chunks",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# Which user message carries which attachments, in order.
message_attachments = sa.Table(
    "message_attachments",
    metadata,
    sa.Column("message_id", sa.String(36), sa.ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "attachment_id", sa.String(36), sa.ForeignKey("attachments.id", ondelete="CASCADE"), nullable=False, index=True
    ),
)

# Read-only grants: the conversation's owner shared it with `user_id` (role `viewer`).
conversation_shares = sa.Table(
    "conversation_shares",
    metadata,
    sa.Column(
        "conversation_id", sa.String(36), sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("create_time", Time, nullable=False),
    # "Shared with me": the user's grants.
    sa.Index("ix_conversation_shares_user_id", "user_id"),
)
