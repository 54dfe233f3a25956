"""Malformed request bytes for every method of ChatService and AdminService, through a raw channel.

The methods come from the service descriptors, so a new one is fuzzed without a change here. Each gets
hand-made malformations of its request type (wire types, varints that never end, lengths far past the data,
strings that are not UTF-8, in sub-messages too; for request streams also after a good first message) and
hypothesis' damaged messages and noise, with and without credentials. Every call must end with a proper
status (never UNKNOWN, INTERNAL or a hang), the one the server logged in its access log, and the server must
stay healthy.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.v1 import admin_pb2 as apb
from chat.v1 import chat_pb2 as pb
from tests.integration.harness import running_replica, settings_for
from tests.integration.hostile import (
    CALL_TIMEOUT,
    CLIENT_WRITE_RACE,
    AccessLog,
    LoopThread,
    Metadata,
    access_log,
    send,
)
from tests.integration.protobuf_strategies import damaged, malformed

pytestmark = pytest.mark.timeout(60)
logger = logging.getLogger(__name__)
CHAT = pb.DESCRIPTOR.services_by_name["ChatService"]
ADMIN = apb.DESCRIPTOR.services_by_name["AdminService"]
METHODS = [*CHAT.methods, *ADMIN.methods]
NEVER = {"UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"}
EXAMPLES = 30  # hypothesis examples per method, on top of the hand-made cases
# A first message that keeps a request stream open, so the garbage after it is read mid-stream.
OPENING = {"Coach": pb.CoachRequest(start=pb.CoachStart(persona="english_buddy")).SerializeToString()}

Check = Callable[[MethodDescriptor, Sequence[bytes], bool], None]


def checker(runner: LoopThread, channel: grpc.aio.Channel, log: AccessLog, callers: dict[str, Metadata]) -> Check:
    """Sends one request (stream) and checks how it ended, against the access log too."""
    logged = len(log.entries)

    def check(method: MethodDescriptor, payloads: Sequence[bytes], authenticated: bool) -> None:
        nonlocal logged
        caller = callers[method.containing_service.name] if authenticated else ()
        code, details = runner.run(send(channel, method, payloads, caller), timeout=CALL_TIMEOUT + 10)
        logged += 1
        entry = log.wait_for(logged)[logged - 1]
        case = (method.name, payloads, authenticated, code, details)
        assert entry.method == f"/{method.containing_service.full_name}/{method.name}", case
        assert entry.code not in NEVER, case
        if not (method.client_streaming and (code, details) == CLIENT_WRITE_RACE):
            assert code.name == entry.code, case  # the client saw what the server sent
        if not authenticated:
            assert entry.code == "UNAUTHENTICATED", case

    return check


async def serving(channel: grpc.aio.Channel) -> int:
    check = health_pb2_grpc.HealthStub(channel).Check
    return (await check(health_pb2.HealthCheckRequest(service=CHAT.full_name))).status


def test_every_method_answers_malformed_bytes_with_a_proper_status(database_url: str) -> None:
    runner = LoopThread()
    replica_context = running_replica(
        settings_for(database_url, rate_limit_per_minute=0, max_concurrent_streams=0, speech_provider="none")
    )
    with access_log() as log:
        replica = runner.run(replica_context.__aenter__())
        try:
            alice = runner.run(replica.auth("alice"))
            admin = (("authorization", f"Bearer {runner.run(replica.key('root', admin=True))}"),)
            cid = runner.run(replica.conversation("alice")).conversation_id
            log.wait_for(1)
            named = {"id": st.just(cid), "persona": st.just("english_buddy"), "model": st.just("fake-echo")}
            check = checker(runner, replica.channel, log, {CHAT.name: alice, ADMIN.name: admin})
            cases: Counter[str] = Counter()

            def fuzz(method: MethodDescriptor) -> None:
                opening = [OPENING.get(method.name, b"")] if method.client_streaming else []
                for payload in malformed(method.input_type):
                    check(method, [payload], True)
                    cases[method.name] += 1
                    if opening:
                        check(method, [*opening, payload], True)
                        cases[method.name] += 1
                check(method, [b"\xff\xff\xff"], False)

                @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                @given(data=st.data())
                def damaged_requests(data: st.DataObject) -> None:
                    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
                    payloads = [data.draw(damaged(method.input_type, named), label="bytes") for _ in range(count)]
                    authenticated = data.draw(st.integers(0, 7), label="caller") > 0
                    check(method, payloads, authenticated)
                    cases[method.name] += 1

                damaged_requests()

            for method in METHODS:
                fuzz(method)

            # Still healthy: serving, and a well-formed request works.
            assert runner.run(serving(replica.channel)) == health_pb2.HealthCheckResponse.SERVING
            runner.run(replica.conversation("alice"))
            assert set(cases) == {m.name for m in METHODS}
            logger.info("cases run per method: %s", dict(cases))
        finally:
            runner.run(replica_context.__aexit__(None, None, None))
            runner.close()
