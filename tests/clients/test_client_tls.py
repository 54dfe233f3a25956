"""TLS: the client (and `chat --tls --ca-file`) against a server with a certificate from a private CA."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health

from chat_client import ChatClient, Unavailable
from chat_client.retry import NO_RETRY
from service.app import build, create_server
from tests.clients.terminal import chat_env, run_chat
from tests.integration.harness import settings_for


@dataclass
class TlsServer:
    address: str
    certificate: Path
    key: str


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "the TLS tests need the openssl command"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_server(sqlite_url: str, tmp_path: Path) -> AsyncIterator[TlsServer]:
    cert, key = self_signed(tmp_path)
    deps = build(settings_for(sqlite_url))
    server = create_server(deps, health.aio.HealthServicer())
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        _, secret = await deps.api_keys.create("alice")
        yield TlsServer(f"127.0.0.1:{port}", cert, secret)
    finally:
        await server.stop(0)
        await deps.aclose()


async def test_tls_trusts_only_the_given_roots(tls_server: TlsServer) -> None:
    roots = tls_server.certificate.read_bytes()
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
    code, out, err = await run_chat("--tls", "--ca-file", str(tls_server.certificate), "--json", "models", env=env)
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "fake-echo"
