"""Driving a Coach stream turn by turn from a test: write a request, read until an expected response."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc

READ_TIMEOUT = 15.0


def start(**fields: Any) -> pb.CoachRequest:
    return pb.CoachRequest(start=pb.CoachStart(**fields))


def turn(text: str) -> pb.CoachRequest:
    return pb.CoachRequest(user_turn=pb.CoachUserTurn(text=text))


def audio_turn(data: bytes, mime_type: str = "audio/wav") -> pb.CoachRequest:
    return pb.CoachRequest(user_turn=pb.CoachUserTurn(audio=pb.AudioClip(data=data, mime_type=mime_type)))


def end() -> pb.CoachRequest:
    return pb.CoachRequest(end=pb.CoachEnd())


def kind(response: pb.CoachResponse) -> str:
    return str(response.WhichOneof("response"))


@dataclass
class Exchange:
    """The responses to one request: the deltas' text, and the response that closed it."""

    deltas: list[pb.ReplyDelta] = field(default_factory=list)
    last: pb.CoachResponse | None = None

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)


class CoachCall:
    def __init__(self, stub: chat_pb2_grpc.ChatServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.call = stub.Coach(metadata=metadata)

    async def send(self, request: pb.CoachRequest) -> None:
        await self.call.write(request)

    async def read_until(self, *kinds: str) -> Exchange:
        """Read deltas until a response of one of `kinds`; any other response fails the test."""
        exchange = Exchange()
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                response = await self.call.read()
                assert response is not grpc.aio.EOF, f"the stream ended before {kinds}"
                if kind(response) == "delta":
                    exchange.deltas.append(response.delta)
                    continue
                assert kind(response) in kinds, f"expected {kinds}, got {response}"
                exchange.last = response
                return exchange

    async def ask(self, request: pb.CoachRequest, *kinds: str) -> Exchange:
        await self.send(request)
        return await self.read_until(*kinds)

    async def begin(self, **fields: Any) -> pb.CoachSessionStarted:
        exchange = await self.ask(start(**fields), "session_started")
        assert exchange.last is not None
        return exchange.last.session_started

    async def ended(self) -> None:
        """The server closed the stream (OK) after its last response."""
        async with asyncio.timeout(READ_TIMEOUT):
            assert await self.call.read() is grpc.aio.EOF
            assert await self.call.code() is grpc.StatusCode.OK

    async def error(self) -> grpc.aio.AioRpcError:
        """Read until the call fails; return its error."""
        async with asyncio.timeout(READ_TIMEOUT):
            try:
                while await self.call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as failure:
                return failure
        raise AssertionError(f"the call ended with {await self.call.code()}, not an error")
