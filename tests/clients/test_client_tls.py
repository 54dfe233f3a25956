"""TLS: the client (and `chat --tls --ca-file`) against a server with a certificate from a private CA (trustme)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health

from chat_client import ChatClient, Unavailable
from chat_client.retry import NO_RETRY
from service.app import build, create_server
from tests.clients.terminal import chat_env, run_chat
from tests.integration.harness import settings_for


@dataclass
class TlsServer:
    address: str
    ca_file: Path  # the CA that issued the server's certificate
    key: str


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA's certificate, and a certificate and key it issued for 127.0.0.1."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(paths[0])
    issued.cert_chain_pems[0].write_to_path(paths[1])
    issued.private_key_pem.write_to_path(paths[2])
    return paths


@pytest.fixture
async def tls_server(sqlite_url: str, tmp_path: Path) -> AsyncIterator[TlsServer]:
    ca, cert, key = certificates(tmp_path)
    deps = build(settings_for(sqlite_url))
    server = create_server(deps, health.aio.HealthServicer())
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        _, secret = await deps.use_cases.api_keys.create("alice")
        yield TlsServer(f"127.0.0.1:{port}", ca, secret)
    finally:
        await server.stop(0)
        await deps.aclose()


async def test_tls_trusts_only_the_given_roots(tls_server: TlsServer) -> None:
    roots = tls_server.ca_file.read_bytes()
    async with ChatClient(tls_server.address, api_key=tls_server.key, tls=True, root_certificates=roots) as client:
        assert (await client.list_models()).models[0].name == "fake-echo"
    async with ChatClient(tls_server.address, api_key=tls_server.key, tls=True, retry=NO_RETRY) as untrusting:
        with pytest.raises(Unavailable):
            await untrusting.list_models()
    async with ChatClient(tls_server.address, api_key=tls_server.key, retry=NO_RETRY) as plaintext:
        with pytest.raises(Unavailable):
            await plaintext.list_models()


async def test_cli_over_tls(tls_server: TlsServer, tmp_path: Path) -> None:
    env = chat_env(tls_server.address, tls_server.key, tmp_path)
    code, out, err = await run_chat("--tls", "--ca-file", str(tls_server.ca_file), "--json", "models", env=env)
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "fake-echo"
