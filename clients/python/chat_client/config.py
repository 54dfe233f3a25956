"""Where the client connects and how it authenticates: flags over environment over config file over defaults.

Environment: CHAT_CLIENT_ADDRESS, CHAT_CLIENT_API_KEY (or CHAT_CLIENT_JWT), CHAT_CLIENT_TLS, CHAT_CLIENT_CA_FILE,
CHAT_CLIENT_TIMEOUT, CHAT_CLIENT_CONFIG (the file's path): a prefix of their own, apart from the server's CHAT_*.
The config file is TOML with the same keys in lower case:

    address = "chat.example.com:443"
    api_key = "ck_..."
    tls = true
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from chat_client.client import DEFAULT_ADDRESS, DEFAULT_TIMEOUT

ENV_PREFIX = "CHAT_CLIENT_"


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chat" / "config.toml"


@dataclass(frozen=True)
class ClientConfig:
    address: str = DEFAULT_ADDRESS
    api_key: str = ""
    jwt: str = ""
    tls: bool = False
    ca_file: str = ""
    timeout: float = DEFAULT_TIMEOUT

    def client_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ChatClient / SyncChatClient."""
        return {
            "address": self.address,
            "api_key": self.api_key or None,
            "jwt": self.jwt or None,
            "tls": self.tls,
            "root_certificates": Path(self.ca_file).read_bytes() if self.ca_file else None,
            "timeout": self.timeout,
        }


class ConfigError(Exception):
    pass


def _coerce(name: str, value: Any) -> Any:
    if name == "tls":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if name == "timeout":
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"timeout must be a number of seconds, not {value!r}") from None
    return str(value)


def _known(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = {f.name for f in fields(ClientConfig)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
    return {name: _coerce(name, value) for name, value in values.items() if value not in (None, "")}


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    path: str | Path | None = None,
) -> ClientConfig:
    environ = os.environ if environ is None else environ
    config = ClientConfig()
    file = Path(path or environ.get("CHAT_CLIENT_CONFIG") or default_config_path())
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read {file}: {error}") from None
        config = replace(config, **_known(data, str(file)))
    from_env = {f.name: environ.get(f"{ENV_PREFIX}{f.name.upper()}") for f in fields(ClientConfig)}
    config = replace(config, **_known(from_env, "environment"))
    return replace(config, **_known(dict(flags or {}), "flags"))
