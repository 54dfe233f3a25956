"""Settings, read once from `CHAT_*` environment variables (command-line flags override them)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderName = Literal["ollama", "openai", "local", "fake"]
SpeechProviderName = Literal["auto", "openai", "espeak", "none"]

DEFAULT_MODELS: dict[str, str] = {
    "ollama": "llama3.2",
    "openai": "default",
    "local": "smollm2-135m",
    "fake": "fake-echo",
}
DEFAULT_LLM_URLS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434",
    "openai": "http://127.0.0.1:8080/v1",
}


class Settings(BaseSettings):
    """Every field is settable as `CHAT_<FIELD>`; the README's configuration table lists them."""

    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", frozen=True)

    # --- serving
    listen: str = Field("127.0.0.1:50051", description="host:port to serve gRPC on")
    replica_id: str = Field("", max_length=150, description="this replica's lease owner id; default hostname:port")
    shutdown_grace_seconds: float = Field(10.0, gt=0, description="SIGTERM: time replies get to finish")
    shutdown_drain_seconds: float = Field(
        0.0, ge=0, description="SIGTERM: time serving on while health says NOT_SERVING, before refusing RPCs"
    )
    workers: int = Field(
        1, ge=1, le=64, description="serving processes on the listen port (SO_REUSEPORT), each a replica; Postgres"
    )
    reuse_port: bool = Field(False, description="share the listen port with other processes (set for workers)")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="the event loop: uvloop when installed (auto), or the standard one"
    )
    max_receive_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest request accepted")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    # --- storage
    database_url: str = Field("sqlite+aiosqlite:///./chat.db", description="SQLAlchemy async URL")
    auto_migrate: bool | None = Field(None, description="apply migrations on start; default on for SQLite")
    database_pool_size: int = Field(10, gt=0, description="Postgres connections per replica")
    database_pool_timeout_seconds: float = Field(
        30.0, gt=0, description="how long a request may wait for a pooled connection before UNAVAILABLE"
    )
    page_token_secret: SecretStr | None = Field(
        None, description="HMAC key for page tokens; default derived from the database URL"
    )

    # --- model provider
    llm_provider: ProviderName = Field("local", description="ollama | openai | local | fake")
    llm_url: str = Field("", description="provider base URL (ollama/openai); default per provider")
    llm_api_key: SecretStr | None = Field(None, description="bearer key for an OpenAI-compatible server")
    default_model: str = Field("", description="model for new conversations; default per provider")
    llm_timeout_seconds: float = Field(60.0, gt=0, description="provider connect/read timeout")
    llm_retry_attempts: int = Field(3, ge=1, description="tries before the first token when unreachable")
    llm_continue: bool = Field(
        False, description="openai: the server continues a final assistant message (vLLM, llama.cpp server)"
    )
    max_continuations: int = Field(
        2, ge=0, le=5, description="times a reply whose replica stopped is continued by another; 0 = never"
    )
    llm_max_streams: int = Field(
        1024, gt=0, description="model calls at once per replica; replies past it wait in line (logged, metered)"
    )
    max_reply_tokens: int = Field(512, gt=0, description="token limit per reply (asked of the model)")
    max_reply_chars: int = Field(
        100_000, gt=0, le=100_000, description="hard limit on a reply's length, whatever the model does"
    )
    history_token_budget: int = Field(3072, gt=0, description="tokens of history sent to the model")
    history_max_messages: int = Field(200, gt=0, description="newest messages considered for history")
    local_model_path: Path | None = Field(
        None, description="GGUF file for `local`; default: the bundled model CHAT_DEFAULT_MODEL names"
    )
    local_prompt_format: Literal["auto", "chat", "transcript"] = Field(
        "auto", description="how `local` writes prompts for a GGUF file: its chat template, or a plain transcript"
    )
    local_context_tokens: int = Field(4096, gt=0, description="context window of the local model")
    local_threads: int = Field(0, ge=0, description="llama.cpp threads; 0 = all cores")
    fake_tokens_per_second: float = Field(0.0, ge=0, description="fake provider pace; 0 = no delay")
    fake_reply_tokens: int = Field(64, ge=0, description="fake provider reply length in tokens")

    # --- replies
    max_message_bytes: int = Field(32 * 1024, gt=0, description="largest user message (UTF-8 bytes)")
    flush_interval_ms: int = Field(250, ge=10, le=250, description="partial reply flush period")
    lease_seconds: float = Field(10.0, gt=0, description="lease on a reply in flight, renewed on flush")

    # --- attachments
    max_attachment_bytes: int = Field(
        5 * 1024 * 1024, gt=0, le=64 * 1024 * 1024, description="largest attachment accepted by UploadAttachment"
    )

    # --- personas
    personas_file: Path | None = Field(None, description="TOML file adding/overriding personas")

    # --- coaching and speech
    coach_max_turns: int = Field(0, ge=0, description="default turn limit of a coaching session; 0 = none")
    coach_max_duration_seconds: float = Field(
        0.0, ge=0, description="default duration limit of a coaching session; 0 = none"
    )
    coach_classify_finish: bool = Field(
        True, description="ask the model whether an ambiguous turn asks to end a coaching session"
    )
    transcription_url: str = Field("", description="OpenAI-compatible base URL for /audio/transcriptions")
    transcription_model: str = Field("whisper-1", description="transcription model name")
    speech_provider: SpeechProviderName = Field("auto", description="auto | openai | espeak | none")
    speech_url: str = Field("", description="OpenAI-compatible base URL for /audio/speech")
    speech_model: str = Field("tts-1", description="speech model name (openai)")
    speech_voice: str = Field("", description="voice; default alloy (openai) or en (espeak)")
    audio_api_key: SecretStr | None = Field(None, description="bearer key for the audio servers")
    audio_timeout_seconds: float = Field(30.0, gt=0, description="transcription/speech timeout")
    max_audio_bytes: int = Field(3 * 1024 * 1024, gt=0, description="largest audio turn accepted")

    # --- security
    jwt_secret: SecretStr | None = Field(None, description="HS256 shared secret for JWT bearer tokens; unset = off")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key for RS256/ES256 JWTs")
    jwt_jwks_file: Path | None = Field(None, description="JWKS file (keys chosen by `kid`) for RS256/ES256 JWTs")
    jwt_issuer: str = Field("", description="required `iss` of JWTs; empty = not checked")
    jwt_audience: str = Field("", description="required `aud` of JWTs; empty = not checked")
    jwt_leeway_seconds: float = Field(30.0, ge=0, description="clock skew allowed on `exp`/`nbf`")
    rate_limit_per_minute: int = Field(600, ge=0, description="requests per user per minute per replica; 0 = off")
    max_concurrent_streams: int = Field(
        16, ge=0, description="streaming RPCs open at once per user per replica; 0 = off"
    )
    redis_url: str = Field(
        "", description="redis://host:port/db keeping the rate and stream limits for every replica; empty = per replica"
    )
    redis_key_prefix: str = Field("chat-service:", description="prefix of this deployment's keys in Redis")
    redis_timeout_seconds: float = Field(
        0.25, gt=0, description="longest wait for Redis before a check falls back to the replica's own limits"
    )
    redis_stream_ttl_seconds: float = Field(
        15.0, gt=0, description="the streams of a replica that died stop counting within this time"
    )
    tls_cert_file: Path | None = Field(None, description="PEM server certificate chain; set with the key for TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of the server certificate")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: when set, clients must present a certificate it signed (mTLS)"
    )

    # --- observability
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")

    # --- deployment
    max_connection_age_seconds: float = Field(
        0.0,
        ge=0,
        description="close client connections this old (GOAWAY; calls get the shutdown grace) so clients "
        "re-resolve and rebalance; 0 = never",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("CHAT_TLS_CERT_FILE and CHAT_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("CHAT_TLS_CLIENT_CA_FILE (mTLS) needs CHAT_TLS_CERT_FILE and CHAT_TLS_KEY_FILE")
        jwt_keys = [self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_file]
        if sum(k is not None for k in jwt_keys) > 1:
            raise ValueError("set one of CHAT_JWT_SECRET, CHAT_JWT_PUBLIC_KEY_FILE, CHAT_JWT_JWKS_FILE")
        return self

    @property
    def resolved_model(self) -> str:
        if not self.default_model and self.llm_provider == "local" and self.local_model_path is not None:
            return self.local_model_path.stem  # a GGUF file of one's own is named after it
        return self.default_model or DEFAULT_MODELS[self.llm_provider]

    @property
    def resolved_llm_url(self) -> str:
        return self.llm_url or DEFAULT_LLM_URLS.get(self.llm_provider, "")

    @property
    def resolved_replica_id(self) -> str:
        # Stable across restarts of one process slot, so a restarted replica can end its own orphans at once.
        return self.replica_id or f"{socket.gethostname()}:{self.listen.rpartition(':')[2]}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
