"""TLS and mutual TLS over loopback, with certificates made by the test."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.app import App, build
from service.settings import Settings
from tests.integration.harness import settings_for


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from another CA
    files: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_key, ca_cert = make_ca("test ca")
    _, other_key, other_cert = make_ca("other ca")
    pki = Pki(
        ca,
        issue(ca_key, ca_cert, "localhost", server=True),
        issue(ca_key, ca_cert, "client", server=False),
        issue(other_key, other_cert, "stranger", server=False),
        {},
    )
    folder = tmp_path_factory.mktemp("pki")
    for name, data in (("ca.pem", ca.cert), ("server.pem", pki.server.cert), ("server.key", pki.server.key)):
        (folder / name).write_bytes(data)
        pki.files[name] = folder / name
    return pki


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
        _, token = await app.deps.api_keys.create("alice")
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        assert await list_over(address, trusted, token) == grpc.StatusCode.OK
        # A client that does not trust the CA, or speaks plaintext, gets no service.
        untrusted = grpc.ssl_channel_credentials(root_certificates=pki.stranger.cert)
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
        _, token = await app.deps.api_keys.create("alice")

        def client(pem: Pem | None) -> grpc.ChannelCredentials:
            if pem is None:
                return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
            return grpc.ssl_channel_credentials(
                root_certificates=pki.ca.cert, private_key=pem.key, certificate_chain=pem.cert
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
