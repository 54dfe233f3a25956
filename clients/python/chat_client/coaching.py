"""The client side of the bidirectional Coach RPC: send turns, read the coach's events.

The coaching messages are looked up by name, so a client built from stubs without Coach still imports;
using it then raises Unimplemented, as a server without Coach does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from chat.v1 import chat_pb2 as pb
from chat_client.errors import Unimplemented, from_rpc_error


def _message_type(name: str) -> Any:
    found = getattr(pb, name, None)
    if found is None:
        raise Unimplemented(f"this client's stubs have no {name}: rebuild them with `make proto`")
    return found


class CoachSession:
    """One Coach stream. Iterate over it for `chat.v1.CoachResponse`s; `say` sends a learner turn.

    The server may end the stream on its own (a turn or time limit): `say` and `end` then send nothing and
    return False. That is not an error; the stream's last responses (the closing words, `session_ended`) and its
    status are still to be read, and reading is where a failure is raised."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def say(self, text: str) -> bool:
        """Send a learner turn; False when the server had already finished the stream."""
        turn = _message_type("CoachUserTurn")(text=text)
        return await self._send(_message_type("CoachRequest")(user_turn=turn))

    async def end(self) -> bool:
        """Ask the coach to end the session now; False when the server had already finished the stream."""
        return await self._send(_message_type("CoachRequest")(end=_message_type("CoachEnd")()))

    async def close(self) -> None:
        self._call.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def _write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def _send(self, request: Any) -> bool:
        # gRPC fails a write once the server has sent its status (INTERNAL "Internal error from Core" if it
        # has not been read yet, InvalidStateError if it has). The status itself says how the stream ended,
        # and reading delivers it after the responses sent before it.
        try:
            await self._call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError):
            return False
        return True


async def open_coach_session(
    stub: Any,
    metadata: tuple[tuple[str, str], ...],
    *,
    persona: str,
    conversation_id: str = "",
    session_id: str = "",
    max_turns: int = 0,
) -> CoachSession:
    start = _message_type("CoachStart")(
        persona=persona, conversation_id=conversation_id, session_id=session_id, max_turns=max_turns
    )
    coach = getattr(stub, "Coach", None)
    if coach is None:
        raise Unimplemented("this client's stubs have no Coach RPC: rebuild them with `make proto`")
    session = CoachSession(coach(metadata=metadata))
    await session._write(_message_type("CoachRequest")(start=start))
    return session
