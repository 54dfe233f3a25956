"""A real replica on a loopback port, with stubs and API keys for test users."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.app import App, build
from service.auth.api_keys import parse_key
from service.ports import Provider
from service.settings import Settings


@dataclass
class Replica:
    app: App
    channel: grpc.aio.Channel
    stub: chat_pb2_grpc.ChatServiceStub
    address: str
    _keys: dict[str, str] = field(default_factory=dict)

    async def key(self, user: str, *, admin: bool = False) -> str:
        if user not in self._keys:
            _, self._keys[user] = await self.app.deps.use_cases.api_keys.create(user, scopes={"admin"} if admin else ())
        return self._keys[user]

    async def auth(self, user: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {await self.key(user)}"),)

    async def conversation(self, user: str, **fields: Any) -> pb.Conversation:
        response = await self.stub.CreateConversation(
            pb.CreateConversationRequest(**fields), metadata=await self.auth(user)
        )
        return response.conversation


def secret_of(token: str) -> str:
    """The secret part of an API key, `csk_<id>_<secret>` (the secret may hold `_` itself)."""
    parsed = parse_key(token)
    assert parsed is not None, "not an API key"
    return parsed[1]


def settings_for(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "listen": "127.0.0.1:0",
        "llm_provider": "fake",
        "auto_migrate": False,
        "flush_interval_ms": 50,
        "replica_id": "test-replica",
        "shutdown_grace_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_replica(settings: Settings, provider: Provider | None = None) -> AsyncIterator[Replica]:
    """A replica with `provider`, or the one the settings name (built as `chat-service serve` would)."""
    app = App(build(settings, provider=provider))
    port = await app.start("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Replica(app, channel, chat_pb2_grpc.ChatServiceStub(channel), address)
    finally:
        await channel.close()
        await app.stop(grace=1.0)
