"""The persona catalog: built-ins, a TOML file that adds or overrides, and precise errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.personas import PersonaCatalog, PersonaConfigError


def personas_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "personas.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(PersonaConfigError) as error:
        PersonaCatalog.load(path)
    return str(error.value)


def test_built_ins_include_english_buddy_and_more() -> None:
    catalog = PersonaCatalog.load()
    names = [p.name for p in catalog.all()]

    assert "english_buddy" in names
    assert len(names) >= 3
    assert names == sorted(names)
    buddy = catalog.get("english_buddy")
    assert buddy is not None
    assert buddy.display_name == "English Buddy"
    assert buddy.description
    assert buddy.instructions == buddy.instructions.strip()
    assert catalog.instructions("english_buddy") == buddy.instructions


def test_every_built_in_has_all_fields() -> None:
    for persona in PersonaCatalog.load().all():
        assert persona.display_name and persona.description and persona.instructions


def test_unknown_persona_has_no_instructions() -> None:
    catalog = PersonaCatalog.load()

    assert catalog.get("nobody") is None
    assert catalog.instructions("nobody") == ""
    assert catalog.instructions("") == ""


def test_a_file_adds_personas(tmp_path: Path) -> None:
    path = personas_file(
        tmp_path,
        """
        [personas.pirate]
        display_name = "Pirate"
        description = "Talks like a pirate."
        instructions = "  Answer like a pirate.  "
        """,
    )

    catalog = PersonaCatalog.load(path)

    pirate = catalog.get("pirate")
    assert pirate is not None
    assert (pirate.display_name, pirate.description, pirate.instructions) == (
        "Pirate",
        "Talks like a pirate.",
        "Answer like a pirate.",
    )
    assert catalog.get("english_buddy") is not None


def test_a_file_overrides_a_built_in_by_name(tmp_path: Path) -> None:
    path = personas_file(
        tmp_path,
        """
        [personas.english_buddy]
        display_name = "Custom Buddy"
        description = "Ours."
        instructions = "Be brief."
        """,
    )

    catalog = PersonaCatalog.load(path)

    assert catalog.instructions("english_buddy") == "Be brief."
    assert len(catalog.all()) == len(PersonaCatalog.load().all())


VALID_BODY = 'display_name = "X"\ndescription = "Y"\ninstructions = "Z"\n'


@pytest.mark.parametrize("key", ['"Pirate"', '"pi rate"', '"pirate!"', '"' + "x" * 65 + '"', '""', '"ünï"'])
def test_a_bad_persona_name_is_reported_with_file_and_name(tmp_path: Path, key: str) -> None:
    path = personas_file(tmp_path, f"[personas.{key}]\n{VALID_BODY}")

    message = load_error(path)

    name = key.strip('"')
    assert str(path) in message
    assert f"persona {name!r}" in message and "names use" in message


@pytest.mark.parametrize("missing", ["display_name", "description", "instructions"])
def test_a_missing_field_is_reported_with_file_persona_and_key(tmp_path: Path, missing: str) -> None:
    body = "\n".join(line for line in VALID_BODY.splitlines() if not line.startswith(missing))
    path = personas_file(tmp_path, f"[personas.pirate]\n{body}\n")

    message = load_error(path)

    assert str(path) in message and "'pirate'" in message and missing in message


def test_blank_instructions_are_reported(tmp_path: Path) -> None:
    path = personas_file(tmp_path, '[personas.pirate]\ndisplay_name = "X"\ndescription = "Y"\ninstructions = "  "\n')

    message = load_error(path)

    assert "'pirate'" in message and "instructions" in message


def test_non_string_field_is_reported(tmp_path: Path) -> None:
    path = personas_file(tmp_path, '[personas.pirate]\ndisplay_name = "X"\ndescription = "Y"\ninstructions = 3\n')

    assert "instructions" in load_error(path)


def test_unknown_keys_are_reported(tmp_path: Path) -> None:
    path = personas_file(tmp_path, f'[personas.pirate]\n{VALID_BODY}temperature = 0.2\ncolour = "red"\n')

    message = load_error(path)

    assert str(path) in message and "'pirate'" in message
    assert "colour" in message and "temperature" in message


def test_a_persona_that_is_not_a_table_is_reported(tmp_path: Path) -> None:
    path = personas_file(tmp_path, '[personas]\npirate = "arr"\n')

    message = load_error(path)

    assert str(path) in message and "'pirate'" in message and "table" in message


@pytest.mark.parametrize("text", ["personas = 3\n", "# nothing here\n", "[other]\nx = 1\n"])
def test_a_file_without_a_personas_table_is_reported(tmp_path: Path, text: str) -> None:
    path = personas_file(tmp_path, text)

    message = load_error(path)

    assert str(path) in message and "[personas.<name>]" in message


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = personas_file(tmp_path, "[personas.pirate\ndisplay_name = \n")

    assert str(path) in load_error(path)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    assert str(path) in load_error(path)
