"""The message tree from the terminal: regenerate a reply, edit a message, list a message's siblings, switch the
current branch, delete a message. Shared by the one-shot commands and the interactive session."""

from __future__ import annotations

import argparse

from chat.v1 import chat_pb2 as pb
from chat_client.cli import failures
from chat_client.cli.replying import show_reply
from chat_client.cli.terminal import Terminal, as_dict
from chat_client.sync import SyncChatClient, SyncReplyStream

ROLE_NAMES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant", pb.ROLE_SYSTEM: "system"}
PREVIEW = 60


def place(message: pb.Message) -> str:
    """Where a message stands among its siblings, as a UI shows it: `< 2/3 >` (nothing when it has none)."""
    if message.sibling_count < 2:
        return ""
    return f"< {message.sibling_index + 1}/{message.sibling_count} >"


def preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW else line[: PREVIEW - 1] + "…"


def follow(term: Terminal, stream: SyncReplyStream, *, json: bool) -> int:
    """Show a reply (or a correction) as it streams, then a status line; the exit status it deserves."""
    message, stats = show_reply(term, stream, echo=not json)
    if json:
        term.json({"message": as_dict(message), "resumes": stream.stream.resumes})
    elif not message.model:  # a correction: written by the user, stored as it is
        term.note(f"correction stored · message {message.message_id}")
    else:
        term.note(f"{stats.describe()} · message {message.message_id}")
    return failures.report_reply(term, message)


def regenerate(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    return follow(term, client.regenerate_reply(args.message_id), json=args.json)


def edit(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    return follow(term, client.edit_message(args.message_id, args.text), json=args.json)


def show_siblings(client: SyncChatClient, term: Terminal, message_id: str, *, json: bool = False) -> int:
    found = list(client.iter_siblings(message_id))
    if json:
        term.json([as_dict(m) for m in found])
        return 0
    for m in found:
        marker = "*" if m.message_id == message_id else " "
        where = f"{m.sibling_index + 1}/{m.sibling_count}"
        term.line(
            f"{marker} {where}  {term.style(m.message_id, 'dim')}  {ROLE_NAMES.get(m.role, '?')}: {preview(m.content)}"
        )
    return 0


def siblings(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    return show_siblings(client, term, args.message_id, json=args.json)


def switch(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    conversation = client.set_current_branch(args.conversation_id, args.message_id)
    if args.json:
        term.json(as_dict(conversation))
    else:
        term.note(f"the current branch now ends at message {conversation.current_message_id}")
    return 0


def delete(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    deleted = client.delete_message(args.message_id)
    if args.json:
        term.json(as_dict(deleted))
    else:
        current = deleted.conversation.current_message_id or "(none: the conversation is empty)"
        term.note(f"deleted {deleted.deleted_count} message(s); the current branch ends at {current}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    regenerating = sub.add_parser("regenerate", help="a new reply beside a reply (or to a message of yours)")
    regenerating.add_argument("message_id")
    regenerating.set_defaults(run=regenerate)

    editing = sub.add_parser("edit", help="edit a message: yours gets a new reply; a reply is corrected")
    editing.add_argument("message_id")
    editing.add_argument("text")
    editing.set_defaults(run=edit)

    listing = sub.add_parser("siblings", help="a message and its other versions (the messages sharing its parent)")
    listing.add_argument("message_id")
    listing.set_defaults(run=siblings)

    switching = sub.add_parser("switch", help="make the branch through a message current")
    switching.add_argument("conversation_id")
    switching.add_argument("message_id")
    switching.set_defaults(run=switch)

    deleting = sub.add_parser("delete-message", help="delete a message and every message after it on its branches")
    deleting.add_argument("message_id")
    deleting.set_defaults(run=delete)
