"""AdminService over a real server: API keys created, listed and revoked by an admin; revocation everywhere."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_status import rpc_status

from chat.v1 import admin_pb2 as apb
from chat.v1 import admin_pb2_grpc
from chat.v1 import chat_pb2 as pb
from service.auth.api_keys import REVOKED_CHANNEL
from tests.conftest import _truncate
from tests.integration.harness import Replica, running_replica, secret_of, settings_for


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def admin_of(replica: Replica) -> tuple[admin_pb2_grpc.AdminServiceStub, tuple[tuple[str, str], ...]]:
    return admin_pb2_grpc.AdminServiceStub(replica.channel), bearer(await replica.key("root", admin=True))


async def code_of(replica: Replica, token: str) -> grpc.StatusCode:
    try:
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_create_list_revoke(replica: Replica) -> None:
    admin, auth = await admin_of(replica)
    created = await admin.CreateApiKey(apb.CreateApiKeyRequest(user_id="bob", display_name="ci"), metadata=auth)
    key = created.api_key
    assert created.token.startswith(key.prefix) and key.prefix == f"csk_{key.key_id}_"
    assert (key.user_id, key.display_name, list(key.scopes)) == ("bob", "ci", [])
    assert key.HasField("create_time") and not key.HasField("revoke_time") and not key.HasField("last_use_time")
    assert await code_of(replica, created.token) == grpc.StatusCode.OK

    listed = await admin.ListApiKeys(apb.ListApiKeysRequest(user_id="bob"), metadata=auth)
    assert [k.key_id for k in listed.api_keys] == [key.key_id]
    assert listed.api_keys[0].HasField("last_use_time")  # used just above
    assert secret_of(created.token) not in str(listed)  # the secret is never listed

    everyone = await admin.ListApiKeys(apb.ListApiKeysRequest(), metadata=auth)
    assert {k.user_id for k in everyone.api_keys} == {"bob", "root"}

    revoked = await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=key.key_id), metadata=auth)
    assert revoked.api_key.HasField("revoke_time")
    assert await code_of(replica, created.token) == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_scope_is_required(replica: Replica) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(replica.channel)
    user = await replica.auth("alice")
    calls = [
        admin.CreateApiKey(apb.CreateApiKeyRequest(user_id="mallory", scopes=["admin"]), metadata=user),
        admin.ListApiKeys(apb.ListApiKeysRequest(), metadata=user),
        admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id="0" * 16), metadata=user),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await admin.ListApiKeys(apb.ListApiKeysRequest())
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_admin_requests_get_precise_statuses(replica: Replica) -> None:
    admin, auth = await admin_of(replica)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id="0123456789abcdef"), metadata=auth)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for request in (apb.CreateApiKeyRequest(user_id=""), apb.CreateApiKeyRequest(user_id="u", scopes=["root"])):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await admin.CreateApiKey(request, metadata=auth)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert rpc_status.from_call(invalid.value) is not None
    with pytest.raises(grpc.aio.AioRpcError) as no_id:
        await admin.RevokeApiKey(apb.RevokeApiKeyRequest(), metadata=auth)
    assert no_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_admin_created_admin_key_is_admin(replica: Replica) -> None:
    admin, auth = await admin_of(replica)
    created = await admin.CreateApiKey(apb.CreateApiKeyRequest(user_id="ops", scopes=["admin"]), metadata=auth)
    assert list(created.api_key.scopes) == ["admin"]
    await admin.ListApiKeys(apb.ListApiKeysRequest(), metadata=bearer(created.token))


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    await _truncate(postgres_database)
    return postgres_database


@pytest.fixture
async def two_replicas(postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    async with (
        running_replica(settings_for(postgres_url, replica_id="a")) as a,
        running_replica(settings_for(postgres_url, replica_id="b")) as b,
    ):
        yield a, b


@pytest.mark.postgres
async def test_revocation_on_one_replica_reaches_the_other_at_once(two_replicas: tuple[Replica, Replica]) -> None:
    a, b = two_replicas
    token = await a.key("carol")
    assert await code_of(b, token) == grpc.StatusCode.OK  # B verified it and now holds it in its 5 s cache
    assert b.app.deps.notifications.connected
    heard = asyncio.Event()
    # Subscribed after B's own handler, so by the time this runs B has already forgotten the key.
    b.app.deps.notifications.subscribe(REVOKED_CHANNEL, lambda _key_id: heard.set())
    admin, auth = await admin_of(a)
    await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=token.split("_")[1]), metadata=auth)
    await asyncio.wait_for(heard.wait(), 10)
    assert await code_of(b, token) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.postgres
async def test_cli_revocation_reaches_a_running_replica_at_once(postgres_url: str) -> None:
    async with running_replica(settings_for(postgres_url)) as replica:
        token = await replica.key("dave")
        assert await code_of(replica, token) == grpc.StatusCode.OK  # cached
        heard = asyncio.Event()
        replica.app.deps.notifications.subscribe(REVOKED_CHANNEL, lambda _key_id: heard.set())
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "keys",
            "revoke",
            token.split("_")[1],
            "--database-url",
            postgres_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err
        await asyncio.wait_for(heard.wait(), 10)
        assert await code_of(replica, token) == grpc.StatusCode.UNAUTHENTICATED
