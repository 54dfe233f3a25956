"""`ApiKeyRepository`: the fake, SQLite and Postgres agree."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from service.domain import ApiKey, InvalidArgument
from service.ports import UnitOfWorkFactory
from tests.contract.conftest import T0, assert_paged, at, walk

pytestmark = pytest.mark.timeout(30)


def api_key(user_id: str = "alice", *, scopes: frozenset[str] = frozenset(), name: str = "") -> ApiKey:
    return ApiKey(secrets.token_hex(8), user_id, "ab" * 32, scopes, T0, name)


async def keep(uow: UnitOfWorkFactory, *keys: ApiKey) -> None:
    async with uow() as work:
        for key in keys:
            await work.api_keys.add(key)
        await work.commit()


async def fetch(uow: UnitOfWorkFactory, key_id: str) -> ApiKey | None:
    async with uow() as work:
        return await work.api_keys.get(key_id)


async def test_keys_round_trip(uow: UnitOfWorkFactory) -> None:
    key = api_key(scopes=frozenset({"admin", "chat"}), name="laptop ünïcödé")
    bare = api_key("bob")
    await keep(uow, key, bare)

    assert await fetch(uow, key.id) == key
    assert await fetch(uow, bare.id) == bare
    assert await fetch(uow, api_key().id) is None


async def test_a_new_key_has_never_been_used_nor_revoked(uow: UnitOfWorkFactory) -> None:
    key = api_key()
    await keep(uow, dataclasses.replace(key, last_used_time=at(1), revoke_time=at(2)))

    assert await fetch(uow, key.id) == key


async def test_revoke_happens_once(uow: UnitOfWorkFactory) -> None:
    key = api_key()
    await keep(uow, key)

    async with uow() as work:
        assert await work.api_keys.revoke(key.id, at(5)) is True
        assert await work.api_keys.revoke(key.id, at(6)) is False
        assert await work.api_keys.revoke(api_key().id, at(6)) is False
        await work.commit()

    assert await fetch(uow, key.id) == dataclasses.replace(key, revoke_time=at(5))


async def test_touch_records_the_last_use(uow: UnitOfWorkFactory) -> None:
    key = api_key()
    await keep(uow, key)

    async with uow() as work:
        await work.api_keys.touch(key.id, at(3))
        await work.api_keys.touch(key.id, at(4))
        await work.api_keys.touch(api_key().id, at(4))  # unknown: nothing happens
        await work.commit()

    assert await fetch(uow, key.id) == dataclasses.replace(key, last_used_time=at(4))


async def test_list_is_by_id_and_filtered_by_user(uow: UnitOfWorkFactory) -> None:
    alices, bobs = [api_key() for _ in range(3)], [api_key("bob") for _ in range(2)]
    await keep(uow, *alices, *bobs)

    async with uow() as work:
        mine = await work.api_keys.list(user_id="alice", limit=10, after=None)
        everyone = await work.api_keys.list(user_id=None, limit=10, after=None)

    assert mine.items == sorted(alices, key=lambda k: k.id)
    assert everyone.items == sorted([*alices, *bobs], key=lambda k: k.id)
    assert mine.cursor is None and everyone.cursor is None


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_list_pages_cover_every_key_once(uow: UnitOfWorkFactory, limit: int) -> None:
    keys = [api_key() for _ in range(5)]
    await keep(uow, *keys, api_key("bob"))

    pages = await walk(uow, lambda work, after: work.api_keys.list(user_id="alice", limit=limit, after=after))

    assert_paged(pages, sorted(keys, key=lambda k: k.id), limit)


@pytest.mark.parametrize("cursor", ["", "not-hex!", "x" * 33])
async def test_list_refuses_a_malformed_cursor(uow: UnitOfWorkFactory, cursor: str) -> None:
    async with uow() as work:
        with pytest.raises(InvalidArgument):
            await work.api_keys.list(user_id=None, limit=10, after=cursor)
