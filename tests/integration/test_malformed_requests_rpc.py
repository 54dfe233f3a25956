"""Request bytes that are not the request message (not protobuf, or a string field that is not UTF-8), over a
real server: INVALID_ARGUMENT naming the request after authentication, UNAUTHENTICATED before it, and every
call in the access log, for every kind of RPC (Coach's garbage may come mid-stream)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica
from tests.integration.hostile import AccessLog, access_log
from tests.integration.rpc_errors import violations

pytestmark = pytest.mark.timeout(60)
CHAT = "/chat.v1.ChatService/"
NOT_UTF8 = b"\x0a\x03\xff\xfe\xfd"  # field 1 (a string in every request below), 3 bytes that are not UTF-8
NOT_PROTOBUF = b"\xff\xff\xff\xff"  # a tag whose varint never ends


def raw(value: bytes) -> bytes:
    return value


@pytest.fixture
def log() -> Iterator[AccessLog]:
    with access_log() as captured:
        yield captured


def assert_invalid_request(error: grpc.aio.AioRpcError, message_type: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message_type in violations(error).get("request", ""), violations(error)
    assert "DecodeError" not in (error.details() or "")


async def test_an_unparseable_unary_request_is_invalid_argument(replica: Replica, log: AccessLog) -> None:
    call = replica.channel.unary_unary(CHAT + "GetConversation", request_serializer=raw, response_deserializer=raw)
    auth = await replica.auth("alice")
    for index, payload in enumerate((NOT_UTF8, NOT_PROTOBUF)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(payload, metadata=auth)
        assert_invalid_request(error.value, "chat.v1.GetConversationRequest")
        entry = await log.entry(index)
        assert (entry.method, entry.code, entry.user) == (CHAT + "GetConversation", "INVALID_ARGUMENT", "alice")


async def test_an_unauthenticated_caller_with_garbage_is_unauthenticated(replica: Replica, log: AccessLog) -> None:
    call = replica.channel.unary_unary(CHAT + "CreateConversation", request_serializer=raw, response_deserializer=raw)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(NOT_UTF8)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    entry = await log.entry(0)
    assert (entry.method, entry.code, entry.user) == (CHAT + "CreateConversation", "UNAUTHENTICATED", None)


async def test_an_unparseable_server_streaming_request_is_invalid_argument(replica: Replica, log: AccessLog) -> None:
    call = replica.channel.unary_stream(CHAT + "StreamReply", request_serializer=raw, response_deserializer=raw)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call(NOT_UTF8, metadata=await replica.auth("alice")):
            pass
    assert_invalid_request(error.value, "chat.v1.StreamReplyRequest")
    assert (await log.entry(0)).code == "INVALID_ARGUMENT"


async def test_garbage_first_on_a_coach_stream_is_invalid_argument(replica: Replica, log: AccessLog) -> None:
    call = replica.channel.stream_stream(CHAT + "Coach", request_serializer=raw, response_deserializer=raw)(
        metadata=await replica.auth("alice")
    )
    await call.write(NOT_PROTOBUF)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert_invalid_request(error.value, "chat.v1.CoachRequest")
    assert (await log.entry(0)).code == "INVALID_ARGUMENT"


async def test_garbage_mid_stream_on_a_coach_stream_is_invalid_argument(replica: Replica, log: AccessLog) -> None:
    call = replica.channel.stream_stream(
        CHAT + "Coach", request_serializer=raw, response_deserializer=pb.CoachResponse.FromString
    )(metadata=await replica.auth("alice"))
    await call.write(pb.CoachRequest(start=pb.CoachStart(persona="english_buddy")).SerializeToString())
    started = await call.read()
    assert started.WhichOneof("response") == "session_started"
    # A user turn whose text is not UTF-8.
    await call.write(b"\x12\x05\x0a\x03\xff\xfe\xfd")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()  # the coach takes no turn, so the next thing on the stream is the error
    assert_invalid_request(error.value, "chat.v1.CoachRequest")
    entry = await log.entry(0)
    assert (entry.method, entry.code, entry.user) == (CHAT + "Coach", "INVALID_ARGUMENT", "alice")
    # The session is still there to rejoin: the garbage ended the stream, not the session.
    rejoin = replica.stub.Coach(metadata=await replica.auth("alice"))
    await rejoin.write(pb.CoachRequest(start=pb.CoachStart(session_id=started.session_started.session.session_id)))
    assert (await rejoin.read()).session_started.rejoined
    await rejoin.done_writing()


async def test_an_unparseable_admin_request_is_invalid_argument(replica: Replica, log: AccessLog) -> None:
    admin = (("authorization", f"Bearer {await replica.key('root', admin=True)}"),)
    call = replica.channel.unary_unary(
        "/chat.v1.AdminService/CreateApiKey", request_serializer=raw, response_deserializer=raw
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(NOT_UTF8, metadata=admin)
    assert_invalid_request(error.value, "chat.v1.CreateApiKeyRequest")
    assert (await log.entry(0)).code == "INVALID_ARGUMENT"
