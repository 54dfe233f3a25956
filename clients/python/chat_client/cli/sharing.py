"""The commands for files and sharing: `ask --attach`, download, share, unshare, shares."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chat.v1 import chat_pb2 as pb
from chat_client.cli.terminal import Terminal, as_dict
from chat_client.sync import SyncChatClient


def upload_all(client: SyncChatClient, term: Terminal, paths: list[str], *, quiet: bool) -> list[str] | None:
    """Upload each file; their attachment ids, or None (said why) when one cannot be read."""
    ids = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            term.error(f"cannot attach {name}: no such file")
            return None
        attachment = client.upload_attachment(path)
        if not quiet:
            term.note(f"attached {attachment.filename} ({attachment.content_type}, {attachment.size_bytes} bytes)")
        ids.append(attachment.attachment_id)
    return ids


def download(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    data = client.download_attachment(args.attachment_id)
    if args.output:
        Path(args.output).write_bytes(data)
        if args.json:
            term.json({"output": args.output, "bytes": len(data)})
        else:
            term.note(f"wrote {len(data)} bytes to {args.output}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def share(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    granted = client.share_conversation(args.conversation_id, args.user)
    if args.json:
        term.json(as_dict(granted))
    else:
        term.note(f"{args.conversation_id} is shared with {granted.user_id} (read-only)")
    return 0


def unshare(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    client.unshare_conversation(args.conversation_id, args.user)
    if args.json:
        term.json({"conversation_id": args.conversation_id, "user_id": args.user, "shared": False})
    else:
        term.note(f"{args.conversation_id} is no longer shared with {args.user}")
    return 0


def shares(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    found = list(client.iter_conversation_shares(args.conversation_id))
    if args.json:
        term.json([as_dict(s) for s in found])
        return 0
    for granted in found:
        role = pb.ShareRole.Name(granted.role).removeprefix("SHARE_ROLE_").lower()
        term.line(f"{granted.user_id}  {term.style(role, 'dim')}")
    if not found:
        term.note(f"{args.conversation_id} is not shared with anyone")
    return 0
