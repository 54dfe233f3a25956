"""`chat-service serve | migrate | health | keys create|list|revoke` — flags override CHAT_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from service import logs
from service.personas import PersonaConfigError
from service.settings import Settings
from service.startup import CannotStart

logger = logging.getLogger(__name__)
SEE_CONFIGURATION = "fix the flag or the CHAT_* variable (README.md, Configuration, lists them all)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-service", description="gRPC service for LLM conversations")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve gRPC until SIGTERM")
    serve.add_argument("--listen", help="host:port (CHAT_LISTEN, default 127.0.0.1:50051)")
    _database_flag(serve)
    serve.add_argument(
        "--llm",
        dest="llm_provider",
        choices=["ollama", "openai", "local", "fake"],
        help="model provider (CHAT_LLM_PROVIDER, default local)",
    )
    serve.add_argument("--llm-url", help="provider base URL (CHAT_LLM_URL)")
    serve.add_argument("--model", dest="default_model", help="default model (CHAT_DEFAULT_MODEL)")
    serve.add_argument(
        "--workers", type=int, help="serving processes on the port, one replica each (CHAT_WORKERS; Postgres)"
    )
    serve.add_argument(
        "--demo-key",
        action="store_true",
        help="SQLite only: create a demo API key once (kept beside the database) and print it",
    )

    _database_flag(commands.add_parser("migrate", help="apply database migrations"))

    health = commands.add_parser("health", help="ask a running server's gRPC health service; exit 0 if SERVING")
    health.add_argument("--listen", help="host:port to ask (CHAT_LISTEN; a wildcard host means this machine)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; its secret is the last line printed")
    create.add_argument("--user", required=True, help="the user the key authenticates as")
    create.add_argument("--admin", action="store_true", help="grant the admin scope")
    create.add_argument("--name", default="", help="a label for the key")
    _database_flag(create)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--user", help="only this user's keys")
    _database_flag(listing)
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    _database_flag(revoke)
    return parser


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy async URL (CHAT_DATABASE_URL, default sqlite ./chat.db)")


def _settings(args: argparse.Namespace) -> Settings:
    names = ("listen", "database_url", "llm_provider", "llm_url", "default_model", "workers")
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's native core writes its own plain-text lines to stderr (a failed bind, for one), which would break
    # the one-JSON-object-per-line log; we report what matters ourselves. Set GRPC_VERBOSITY to see them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as error:
        logs.configure()
        return _fail(f"invalid configuration: {_violations(error)}", SEE_CONFIGURATION, code=2)
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings, demo_key=args.demo_key)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "health":
            return _health(settings.listen, service=args.service, timeout=args.timeout)
        return asyncio.run(_keys(settings, args))
    except KeyboardInterrupt:
        return 130
    except PersonaConfigError as error:
        return _fail(
            f"invalid personas file: {error}", "fix CHAT_PERSONAS_FILE (service/personas.toml shows the format)", code=2
        )
    except CannotStart as error:
        return _fail(error.problem, error.hint)


def _fail(problem: str, hint: str, *, code: int = 1) -> int:
    """Why this command cannot go on and what to do, as one log line (stderr carries only JSON lines)."""
    logger.error(problem, extra={"hint": hint})
    return code


def _violations(error: ValidationError) -> str:
    """Each invalid setting by the name an operator sets it with (`CHAT_LISTEN: must be host:port`)."""
    return "; ".join(_violation(e) for e in error.errors())


def _violation(error: ErrorDetails) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule over several settings: its message names them
        return message
    return f"CHAT_{'_'.join(str(part) for part in error['loc']).upper()}: {message}"


def _serve(settings: Settings, *, demo_key: bool) -> int:
    from service import app
    from service.domain import DomainError

    if demo_key:
        if not settings.is_sqlite:
            hint = "leave it out; create keys with `chat-service keys create --user NAME`"
            return _fail("--demo-key is for the embedded SQLite database only", hint, code=2)
        asyncio.run(_print_demo_key(settings))
    if settings.workers > 1:
        return _supervise(settings)
    try:
        run_loop(app.serve(settings, on_listening=announce), settings.event_loop)
    except DomainError as error:  # raised while starting: a model that cannot load, a database gone away
        return _fail(f"cannot start: {error.message}", SEE_CONFIGURATION)
    return 0


def announce(line: str) -> None:
    """Print `line` to stdout in one write: the workers of `--workers N` share their supervisor's stdout, and
    `print` writes the text and its newline separately when stdout is unbuffered (PYTHONUNBUFFERED, as in the
    image), so two workers' lines could interleave ("listening on Alistening on B\n\n")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_loop(main: Coroutine[Any, Any, None], choice: str) -> None:
    """Run `main` on uvloop when chosen (or, with "auto", when installed), else on asyncio's own loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _supervise(settings: Settings) -> int:
    from service import workers

    if settings.is_sqlite:
        return _fail("--workers needs Postgres: SQLite takes one writing process", "use CHAT_WORKERS=1", code=2)
    if settings.listen.rpartition(":")[2] == "0":
        return _fail("--workers needs a fixed port to share", "choose one with --listen HOST:PORT", code=2)
    return workers.supervise(settings)


def _migrate(settings: Settings) -> int:
    """Create the Postgres database when it is missing (saying so), then bring its schema to the newest."""
    from service.storage import migrate

    where = migrate.describe(settings.database_url)
    if asyncio.run(migrate.ensure_database(settings.database_url)):
        print(f"created the {where}", flush=True)
    migrate.upgrade(settings.database_url)
    print(f"migrated the {where} to {migrate.current_head()}")
    return 0


_WILDCARD_HOSTS = {"0.0.0.0", "[::]", "::", ""}


def _health(listen: str, *, service: str, timeout: float) -> int:
    """One grpc.health.v1 Check (what container HEALTHCHECKs and probes without native gRPC support run)."""
    import grpc
    from grpc_health.v1 import health_pb2

    host, _, port = listen.rpartition(":")
    address = f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"{address}: {cast(grpc.Call, error).code().name}", flush=True)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}", flush=True)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


async def _with_keys(settings: Settings) -> Any:
    from service import wiring
    from service.app import page_token_secret, utc_now
    from service.pagination import PageTokens
    from service.storage import migrate
    from service.storage.database import Database

    if settings.should_migrate:
        await asyncio.to_thread(migrate.upgrade, settings.database_url)
    else:
        await migrate.check(settings.database_url)
    database = Database(settings.database_url, pool_size=1)
    tokens = PageTokens(await page_token_secret(settings, database))
    return database, wiring.api_keys(database.unit_of_work, tokens, clock=utc_now)


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from service.domain import DomainError, Unavailable

    database, keys = await _with_keys(settings)
    try:
        if args.keys_command == "create":
            key, secret = await keys.create(args.user, scopes={"admin"} if args.admin else (), name=args.name)
            print(f"created key {key.id} for user {key.user_id!r}{' (admin)' if args.admin else ''}")
            print("the secret below is shown once; store it now:")
            print(secret)
        elif args.keys_command == "list":
            token = ""
            while True:
                page = await keys.list(user_id=args.user, size=1000, token=token)
                for k in page.items:
                    state = f"revoked {k.revoke_time:%Y-%m-%d %H:%M}" if k.revoke_time else "active"
                    print(
                        f"{k.id}\t{k.user_id}\t{' '.join(sorted(k.scopes)) or '-'}\t{k.create_time:%Y-%m-%d}\t{state}"
                    )
                if not (token := page.next_page_token):
                    break
        else:
            await keys.revoke(args.key_id)
            await _announce_revocation(database, args.key_id)
            print(f"revoked key {args.key_id}")
        return 0
    except DomainError as error:
        retry = isinstance(error, Unavailable)
        return _fail(error.message, "retry when the database is back" if retry else "see `chat-service keys --help`")
    finally:
        await database.dispose()


async def _announce_revocation(database: Any, key_id: str) -> None:
    """Tell running replicas to forget the key at once (Postgres NOTIFY on the channel they listen to). On
    SQLite a server in another process re-reads the key within its 5 s cache."""
    import sqlalchemy as sa

    from service.auth.api_keys import REVOKED_CHANNEL

    if database.engine.dialect.name != "postgresql":
        return
    async with database.engine.connect() as conn:
        await conn.execute(
            sa.text("SELECT pg_notify(:channel, :key_id)"), {"channel": REVOKED_CHANNEL, "key_id": key_id}
        )
        await conn.commit()


def demo_key_path(settings: Settings) -> Path:
    database = settings.database_url.split("///", 1)[-1] or "chat.db"
    return Path(f"{database}.demo-key")


async def _print_demo_key(settings: Settings) -> None:
    """Create the demo key once and keep its secret beside the SQLite file, so every `make run` can print it."""
    from service.domain import DomainError

    path = demo_key_path(settings)
    database, keys = await _with_keys(settings)
    try:
        secret = path.read_text().strip() if path.exists() else ""
        try:
            if secret:
                await keys.authenticate(secret)
        except DomainError:
            secret = ""  # the database was reset: mint a new key
        if not secret:
            _, secret = await keys.create("demo", name="make run demo key")
            path.write_text(secret + "\n")
            os.chmod(path, 0o600)
    finally:
        await database.dispose()
    address = settings.listen
    grpcurl, chat = _beside_me("grpcurl"), _beside_me("chat")
    print(f"Demo API key (user 'demo', kept in {path}):\n  {secret}\n")
    print("Try it (in another terminal, from this directory):")
    print(f"  KEY={secret}")
    print(
        f'  {grpcurl} -plaintext -H "authorization: Bearer $KEY" -d \'{{"title": "first chat"}}\' '
        f"{address} chat.v1.ChatService/CreateConversation"
    )
    print(
        f'  {grpcurl} -plaintext -H "authorization: Bearer $KEY" -d \'{{"conversation_id": "<id from above>", '
        f'"content": "Hello! How are you?"}}\' {address} chat.v1.ChatService/StreamReply'
    )
    print("or with the chat CLI:")
    print(f'  {chat} --address {address} --api-key $KEY ask "Hello! How are you?"\n', flush=True)


def _beside_me(program: str) -> str:
    """A program installed next to this one (`make run` puts grpcurl and chat into .venv/bin), as a path
    relative to the working directory when it is below it; its bare name when it is not installed here."""
    beside = Path(sys.executable).parent / program
    if not beside.exists():
        return program
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)
