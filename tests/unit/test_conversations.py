"""Conversation use cases (`Conversations`) against the in-memory storage and fake providers."""

from __future__ import annotations

import asyncio
from typing import Protocol

import pytest

from service.chat import DEFAULT_TITLE, ConversationFields, Conversations
from service.domain import (
    Conversation,
    InvalidArgument,
    MessageStatus,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    PermissionDenied,
    Principal,
)
from service.llm.fake import MODEL_NAME, FakeProvider
from service.ports import Provider
from service.wiring import UseCases
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.wired import Wire

ALICE = Principal("alice")
BOB = Principal("bob")
WAIT = 5.0


class MakeService(Protocol):
    def __call__(self, provider: Provider | None = None) -> UseCases: ...


@pytest.fixture
def make_service(wired: Wire) -> MakeService:
    """Wires `Conversations` as `service.app.build` does; the default provider is the FakeProvider."""

    def make(provider: Provider | None = None) -> UseCases:
        return wired(provider or FakeProvider(), default_model=MODEL_NAME)

    return make


@pytest.fixture
def conversations(make_service: MakeService) -> Conversations:
    return make_service().conversations


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


async def create(conversations: Conversations, principal: Principal = ALICE, **fields: str) -> Conversation:
    return await conversations.create(principal, ConversationFields(**fields))


# ---------------------------------------------------------------------------------------------- create


async def test_create_fills_in_defaults(conversations: Conversations, storage: FakeStorage, clock: FakeClock) -> None:
    conversation = await create(conversations)

    assert (conversation.owner, conversation.title, conversation.model) == ("alice", DEFAULT_TITLE, MODEL_NAME)
    assert (conversation.persona, conversation.system_prompt) == ("", "")
    assert conversation.create_time == conversation.update_time == clock()
    assert storage.conversation(conversation.id) == conversation


async def test_create_keeps_the_fields_given(conversations: Conversations) -> None:
    conversation = await create(conversations, title="Trip", model=MODEL_NAME, persona="english_buddy")

    assert (conversation.title, conversation.model, conversation.persona) == ("Trip", MODEL_NAME, "english_buddy")


async def test_create_accepts_a_model_name_without_its_latest_tag(make_service: MakeService) -> None:
    conversations = make_service(ScriptedProvider(models=["llama3:latest"])).conversations

    conversation = await create(conversations, model="llama3")

    assert conversation.model == "llama3"


async def test_a_persona_and_a_system_prompt_are_exclusive(conversations: Conversations, storage: FakeStorage) -> None:
    with pytest.raises(InvalidArgument) as error:
        await create(conversations, persona="english_buddy", system_prompt="Be terse.")

    assert violated_field(error) == "persona"
    assert storage.state.conversations == {}


async def test_an_unknown_persona_is_invalid(conversations: Conversations) -> None:
    with pytest.raises(InvalidArgument) as error:
        await create(conversations, persona="nobody")

    assert violated_field(error) == "persona"


async def test_a_title_of_200_characters_is_the_limit(conversations: Conversations) -> None:
    assert (await create(conversations, title="t" * 200)).title == "t" * 200

    with pytest.raises(InvalidArgument) as error:
        await create(conversations, title="t" * 201)
    assert violated_field(error) == "title"


