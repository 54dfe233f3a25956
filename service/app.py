"""Composition root: builds every dependency once, creates the server, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chat.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc
from service import audio, llm, telemetry
from service.auth.jwts import JwtVerifier, authenticator
from service.domain import Principal
from service.pagination import PageTokens
from service.personas import PersonaCatalog
from service.ports import Notifications, Provider, Synthesizer, Transcriber
from service.ratelimit.limits import UserLimits
from service.ratelimit.redis import RedisLimits
from service.ratelimit.replica import RateLimiter, ReplicaLimits
from service.rpc.admin_servicer import AdminServicer
from service.rpc.chat_servicer import ChatServicer
from service.rpc.interceptors import Guards, ServiceInterceptor
from service.settings import Settings
from service.startup import CannotStart
from service.storage import migrate
from service.storage.attachments import DatabaseAttachmentStore
from service.storage.database import Database
from service.storage.notifications import notifications_for
from service.storage.shared_secrets import shared_secret
from service.wiring import Options, UseCases, use_cases

logger = logging.getLogger(__name__)

CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
PAGE_TOKEN_SECRET = "page_tokens"  # its name in the database's shared secrets


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Dependencies:
    settings: Settings
    database: Database
    notifications: Notifications
    provider: Provider
    personas: PersonaCatalog
    use_cases: UseCases
    transcriber: Transcriber
    synthesizer: Synthesizer
    # --- security and observability
    authenticate: Callable[[str], Awaitable[Principal]] | None = None
    rate_limiter: UserLimits = field(default_factory=lambda: ReplicaLimits(RateLimiter(per_minute=0, max_streams=0)))
    metrics: telemetry.Metrics = field(default_factory=telemetry.noop_metrics)
    metrics_endpoint: telemetry.MetricsEndpoint | None = None
    page_tokens: PageTokens = field(default_factory=PageTokens)
    model_calls: telemetry.ModelCalls | None = None

    async def aclose(self) -> None:
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        await self.transcriber.aclose()
        await self.synthesizer.aclose()
        await self.provider.aclose()
        await self.notifications.close()
        await self.database.dispose()
        await self.rate_limiter.aclose()


async def page_token_secret(settings: Settings, database: Database) -> bytes:
    """CHAT_PAGE_TOKEN_SECRET, or else a random key made once and kept in the database: every replica on it
    shares it, it survives restarts, and unlike anything derived from configuration nobody can guess it."""
    if settings.page_token_secret is not None:
        return settings.page_token_secret.get_secret_value().encode()
    return await shared_secret(database, PAGE_TOKEN_SECRET)


def build(
    settings: Settings, *, provider: Provider | None = None, clock: Callable[[], datetime] = utc_now
) -> Dependencies:
    """Every long-lived object, built once. Tests pass their own provider; nothing is built at import."""
    database = Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_seconds,
    )
    notifications = notifications_for(settings.database_url)
    metrics_endpoint = _metrics_endpoint(settings) if settings.metrics_port else None
    metrics = telemetry.Metrics(metrics_endpoint.meter()) if metrics_endpoint else telemetry.noop_metrics()
    telemetry.instrument_libraries(database.engine.sync_engine)
    provider = provider or llm.build_provider(settings)
    model_calls = telemetry.ModelCalls(metrics)
    personas = PersonaCatalog.load(settings.personas_file)
    tokens = PageTokens()  # keyed in App.start, once the database can be read
    transcriber, synthesizer = audio.build_transcriber(settings), audio.build_synthesizer(settings)
    built = use_cases(
        database.unit_of_work,
        provider,
        clock=clock,
        personas=personas,
        page_tokens=tokens,
        notifications=notifications,
        # The database holds attachments' bytes; an object store would be another `ports.AttachmentStore` here.
        attachment_store=DatabaseAttachmentStore(database),
        transcriber=transcriber,
        synthesizer=synthesizer,
        options=Options.from_settings(settings),
        model_calls=model_calls,
    )
    jwts = JwtVerifier.from_files(
        secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        public_key_file=settings.jwt_public_key_file,
        jwks_file=settings.jwt_jwks_file,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
    )
    metrics.observe_flushes(lambda: built.replies.generations.commits)
    metrics.observe_model_streams(built.replies.generations.model_streams)
    return Dependencies(
        settings,
        database,
        notifications,
        provider,
        personas,
        built,
        transcriber,
        synthesizer,
        authenticate=authenticator(built.api_keys.authenticate, jwts),
        rate_limiter=user_limits(settings),
        metrics=metrics,
        metrics_endpoint=metrics_endpoint,
        page_tokens=tokens,
        model_calls=model_calls,
    )


def user_limits(settings: Settings) -> UserLimits:
    """Per replica, or shared by the replicas through Redis (with the replica's own as the fallback)."""
    local = RateLimiter(per_minute=settings.rate_limit_per_minute, max_streams=settings.max_concurrent_streams)
    if not settings.redis_url:
        return ReplicaLimits(local)
    return RedisLimits.connect(
        settings.redis_url,
        local,
        timeout=settings.redis_timeout_seconds,
        prefix=settings.redis_key_prefix,
        per_minute=settings.rate_limit_per_minute,
        max_streams=settings.max_concurrent_streams,
        stream_ttl=settings.redis_stream_ttl_seconds,
    )


class App:
    """A running replica: the gRPC server, health, and the reply manager's lifecycle."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.health = health.aio.HealthServicer()
        self.server = create_server(deps, self.health)
        self.port = 0

    async def start(self, address: str | None = None) -> int:
        """Check the database and take the port before starting anything (a failure then leaves nothing to
        undo), then serve. Raises `CannotStart` when the database or the port is not usable."""
        settings = self.deps.settings
        if settings.should_migrate:
            await asyncio.to_thread(migrate.upgrade, settings.database_url)
        else:
            await migrate.check(settings.database_url)
        self.deps.page_tokens.key(await page_token_secret(settings, self.deps.database))
        self.port = self._listen(address or settings.listen)
        await self.deps.notifications.start()
        await self.deps.use_cases.replies.start()
        await self.server.start()
        for service_name in ("", CHAT_SERVICE):
            await self.health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _listen(self, address: str) -> int:
        credentials = server_credentials(self.deps.settings)
        try:
            if credentials is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, credentials)
        except RuntimeError as error:  # grpc says only "Failed to bind"; the operating system says why
            raise cannot_listen(address) from error
        if not port:
            raise cannot_listen(address)
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (serving on for the drain period, so load balancers notice), then no new
        RPCs; replies in flight get `grace` seconds to finish and the rest end INTERRUPTED (their streams
        still get the final event before the server closes)."""
        settings = self.deps.settings
        grace = settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if settings.shutdown_drain_seconds:
            await asyncio.sleep(settings.shutdown_drain_seconds)
        await asyncio.gather(self.server.stop(grace + 2.0), self.deps.use_cases.replies.close(grace))
        await self.deps.use_cases.coaching.close()
        await self.deps.aclose()


def create_server(deps: Dependencies, health_servicer: health.aio.HealthServicer) -> grpc.aio.Server:
    settings = deps.settings
    server = grpc.aio.server(
        # One interceptor: tracing -> access log -> auth -> rate limit -> unparsable requests -> error map, as
        # steps of one wrapper (service/rpc/interceptors.py), so a streamed message passes one layer, not five.
        interceptors=[
            ServiceInterceptor(
                Guards(
                    authenticate=deps.authenticate or deps.use_cases.api_keys.authenticate,
                    limiter=deps.rate_limiter,
                    revocations=lambda: deps.use_cases.api_keys.revocations,
                ),
                deps.metrics,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.so_reuseport", int(settings.reuse_port)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            *_connection_age_options(settings),
        ],
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(
            deps.use_cases.conversations,
            deps.use_cases.replies,
            deps.use_cases.coaching,
            attachments=deps.use_cases.attachments,
            sharing=deps.use_cases.sharing,
            branches=deps.use_cases.branches,
            default_model=settings.resolved_model,
            link_to_generation=deps.model_calls.link_to_generation if deps.model_calls else lambda _: None,
        ),
        server,
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(deps.use_cases.api_keys), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CHAT_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; with a client CA, clients must present a certificate (mTLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """Behind L4 load balancing, a connection closed now and then makes its client reconnect (and re-resolve
    DNS), so new replicas get traffic; calls in progress get the shutdown grace to finish."""
    if not settings.max_connection_age_seconds:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_seconds * 1000)),
    ]


def _metrics_endpoint(settings: Settings) -> telemetry.MetricsEndpoint:
    host = settings.listen.rpartition(":")[0]
    try:
        return telemetry.MetricsEndpoint(host, settings.metrics_port)
    except OSError as error:
        raise CannotStart(
            f"cannot serve /metrics on {host}:{settings.metrics_port}: {error.strerror or error}",
            "choose another CHAT_METRICS_PORT, or stop the process using it",
        ) from error


def cannot_listen(address: str) -> CannotStart:
    return CannotStart(
        f"cannot listen on {address}: {_bind_failure(address)}",
        "choose another host:port with --listen or CHAT_LISTEN, or stop the process using it",
    )


def _bind_failure(address: str) -> str:
    """Why `address` cannot be bound, in the operating system's words (asked again with a plain socket)."""
    host, _, port = address.rpartition(":")
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as error:
        return f"the host does not resolve ({error})"
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(where)
            except OSError as error:
                return error.strerror or str(error)
    return "gRPC could not bind it"


async def serve(settings: Settings, *, on_listening: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. Raises `CannotStart` (having released
    whatever it had opened) when the database or a port is not usable."""
    shutdown_tracing = telemetry.configure_tracing()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        app = App(build(settings))
        try:
            port = await app.start()
        except BaseException:
            await app.deps.use_cases.replies.close(0)
            await app.deps.aclose()
            raise
    except BaseException:
        shutdown_tracing()
        raise
    host = settings.listen.rpartition(":")[0]
    logger.info(
        "serving",
        extra={
            "address": f"{host}:{port}",
            "provider": settings.llm_provider,
            "replica_id": settings.resolved_replica_id,
        },
    )
    on_listening(f"chat-service listening on {host}:{port}")
    await stop.wait()
    logger.info(
        "shutting down",
        extra={
            "grace_seconds": settings.shutdown_grace_seconds,
            "replies_in_flight": app.deps.use_cases.replies.in_flight,
        },
    )
    await app.stop()
    shutdown_tracing()
    logger.info("stopped")
