"""Personas: named instructions a conversation (or a coaching session) can follow."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class PersonaConfigError(ValueError):
    """A personas file is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    display_name: str
    description: str
    instructions: str


class PersonaCatalog:
    """The built-in personas, plus those of an optional TOML file (which may override built-ins by name)."""

    def __init__(self, personas: Mapping[str, Persona]) -> None:
        self._personas = dict(sorted(personas.items()))

    @classmethod
    def load(cls, extra_file: Path | None = None) -> PersonaCatalog:
        builtin = files("service").joinpath("personas.toml").read_text(encoding="utf-8")
        personas = _parse(tomllib.loads(builtin), "built-in personas")
        if extra_file is not None:
            try:
                document = tomllib.loads(extra_file.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise PersonaConfigError(f"{extra_file}: {error}") from error
            personas.update(_parse(document, str(extra_file)))
        return cls(personas)

    def get(self, name: str) -> Persona | None:
        return self._personas.get(name)

    def all(self) -> list[Persona]:
        return list(self._personas.values())

    def instructions(self, name: str) -> str:
        persona = self._personas.get(name)
        return persona.instructions if persona else ""


def _parse(document: Mapping[str, Any], source: str) -> dict[str, Persona]:
    table = document.get("personas")
    if not isinstance(table, dict):
        raise PersonaConfigError(f"{source}: expected a [personas.<name>] table")
    return {name: _persona(name, body, source) for name, body in table.items()}


def _persona(name: str, body: Any, source: str) -> Persona:
    where = f"{source}: persona {name!r}"
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise PersonaConfigError(f"{where}: names use a-z, 0-9, '_' and '-' (at most 64)")
    if not isinstance(body, dict):
        raise PersonaConfigError(f"{where}: expected a table")
    fields = {}
    for key in ("display_name", "description", "instructions"):
        value = body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PersonaConfigError(f"{where}: '{key}' must be a non-empty string")
        fields[key] = value.strip()
    unknown = set(body) - fields.keys()
    if unknown:
        raise PersonaConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return Persona(name=name, **fields)
