"""The coaching RPCs of ChatService (Coach, ListPersonas): convert, call the use case, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat.v1 import chat_pb2 as pb
from service.coaching.coach import Coaching
from service.coaching.events import Command
from service.rpc import coaching_convert
from service.rpc.context import current_principal
from service.rpc.handlers import Context


class CoachingMethods:
    """Mixed into `ChatServicer`: gRPC serves one servicer object per service."""

    _coaching: Coaching

    async def Coach(
        self, request_iterator: AsyncIterator[pb.CoachRequest], context: Context
    ) -> AsyncIterator[pb.CoachResponse]:
        async for event in self._coaching.coach(current_principal(), _commands(request_iterator)):
            yield coaching_convert.event(event)

    async def ListPersonas(self, request: pb.ListPersonasRequest, context: Context) -> pb.ListPersonasResponse:
        page = self._coaching.personas(request.page_size, request.page_token)
        return pb.ListPersonasResponse(
            personas=[coaching_convert.persona(p) for p in page.items], next_page_token=page.next_page_token
        )


async def _commands(requests: AsyncIterator[pb.CoachRequest]) -> AsyncIterator[Command]:
    async for request in requests:
        yield coaching_convert.command(request)