@pytest.mark.parametrize("system_prompt", ["x" * 1001, "nul\x00"])
async def test_an_invalid_system_prompt_is_rejected(conversations: Conversations, system_prompt: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await create(conversations, system_prompt=system_prompt)

    assert violated_field(error) == "system_prompt"


async def test_an_unknown_model_is_model_not_found(conversations: Conversations, storage: FakeStorage) -> None:
    with pytest.raises(ModelNotFound) as error:
        await create(conversations, model="no-such-model")

    assert error.value.model == "no-such-model"
    assert storage.state.conversations == {}


async def test_a_model_is_accepted_when_the_provider_cannot_be_reached(
    make_service: MakeService,
) -> None:
    provider = ScriptedProvider(list_models_error=ModelUnavailable("connection refused"))
    conversations = make_service(provider).conversations

    conversation = await create(conversations, model="anything")

    assert conversation.model == "anything"


# ---------------------------------------------------------------------------------------------- get


async def test_get_returns_the_owners_conversation(conversations: Conversations) -> None:
    conversation = await create(conversations)

    assert await conversations.get(ALICE, conversation.id) == conversation
    assert await conversations.get(ALICE, conversation.id.upper()) == conversation


async def test_get_distinguishes_missing_from_someone_elses(conversations: Conversations) -> None:
    bobs = await create(conversations, BOB)

    with pytest.raises(PermissionDenied):
        await conversations.get(ALICE, bobs.id)
    with pytest.raises(NotFound):
        await conversations.get(ALICE, "00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidArgument) as error:
        await conversations.get(ALICE, "nope")
    assert violated_field(error) == "conversation_id"


# ---------------------------------------------------------------------------------------------- update


async def test_update_without_a_mask_changes_the_fields_that_are_set(
    conversations: Conversations, storage: FakeStorage, clock: FakeClock
) -> None:
    original = await create(conversations, title="Old", persona="english_buddy")
    later = clock.advance(10)

    updated = await conversations.update(ALICE, original.id, ConversationFields(title="New"), ())

    assert (updated.title, updated.persona, updated.model) == ("New", "english_buddy", MODEL_NAME)
    assert (updated.create_time, updated.update_time) == (original.create_time, later)
    assert storage.conversation(original.id) == updated


async def test_update_with_a_mask_changes_only_the_masked_fields(conversations: Conversations) -> None:
    original = await create(conversations, title="Old")

    updated = await conversations.update(
        ALICE, original.id, ConversationFields(title="New", model="not-checked-either"), {"title"}
    )

    assert (updated.title, updated.model) == ("New", MODEL_NAME)


async def test_a_masked_empty_field_is_cleared_or_reset_to_its_default(conversations: Conversations) -> None:
    original = await create(conversations, title="Old", persona="english_buddy")

    updated = await conversations.update(ALICE, original.id, ConversationFields(), {"title", "model", "persona"})

    assert (updated.title, updated.model, updated.persona) == (DEFAULT_TITLE, MODEL_NAME, "")


@pytest.mark.parametrize("path", ["owner", "create_time", "id", "title.text"])
async def test_an_unknown_mask_path_is_invalid(conversations: Conversations, path: str) -> None:
    original = await create(conversations)

    with pytest.raises(InvalidArgument) as error:
        await conversations.update(ALICE, original.id, ConversationFields(title="x"), {"title", path})

    assert violated_field(error) == "update_mask"


async def test_update_validates_the_new_values_naming_the_nested_field(conversations: Conversations) -> None:
    original = await create(conversations)

    with pytest.raises(InvalidArgument) as error:
        await conversations.update(ALICE, original.id, ConversationFields(title="t" * 201), ())
    assert violated_field(error) == "conversation.title"
    with pytest.raises(InvalidArgument) as error:
        await conversations.update(ALICE, original.id, ConversationFields(persona="nobody"), ())
    assert violated_field(error) == "conversation.persona"
    with pytest.raises(ModelNotFound):
        await conversations.update(ALICE, original.id, ConversationFields(model="no-such-model"), ())


async def test_update_refuses_a_persona_on_a_conversation_with_a_system_prompt(
    conversations: Conversations, storage: FakeStorage
) -> None:
    original = await create(conversations, system_prompt="Be terse.")

    with pytest.raises(InvalidArgument) as error:
        await conversations.update(ALICE, original.id, ConversationFields(persona="english_buddy"), ())

    assert violated_field(error) == "conversation.persona"
    assert storage.conversation(original.id) == original


async def test_update_can_swap_a_system_prompt_for_a_persona_in_one_call(conversations: Conversations) -> None:
    original = await create(conversations, system_prompt="Be terse.")

    updated = await conversations.update(
        ALICE, original.id, ConversationFields(persona="english_buddy"), {"persona", "system_prompt"}
    )

    assert (updated.persona, updated.system_prompt) == ("english_buddy", "")


async def test_update_of_someone_elses_or_a_missing_conversation_is_refused(
    conversations: Conversations, storage: FakeStorage
) -> None:
    bobs = await create(conversations, BOB, title="Bob's")

    with pytest.raises(PermissionDenied):
        await conversations.update(ALICE, bobs.id, ConversationFields(title="mine now"), ())
    with pytest.raises(NotFound):
        await conversations.update(ALICE, "00000000-0000-4000-8000-000000000000", ConversationFields(title="x"), ())
    assert storage.conversation(bobs.id) == bobs


# ---------------------------------------------------------------------------------------------- list


async def created_at_successive_times(conversations: Conversations, clock: FakeClock, count: int) -> list[Conversation]:
    created = []
    for index in range(count):
        clock.advance(1)
        created.append(await create(conversations, title=f"c{index}"))
    return created


async def test_list_pages_newest_updated_first(conversations: Conversations, clock: FakeClock) -> None:
    c0, c1, c2 = await created_at_successive_times(conversations, clock, 3)

    first = await conversations.list(ALICE, 2, "")
    second = await conversations.list(ALICE, 2, first.next_page_token)

    assert [c.id for c in first.items] == [c2.id, c1.id]
    assert first.next_page_token
    assert [c.id for c in second.items] == [c0.id]
    assert second.next_page_token == ""


async def test_an_updated_conversation_moves_to_the_front(conversations: Conversations, clock: FakeClock) -> None:
    c0, c1, c2 = await created_at_successive_times(conversations, clock, 3)
    clock.advance(1)
    await conversations.update(ALICE, c0.id, ConversationFields(title="bumped"), ())

    page = await conversations.list(ALICE, 0, "")

    assert [c.id for c in page.items] == [c0.id, c2.id, c1.id]


async def test_list_pages_through_conversations_with_equal_update_times(conversations: Conversations) -> None:
    created = [await create(conversations) for _ in range(5)]  # the clock stands still

    seen = []
    token = ""
    for _ in range(5):
        page = await conversations.list(ALICE, 2, token)
        seen.extend(c.id for c in page.items)
        token = page.next_page_token
        if not token:
            break

    assert seen == sorted((c.id for c in created), reverse=True)


async def test_list_shows_only_the_callers_conversations(conversations: Conversations) -> None:
    await create(conversations, BOB)
    mine = await create(conversations)

    assert [c.id for c in (await conversations.list(ALICE, 0, "")).items] == [mine.id]


async def test_a_page_token_is_bound_to_the_user(conversations: Conversations, clock: FakeClock) -> None:
    await created_at_successive_times(conversations, clock, 3)
    page = await conversations.list(ALICE, 1, "")

    with pytest.raises(InvalidArgument) as error:
        await conversations.list(BOB, 1, page.next_page_token)

    assert violated_field(error) == "page_token"


async def test_a_negative_page_size_is_invalid(conversations: Conversations) -> None:
    with pytest.raises(InvalidArgument) as error:
        await conversations.list(ALICE, -1, "")

    assert violated_field(error) == "page_size"


# ---------------------------------------------------------------------------------------------- messages


async def test_messages_page_oldest_first(make_service: MakeService, clock: FakeClock) -> None:
    provider = ScriptedProvider(["ok"])
    service = make_service(provider)
    conversations, replies = service.conversations, service.replies
    conversation = await create(conversations, model="scripted")
    for text in ("one", "two"):
        await replies.send(ALICE, conversation.id, text, "", background=False)

    first = await conversations.messages(ALICE, conversation.id, 3, "")
    second = await conversations.messages(ALICE, conversation.id, 3, first.next_page_token)

    assert [m.content for m in first.items] == ["one", "ok", "two"]
    assert [m.content for m in second.items] == ["ok"]
    assert second.next_page_token == ""
    with pytest.raises(PermissionDenied):
        await conversations.messages(BOB, conversation.id, 3, "")


async def test_a_messages_page_token_is_bound_to_its_conversation(make_service: MakeService) -> None:
    service = make_service(ScriptedProvider(["ok"]))
    conversations, replies = service.conversations, service.replies
    one = await create(conversations, model="scripted")
    other = await create(conversations, model="scripted")
    await replies.send(ALICE, one.id, "hi", "", background=False)
    page = await conversations.messages(ALICE, one.id, 1, "")

    with pytest.raises(InvalidArgument) as error:
        await conversations.messages(ALICE, other.id, 1, page.next_page_token)

    assert violated_field(error) == "page_token"


# ---------------------------------------------------------------------------------------------- delete


async def test_delete_removes_the_conversation_and_its_messages(
    make_service: MakeService, storage: FakeStorage
) -> None:
    service = make_service(ScriptedProvider(["ok"]))
    conversations, replies = service.conversations, service.replies
    conversation = await create(conversations, model="scripted")
    await replies.send(ALICE, conversation.id, "hi", "", background=False)

    await conversations.delete(ALICE, conversation.id)

    assert storage.conversation(conversation.id) is None
    assert storage.state.messages == {}
    with pytest.raises(NotFound):
        await conversations.get(ALICE, conversation.id)


async def test_delete_of_someone_elses_conversation_is_refused(
    conversations: Conversations, storage: FakeStorage
) -> None:
    bobs = await create(conversations, BOB)

    with pytest.raises(PermissionDenied):
        await conversations.delete(ALICE, bobs.id)

    assert storage.conversation(bobs.id) == bobs


async def test_delete_stops_a_reply_in_flight(make_service: MakeService, storage: FakeStorage) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    service = make_service(provider)
    conversations, replies = service.conversations, service.replies
    conversation = await create(conversations, model="scripted")
    sending = asyncio.ensure_future(replies.send(ALICE, conversation.id, "hi", "", background=False))
    async with asyncio.timeout(WAIT):
        await provider.held.wait()

        await conversations.delete(ALICE, conversation.id)
        _, final = await sending

    assert (final.status, final.content) == (MessageStatus.CANCELLED, "ab")
    assert replies.in_flight == 0
    assert storage.state.messages == {}
    assert storage.state.conversations == {}


# ---------------------------------------------------------------------------------------------- models


async def test_models_page_in_name_order(make_service: MakeService) -> None:
    conversations = make_service(ScriptedProvider(models=["charlie", "alpha", "bravo"])).conversations

    first = await conversations.models(2, "")
    second = await conversations.models(2, first.next_page_token)

    assert [m.name for m in first.items] == ["alpha", "bravo"]
    assert [m.name for m in second.items] == ["charlie", MODEL_NAME]  # the default model is always offered
    assert second.next_page_token == ""


async def test_the_default_model_is_offered_and_accepted_when_the_provider_does_not_list_it(
    make_service: MakeService,
) -> None:
    conversations = make_service(ScriptedProvider(models=["model.gguf"])).conversations

    page = await conversations.models(0, "")
    conversation = await create(conversations, model=MODEL_NAME)

    assert [(m.name, m.provider) for m in page.items] == [(MODEL_NAME, "scripted"), ("model.gguf", "scripted")]
    assert conversation.model == MODEL_NAME
    with pytest.raises(ModelNotFound):
        await create(conversations, model="model")  # any other name must be one the provider lists


async def test_models_of_the_fake_provider(conversations: Conversations) -> None:
    page = await conversations.models(0, "")

    assert [m.name for m in page.items] == [MODEL_NAME]
    assert page.next_page_token == ""


async def test_a_models_page_token_from_another_listing_is_invalid(
    conversations: Conversations, clock: FakeClock
) -> None:
    await created_at_successive_times(conversations, clock, 2)
    token = (await conversations.list(ALICE, 1, "")).next_page_token

    with pytest.raises(InvalidArgument) as error:
        await conversations.models(1, token)

    assert violated_field(error) == "page_token"
