"""CoachSession against a real server: a turn sent on a stream the server has finished is not an error; the
stream's last responses and status are still read."""

from __future__ import annotations

from chat_client import ChatClient
from tests.clients.conftest import COACH, FinishedRpcs
from tests.integration.harness import Replica


async def test_a_turn_after_the_server_finished_is_no_error_and_the_ending_is_still_read(
    server: Replica, finished_rpcs: FinishedRpcs
) -> None:
    async with ChatClient(server.address, api_key=await server.key("alice")) as client:
        session = await client.coach("english_buddy", max_turns=1)
        responses = aiter(session)
        assert (await anext(responses)).WhichOneof("response") == "session_started"
        assert await session.say("Hi, I goed to school.") is True
        await finished_rpcs.wait(COACH)  # one turn was the limit: the server wrapped up and finished

        # Not an INTERNAL error. (False once gRPC has the server's status; True, the write going nowhere, if
        # it does not yet: either way the responses and status are still to be read.)
        await session.say("And then?")
        kinds = [response.WhichOneof("response") async for response in responses]
        assert kinds[0] == "delta" and kinds.count("turn_completed") == 1 and kinds[-1] == "session_ended"

        assert await session.end() is False  # the stream was read to its end: nothing can be sent
