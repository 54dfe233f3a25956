"""No domain error, whatever a caller's values in it, makes a status too big to reach the client.

A status travels in response metadata: over the client's limit (8 KiB by default) the client sees
RESOURCE_EXHAUSTED instead of the real code. A failed reply also keeps its error's message in a 500-character
column. Every error class is checked (a new one must be added to MAKERS), with huge values of every kind.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from service import domain
from service.domain import DomainError, FieldViolation
from service.rpc.errors import to_status

BUDGET = 4 * 1024  # bytes of response metadata: half the client's default limit
ERROR_MESSAGE_COLUMN = 500  # messages.error_message


def _every_error_class(root: type[DomainError] = DomainError) -> set[type[DomainError]]:
    found = {root}
    for sub in root.__subclasses__():
        found |= _every_error_class(sub)
    return found


def _simple(cls: type[DomainError]) -> Callable[[str], DomainError]:
    return lambda value: cls(f"the value {value!r} is wrong", metadata={"value": value, value[:50]: value})


MAKERS: dict[type[DomainError], Callable[[str], DomainError]] = {
    cls: _simple(cls)
    for cls in _every_error_class()
    if cls not in (domain.InvalidArgument, domain.ResourceExhausted, domain.ModelNotFound)
}
MAKERS[domain.InvalidArgument] = lambda value: domain.InvalidArgument(
    *(FieldViolation(value[: 10 * n], f"{value!r} is wrong") for n in range(1, 40))
)
MAKERS[domain.ResourceExhausted] = lambda value: domain.ResourceExhausted(f"{value!r} is over", retry_after=1.0)
MAKERS[domain.ModelNotFound] = domain.ModelNotFound


def test_every_error_class_is_checked() -> None:
    assert set(MAKERS) == _every_error_class()


def metadata_size(error: DomainError) -> int:
    """Bytes of metadata the status takes: the percent-encoded message, and the base64 details."""
    status = to_status(error)
    message = status.details.encode()
    encoded = sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in message)
    trailers = sum(len(key) + 4 * -(-len(value) // 3) for key, value in status.trailing_metadata)
    return encoded + trailers


huge = st.builds(
    lambda char, size: char * size,
    st.one_of(st.sampled_from("p%\x01\x00é😀\U000e0001"), st.characters()),
    st.integers(0, 10_000),
)


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from(sorted(MAKERS, key=lambda c: c.__name__)), value=huge)
def test_an_error_stays_small_whatever_it_repeats(cls: type[DomainError], value: str) -> None:
    error = MAKERS[cls](value)
    assert metadata_size(error) <= BUDGET
    assert len(error.message) <= ERROR_MESSAGE_COLUMN
    assert all(len(v) <= domain.ECHO_CHARS for v in error.metadata.values())


def test_a_long_value_is_cut_with_an_ellipsis() -> None:
    error = domain.ModelNotFound("m" * 1000)
    assert error.metadata["model"] == "m" * (domain.ECHO_CHARS - 1) + "…"
    assert "m" * domain.ECHO_CHARS not in error.message and "…" in error.message
    assert domain.ModelNotFound("short").metadata["model"] == "short"
