"""`chat`: the terminal client. No command starts an interactive conversation; see `chat --help`. Exit
statuses: see `failures`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence

from chat_client import config
from chat_client.cli import branching, commands, failures, sharing
from chat_client.cli.exporting import ExportError
from chat_client.cli.interactive import Session
from chat_client.cli.terminal import Terminal
from chat_client.errors import ChatError, ModelUnavailable
from chat_client.sync import SyncChatClient

Command = Callable[[SyncChatClient, Terminal, argparse.Namespace], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat",
        description="Talk to chat-service from a terminal. Without a command: an interactive conversation.",
        epilog="Settings: flags, then CHAT_CLIENT_ADDRESS / CHAT_CLIENT_API_KEY / CHAT_CLIENT_JWT / CHAT_CLIENT_TLS / "
        "CHAT_CLIENT_CA_FILE, "
        "then the config file (CHAT_CLIENT_CONFIG, default ~/.config/chat/config.toml). "
        "Exit status: 0 done, 1 the server refused or failed the request, 2 bad usage, 3 chat-service "
        "unreachable, 4 no or refused credentials, 5 the model provider is unavailable or failed the reply, "
        "130 interrupted.",
    )
    parser.add_argument("--address", help="host:port of the server (CHAT_CLIENT_ADDRESS, default 127.0.0.1:50051)")
    parser.add_argument("--api-key", help="API key (CHAT_CLIENT_API_KEY)")
    parser.add_argument("--jwt", help="a JWT instead of an API key (CHAT_CLIENT_JWT)")
    parser.add_argument("--tls", action="store_const", const=True, default=None, help="use TLS (CHAT_CLIENT_TLS)")
    parser.add_argument("--ca-file", help="PEM roots to trust for TLS (CHAT_CLIENT_CA_FILE)")
    parser.add_argument(
        "--timeout", type=float, help="deadline of each call in seconds (CHAT_CLIENT_TIMEOUT, default 30)"
    )
    parser.add_argument("--config", help="config file (CHAT_CLIENT_CONFIG)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("--model", default="", help="model for new conversations")
    parser.add_argument("--persona", default="", help="persona for new conversations")
    sub = parser.add_subparsers(dest="command")

    ask = sub.add_parser("ask", help="ask one question and stream the reply")
    ask.add_argument("text")
    ask.add_argument("--conversation", help="continue this conversation (default: a new one)")
    ask.add_argument("--title", default="", help="title of the new conversation")
    ask.add_argument(
        "--attach",
        action="append",
        metavar="FILE",
        help="send FILE with the question (an image or text; repeatable)",
    )
    ask.set_defaults(run=commands.ask)

    listing = sub.add_parser("conversations", help="list your conversations, newest first")
    listing.add_argument("--limit", type=int, default=50)
    _scope_options(listing, "list")
    listing.set_defaults(run=commands.conversations)

    history = sub.add_parser("history", help="show a conversation's messages (its current branch)")
    history.add_argument("conversation_id")
    history.add_argument("--branch", default="", metavar="MESSAGE_ID", help="the branch through this message instead")
    history.set_defaults(run=commands.history)
    branching.add_commands(sub)

    export = sub.add_parser("export", help="export a conversation")
    export.add_argument("conversation_id")
    export.add_argument("--format", choices=["markdown", "json", "csv"], default="markdown")
    export.add_argument("--output", "-o", help="write to FILE instead of stdout")
    export.add_argument(
        "--append", action="store_true", help="append to FILE (CSV: continue its row numbering, no second header)"
    )
    export.set_defaults(run=commands.export)

    search = sub.add_parser("search", help="full-text search over your messages")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=20)
    _scope_options(search, "search")
    search.set_defaults(run=commands.search)

    share = sub.add_parser("share", help="let USER read one of your conversations")
    share.add_argument("conversation_id")
    share.add_argument("user")
    share.set_defaults(run=sharing.share)

    unshare = sub.add_parser("unshare", help="take USER's access to one of your conversations back")
    unshare.add_argument("conversation_id")
    unshare.add_argument("user")
    unshare.set_defaults(run=sharing.unshare)

    shares = sub.add_parser("shares", help="who one of your conversations is shared with")
    shares.add_argument("conversation_id")
    shares.set_defaults(run=sharing.shares)

    download = sub.add_parser("download", help="download an attachment")
    download.add_argument("attachment_id")
    download.add_argument("--output", "-o", help="write to FILE instead of stdout")
    download.set_defaults(run=sharing.download)

    coach = sub.add_parser("coach", help="a coaching session with PERSONA")
    coach.add_argument("persona")
    coach.add_argument("--max-turns", type=int, default=0)
    coach.set_defaults(run=commands.coach)

    models = sub.add_parser("models", help="models the server offers")
    models.set_defaults(run=commands.models)
    return parser


def _scope_options(parser: argparse.ArgumentParser, verb: str) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--shared", dest="scope", action="store_const", const="shared", help=f"{verb} what others shared with you"
    )
    scope.add_argument(
        "--all", dest="scope", action="store_const", const="all", help=f"{verb} yours and what is shared with you"
    )
    parser.set_defaults(scope="owned")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    term = Terminal()
    try:
        settings = config.load(
            {
                "address": args.address,
                "api_key": args.api_key,
                "jwt": args.jwt,
                "tls": args.tls,
                "ca_file": args.ca_file,
                "timeout": args.timeout,
            },
            path=args.config,
        )
        client_arguments = settings.client_arguments()
    except (config.ConfigError, OSError) as error:
        term.error(str(error))
        return failures.EXIT_USAGE
    if not (settings.api_key or settings.jwt):
        term.error("no credentials: pass --api-key, set CHAT_CLIENT_API_KEY, or put api_key in the config file")
        return failures.EXIT_AUTH
    try:
        with SyncChatClient(**client_arguments) as client:
            return _dispatch(client, term, args)
    except ChatError as error:
        return failures.report(term, error, settings.address)
    except ExportError as error:
        term.error(str(error))
        return failures.EXIT_USAGE
    except KeyboardInterrupt:
        term.line()
        return failures.EXIT_INTERRUPTED


def _dispatch(client: SyncChatClient, term: Terminal, args: argparse.Namespace) -> int:
    run: Command | None = getattr(args, "run", None)
    if run is not None:
        return int(run(client, term, args))
    try:
        client.list_models()  # fails early, with a clear message, when the server is unreachable or the key wrong
    except ModelUnavailable as error:
        failures.report(term, error, client.client.address)  # history, search, export... work without it
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    return Session(client, term, model=args.model, persona=args.persona).run()


if __name__ == "__main__":
    sys.exit(main())
