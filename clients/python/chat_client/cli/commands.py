"""The one-shot commands: ask, conversations, history, export, search, coach, models."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from chat.v1 import chat_pb2 as pb
from chat_client.cli import coaching, exporting, failures, sharing
from chat_client.cli.branching import place
from chat_client.cli.replying import STATUS_NAMES, show_reply
from chat_client.cli.terminal import Terminal, as_dict
from chat_client.sync import SyncChatClient

ROLE_NAMES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant", pb.ROLE_SYSTEM: "system"}
TITLE_FROM_QUESTION = 60


def when(message: pb.Message | pb.Conversation, field: str = "create_time") -> str:
    stamp: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return stamp.strftime("%Y-%m-%d %H:%M")


def ask(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    attachment_ids = sharing.upload_all(client, term, args.attach or [], quiet=args.json)
    if attachment_ids is None:
        return failures.EXIT_USAGE
    conversation_id = args.conversation
    if not conversation_id:
        title = args.title or " ".join(args.text.split())[:TITLE_FROM_QUESTION]
        created = client.create_conversation(title=title, model=args.model or "", persona=args.persona or "")
        conversation_id = created.conversation_id
    stream = client.stream_reply(conversation_id, args.text, attachment_ids=attachment_ids)
    message, stats = show_reply(term, stream, echo=not args.json)
    if args.json:
        term.json({"conversation_id": conversation_id, "message": as_dict(message), "resumes": stream.stream.resumes})
    else:
        term.note(f"{stats.describe()} · conversation {conversation_id}")
    return failures.report_reply(term, message)


def conversations(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    found = []
    for conversation in client.iter_conversations(page_size=min(args.limit, 1000), scope=args.scope):
        found.append(conversation)
        if len(found) >= args.limit:
            break
    if args.json:
        term.json([as_dict(c) for c in found])
        return 0
    for c in found:
        owner = f"  owner {c.owner_user_id}" if args.scope != "owned" and c.owner_user_id else ""
        term.line(f"{c.conversation_id}  {term.style(when(c, 'update_time'), 'dim')}  {c.title}  ({c.model}){owner}")
    if not found:
        term.note(
            "nothing is shared with you"
            if args.scope == "shared"
            else 'no conversations yet: `chat ask "..."` starts one'
        )
    return 0


def history(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    messages = list(client.iter_messages(args.conversation_id, branch_message_id=args.branch))
    if args.json:
        term.json([as_dict(m) for m in messages])
        return 0
    for message in messages:
        show_message(term, message)
    return 0


def show_message(term: Terminal, message: pb.Message) -> None:
    role = ROLE_NAMES.get(message.role, "?")
    status = STATUS_NAMES.get(message.status, "")
    if message.error_message:  # why a reply failed or was interrupted
        status = f"{status}: {message.error_message}"
    suffix = "" if status == "completed" else f" [{status}]"
    versions = place(message)  # one of several versions (edits, regenerated replies): `< 2/3 >`
    heading = f"{role} · {when(message)}{suffix}" + (f" · {versions}" if versions else "")
    term.line(
        term.style(heading, "bold", "green" if role == "user" else "blue")
        + "  "
        + term.style(message.message_id, "dim")
    )
    term.line(message.content)
    term.line()


def search(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    response = client.search_messages(args.query, page_size=args.limit, scope=args.scope)
    if args.json:
        term.json([as_dict(r) for r in response.results])
        return 0
    for result in response.results:
        m = result.message
        where = f"{result.conversation_title} · {ROLE_NAMES.get(m.role, '?')} · {when(m)}"
        term.line(f"{term.style(where, 'dim')}  {m.conversation_id}")
        term.line("  " + term.highlight(" ".join(result.snippet.split())))
    if not response.results:
        term.note(f"no messages match {args.query!r}")
    return 0


def export(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    written = exporting.export(client, args.conversation_id, args.format, output=args.output, append=args.append)
    if args.output:
        if args.json:
            term.json({"output": args.output, "bytes": written, "format": args.format})
        else:
            term.note(f"wrote {written} bytes to {args.output}")
    return 0


def coach(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    return coaching.coach(client, term, args.persona, max_turns=args.max_turns)


def models(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    found = client.list_models().models
    if args.json:
        term.json([as_dict(m) for m in found])
        return 0
    for model in found:
        marker = " (default)" if model.default else ""
        term.line(f"{model.name}{marker}  {term.style(model.provider, 'dim')}")
    return 0
