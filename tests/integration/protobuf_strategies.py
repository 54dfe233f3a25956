"""Hypothesis strategies for protobuf messages, built from their descriptors: arbitrary field values (huge
strings and extreme numbers included), and bytes that are almost, but not quite, a serialized message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),  # open enums: unknown numbers included
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# Lengths just past the service's column sizes and limits, and far past them.
HUGE_LENGTHS = (65, 129, 201, 501, 8000)
# Durations and timestamps at and past the edges: google.protobuf's range (about ±10,000 years), Python's
# timedelta range (about ±2.7 million years), int64, and nanos out of range or of the other sign.
EDGE_SECONDS = (0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_001, 86_399_999_999_999, 2**62)
EDGE_SECONDS += (2**63 - 1, -(2**63), 253_402_300_800, -62_135_596_801)
EDGE_NANOS = (0, 1, -1, 999_999_999, 1_000_000_000, -1_000_000_000, 2**31 - 1, -(2**31))
TIME_TYPES = ("google.protobuf.Duration", "google.protobuf.Timestamp")
Named = Mapping[str, st.SearchStrategy[str]]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def huge_text() -> st.SearchStrategy[str]:
    """Long strings, cheaply: one character repeated (ASCII, multi-byte, astral, control, `%`)."""
    characters = st.one_of(st.sampled_from("p%\x01é😀"), st.characters(codec="utf-8"))
    return st.builds(lambda char, size: char * size, characters, st.sampled_from(HUGE_LENGTHS))


def scalar(field: FieldDescriptor, named: Named) -> st.SearchStrategy[Any]:
    """Values for one field; `named` offers values worth aiming at by field name (real ids, personas...), and
    by "id" for every `*_id` field."""
    if field.type == FieldDescriptor.TYPE_STRING:
        text = st.one_of(st.text(max_size=300), huge_text())
        known = named.get(field.name)
        if known is None and field.name.endswith("_id"):
            known = named.get("id")
        if known is not None:  # half the time: to get past validation, and find what lies behind it
            text = st.one_of(known, st.one_of(text, st.just("")))
        if field.name == "content":
            return st.one_of(text, st.text(min_size=1, max_size=40), st.just("x" * 40_000))
        return text
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64
        )
    if field.type == FieldDescriptor.TYPE_ENUM:  # the defined values often, any number sometimes
        defined = st.sampled_from([value.number for value in field.enum_type.values])
        return st.one_of(defined, defined, st.integers(*INT_RANGES[field.type]))
    low, high = INT_RANGES[field.type]
    edges = EDGE_SECONDS if field.name == "seconds" else EDGE_NANOS if field.name == "nanos" else (low, high)
    return st.one_of(st.integers(low, high), st.integers(-3, 300), st.sampled_from(edges))


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, named: Named, depth: int = 0) -> Message:
    """A message with arbitrary values in a random subset of its fields (at most one member of each oneof)."""
    message = message_class(descriptor)()
    chosen = {oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in descriptor.oneofs}
    time_value = descriptor.full_name in TIME_TYPES
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] is not field:
            continue
        if not time_value and not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            sub = message_of(field.message_type, named, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(sub, max_size=3)))
            else:
                getattr(message, field.name).CopyFrom(draw(sub))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(scalar(field, named), max_size=5)))
        else:
            setattr(message, field.name, draw(scalar(field, named)))
    return message


@st.composite
def damaged(draw: st.DrawFn, descriptor: Descriptor, named: Named) -> bytes:
    """The bytes of a real message, then cut, overwritten, or with bytes inserted or appended; or pure noise."""
    data = draw(message_of(descriptor, named)).SerializeToString()
    how = draw(st.sampled_from(("noise", "cut", "overwrite", "insert", "append")))
    if how == "noise" or not data:
        return draw(st.binary(min_size=1, max_size=64))
    at = draw(st.integers(0, len(data) - 1))
    extra = draw(st.binary(min_size=1, max_size=8))
    if how == "cut":
        return data[:at]
    if how == "overwrite":
        return data[:at] + extra + data[at + len(extra) :]
    if how == "insert":
        return data[:at] + extra + data[at:]
    return data + extra


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers travel as their 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
NOT_UTF8 = b"\xff\xfe\xc3\x28\xed\xa0\x80"  # invalid bytes, a broken 2-byte sequence, an encoded surrogate


def malformed(descriptor: Descriptor, depth: int = 0) -> list[bytes]:
    """Hand-made malformations of one message type: for each field a wrong wire type, a varint that never
    ends, a length far past the data, a string that is not UTF-8, and the same inside its sub-messages."""
    cases = (
        []
        if depth
        else [
            b"\x80",  # a key whose varint never ends
            b"\xff" * 11,  # a varint longer than ten bytes
            key(1, 6),  # wire types 6 and 7 do not exist
            key(1, 7),
            key(1, EGROUP),  # the end of a group that never started
            key(1, SGROUP) + b"\x08\x01",  # a group that never ends
            varint(0),  # field number 0
            key(2**29, VARINT) + b"\x01",  # a field number past the largest
        ]
    )
    for field in descriptor.fields:
        number = field.number
        cases += [
            key(number, VARINT) + b"\x80\x80",
            key(number, LEN) + varint(2**31) + b"x",
            key(number, LEN) + varint(2**64 - 1),
            key(number, I64) + b"\x01\x02",
            key(number, I32) + b"\x01",
            key(number, VARINT if field.type in (field.TYPE_STRING, field.TYPE_BYTES, field.TYPE_MESSAGE) else LEN)
            + b"\x01\x00",
        ]
        if field.type == FieldDescriptor.TYPE_STRING:
            cases.append(key(number, LEN) + varint(len(NOT_UTF8)) + NOT_UTF8)
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            for inner in malformed(field.message_type, depth + 1):
                cases.append(key(number, LEN) + varint(len(inner)) + inner)
    return cases
