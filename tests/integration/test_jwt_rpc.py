"""JWT bearer tokens over a real server: HS256 secret, RS256 PEM public key, ES256 JWKS file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chat.v1 import admin_pb2, admin_pb2_grpc
from chat.v1 import chat_pb2 as pb
from tests.integration.coach_stream import CoachCall, turn
from tests.integration.harness import Replica, running_replica, settings_for

SECRET = "a-test-secret-" + "s" * 51  # 64 bytes: long enough for HS512 too
ISSUER = "https://issuer.test"
AUDIENCE = "chat-service"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": "jwt-user", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def code_of(replica: Replica, token: str) -> grpc.StatusCode:
    try:
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def hs_replica(database_url: str) -> AsyncIterator[Replica]:
    settings = settings_for(database_url, jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    async with running_replica(settings) as replica:
        yield replica


async def test_hs256_token_authenticates_its_subject(hs_replica: Replica) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    created = await hs_replica.stub.CreateConversation(pb.CreateConversationRequest(title="t"), metadata=bearer(token))
    listed = await hs_replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    assert [c.conversation_id for c in listed.conversations] == [created.conversation.conversation_id]
    # Another user's API key does not see it: `sub` is the owner.
    other = await hs_replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=await hs_replica.auth("x"))
    assert list(other.conversations) == []
    # API keys keep working beside JWTs.
    assert await code_of(hs_replica, await hs_replica.key("alice")) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("token_claims", "key", "algorithm"),
    [
        pytest.param(claims(exp=int(time.time()) - 3600), SECRET, "HS256", id="expired"),
        pytest.param(claims(nbf=int(time.time()) + 3600), SECRET, "HS256", id="not-yet-valid"),
        pytest.param(claims(aud="someone-else"), SECRET, "HS256", id="wrong-audience"),
        pytest.param(claims(aud=None), SECRET, "HS256", id="no-audience"),
        pytest.param(claims(iss="https://evil.test"), SECRET, "HS256", id="wrong-issuer"),
        pytest.param(claims(), "another-secret" + "x" * 50, "HS256", id="wrong-key"),
        pytest.param(claims(exp=None), SECRET, "HS256", id="no-expiry"),
        pytest.param(claims(sub=None), SECRET, "HS256", id="no-subject"),
        pytest.param(claims(sub=""), SECRET, "HS256", id="empty-subject"),
        pytest.param(claims(), SECRET, "HS512", id="other-algorithm"),
    ],
)
async def test_bad_jwts_are_unauthenticated(
    hs_replica: Replica, token_claims: dict[str, Any], key: str, algorithm: str
) -> None:
    assert await code_of(hs_replica, jwt.encode(token_claims, key, algorithm=algorithm)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_unsigned_jwt_is_unauthenticated(hs_replica: Replica) -> None:
    assert await code_of(hs_replica, jwt.encode(claims(), None, algorithm="none")) == grpc.StatusCode.UNAUTHENTICATED


async def test_jwt_admin_scope_reaches_admin_service(hs_replica: Replica) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(hs_replica.channel)
    plain = jwt.encode(claims(), SECRET, algorithm="HS256")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(plain))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    scoped = jwt.encode(claims(scope="read admin"), SECRET, algorithm="HS256")
    await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(scoped))


def rsa_pem(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwt.pub.pem"
    path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, path


async def test_rs256_with_a_pem_public_key(database_url: str, tmp_path: Path) -> None:
    private, path = rsa_pem(tmp_path)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = settings_for(database_url, jwt_public_key_file=path, jwt_audience=AUDIENCE)
    async with running_replica(settings) as replica:
        assert await code_of(replica, jwt.encode(claims(), private, algorithm="RS256")) == grpc.StatusCode.OK
        wrong_key = jwt.encode(claims(), other, algorithm="RS256")
        assert await code_of(replica, wrong_key) == grpc.StatusCode.UNAUTHENTICATED
        # Algorithm confusion: the public key's PEM used as an HMAC secret must not verify.
        forged = _hmac_token(claims(), path.read_bytes())
        assert await code_of(replica, forged) == grpc.StatusCode.UNAUTHENTICATED


def _hmac_token(payload: dict[str, Any], secret: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


async def test_es256_with_a_jwks_file_picks_the_key_by_kid(database_url: str, tmp_path: Path) -> None:
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "ES256"}
            for kid, k in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    settings = settings_for(database_url, jwt_jwks_file=path)
    async with running_replica(settings) as replica:
        for kid, key in keys.items():
            token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid})
            assert await code_of(replica, token) == grpc.StatusCode.OK
        swapped = jwt.encode(claims(), keys["k1"], algorithm="ES256", headers={"kid": "k2"})
        assert await code_of(replica, swapped) == grpc.StatusCode.UNAUTHENTICATED
        unknown = jwt.encode(claims(), keys["k1"], algorithm="ES256", headers={"kid": "k3"})
        assert await code_of(replica, unknown) == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------------------- long-lived streams


async def past(exp: int) -> None:
    """Wait for the clock to pass a token's `exp`: a time, not an event anything could signal."""
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)


@pytest.fixture
async def strict_replica(database_url: str) -> AsyncIterator[Replica]:
    """No leeway: a token is refused from its `exp` on. Replies take ~10 s (500 tokens at 50 tokens/s)."""
    settings = settings_for(
        database_url,
        jwt_secret=SECRET,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway_seconds=0,
        fake_tokens_per_second=50,
        fake_reply_tokens=500,
    )
    async with running_replica(settings) as replica:
        yield replica


async def test_a_jwt_expiring_mid_stream_ends_the_coach_stream_at_the_next_turn(strict_replica: Replica) -> None:
    exp = int(time.time()) + 4
    call = CoachCall(strict_replica.stub, bearer(jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")))
    await call.begin(persona="english_buddy")

    await past(exp)
    await call.send(turn("Are you still there?"))
    error = await call.error()

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_jwt_expiring_mid_reply_ends_the_reply_stream(strict_replica: Replica) -> None:
    exp = int(time.time()) + 3
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    conversation = await strict_replica.stub.CreateConversation(pb.CreateConversationRequest(), metadata=bearer(token))
    call = strict_replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation.conversation_id, content="a long story"),
        metadata=bearer(token),
    )
    assert (await call.read()).event.HasField("started")

    completed, error = False, None
    async with asyncio.timeout(30):
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                completed = completed or response.event.HasField("completed")
        except grpc.aio.AioRpcError as failure:
            error = failure
    assert time.time() >= exp
    assert not completed  # the reply takes ~10 s; the token ran out after 3
    assert error is not None and error.code() is grpc.StatusCode.UNAUTHENTICATED
