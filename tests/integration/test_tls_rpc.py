"""TLS and mutual TLS over loopback, with certificates from throwaway CAs (trustme)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.app import App, build
from service.settings import Settings
from tests.integration.harness import settings_for


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _pem(leaf: trustme.LeafCert) -> Pem:
    return Pem(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


@dataclass
class Pki:
    ca: bytes
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from another CA
    stranger_ca: bytes
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("pki")
    files = {"ca.pem": folder / "ca.pem", "server.pem": folder / "server.pem", "server.key": folder / "server.key"}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server.cert_chain_pems[0].write_to_path(files["server.pem"])
    server.private_key_pem.write_to_path(files["server.key"])
    stranger = other.issue_cert("stranger")
    return Pki(
        ca.cert_pem.bytes(), _pem(server), _pem(ca.issue_cert("client")), _pem(stranger), other.cert_pem.bytes(), files
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[App, str]]:
    app = App(build(settings))
    port = await app.start("127.0.0.1:0")
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        await app.stop(grace=1.0)


async def list_over(address: str, credentials: grpc.ChannelCredentials | None, token: str) -> grpc.StatusCode:
    channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    async with channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        try:
            await stub.ListConversations(
                pb.ListConversationsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_tls(database_url: str, pki: Pki) -> None:
    settings = settings_for(database_url, tls_cert_file=pki.files["server.pem"], tls_key_file=pki.files["server.key"])
    async with serving(settings) as (app, address):
        _, token = await app.deps.use_cases.api_keys.create("alice")
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        assert await list_over(address, trusted, token) == grpc.StatusCode.OK
        # A client that does not trust the CA, or speaks plaintext, gets no service.
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki.stranger_ca)
        assert await list_over(address, untrusted, token) == grpc.StatusCode.UNAVAILABLE
        assert await list_over(address, None, token) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(database_url: str, pki: Pki) -> None:
    settings = settings_for(
        database_url,
        tls_cert_file=pki.files["server.pem"],
        tls_key_file=pki.files["server.key"],
        tls_client_ca_file=pki.files["ca.pem"],
    )
    async with serving(settings) as (app, address):
        _, token = await app.deps.use_cases.api_keys.create("alice")

        def client(pem: Pem | None) -> grpc.ChannelCredentials:
            if pem is None:
                return grpc.ssl_channel_credentials(root_certificates=pki.ca)
            return grpc.ssl_channel_credentials(
                root_certificates=pki.ca, private_key=pem.key, certificate_chain=pem.cert
            )

        assert await list_over(address, client(pki.client), token) == grpc.StatusCode.OK
        assert await list_over(address, client(None), token) == grpc.StatusCode.UNAVAILABLE
        assert await list_over(address, client(pki.stranger), token) == grpc.StatusCode.UNAVAILABLE
        # mTLS authenticates the connection; the bearer token still names the user.
        assert await list_over(address, client(pki.client), "csk_0_bad") == grpc.StatusCode.UNAUTHENTICATED


def test_tls_settings_go_together(pki: Pki) -> None:
    with pytest.raises(ValueError, match="go together"):
        settings_for("sqlite+aiosqlite:///x.db", tls_cert_file=pki.files["server.pem"])
    with pytest.raises(ValueError, match="mTLS"):
        settings_for("sqlite+aiosqlite:///x.db", tls_client_ca_file=pki.files["ca.pem"])
