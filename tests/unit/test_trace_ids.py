"""Span and trace ids do not come from (or disturb) the `random` module's global state."""

from __future__ import annotations

import os
import random

from opentelemetry import trace

from service.telemetry import tracer_provider


def test_ids_neither_follow_nor_move_the_global_random_state() -> None:
    tracer = tracer_provider().get_tracer("test")

    def ids_after_seeding() -> tuple[int, int]:
        random.seed(1234)  # what hypothesis does around each example, and what an application may do
        state = random.getstate()
        with tracer.start_as_current_span("span") as span:
            context = span.get_span_context()
        assert random.getstate() == state, "making a span moved the global random state"
        return context.trace_id, context.span_id

    first, second = ids_after_seeding(), ids_after_seeding()
    assert first != second and all(first) and all(second)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_forked_child_makes_ids_of_its_own() -> None:
    tracer = tracer_provider().get_tracer("test")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its first span's ids to the parent, then out without running pytest's exit
        with tracer.start_as_current_span("span") as span:
            os.write(write, span.get_span_context().span_id.to_bytes(8))
        os._exit(0)
    os.close(write)
    with tracer.start_as_current_span("span") as span:
        mine = span.get_span_context().span_id
    assert os.waitpid(child, 0)[1] == 0
    theirs = int.from_bytes(os.read(read, 8))
    os.close(read)
    assert theirs != mine
