"""API keys: minting, hashing, authentication, revocation and listing, against the in-memory storage."""

from __future__ import annotations

import time

import jwt
import pytest

from service.auth.api_keys import ApiKeys, hash_secret, parse_key
from service.auth.jwts import JwtVerifier
from service.domain import ApiKey, InvalidArgument, NotFound, Principal, Unauthenticated
from service.pagination import PageTokens
from tests.fakes import FakeClock, FakeStorage


@pytest.fixture
def keys(storage: FakeStorage, clock: FakeClock) -> ApiKeys:
    return ApiKeys(storage.unit_of_work, PageTokens(b"secret"), clock=clock)


def stored(storage: FakeStorage, key_id: str) -> ApiKey:
    key = storage.api_key(key_id)
    assert key is not None
    return key


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


async def test_create_returns_a_token_of_the_form_csk_id_secret(keys: ApiKeys, clock: FakeClock) -> None:
    key, token = await keys.create("alice", name="laptop")

    prefix, key_id, secret = token.split("_", 2)
    assert (prefix, key_id) == ("csk", key.id)
    assert len(secret) >= 32
    assert parse_key(token) == (key.id, secret)
    assert (key.user_id, key.name, key.scopes, key.create_time) == ("alice", "laptop", frozenset(), clock())


async def test_only_a_hash_of_the_secret_is_stored(keys: ApiKeys, storage: FakeStorage) -> None:
    key, token = await keys.create("alice")
    secret = token.split("_", 2)[2]

    assert stored(storage, key.id).secret_hash == hash_secret(secret) != secret
    assert secret not in repr(storage.state)
    assert token not in repr(storage.state)


async def test_every_key_gets_a_fresh_id_and_secret(keys: ApiKeys) -> None:
    created = [await keys.create("alice") for _ in range(5)]

    assert len({key.id for key, _ in created}) == 5
    assert len({token for _, token in created}) == 5


async def test_authenticate_returns_the_keys_principal(keys: ApiKeys) -> None:
    _, token = await keys.create("alice", scopes={"admin"})

    principal = await keys.authenticate(token)

    assert principal == Principal("alice", frozenset({"admin"}))
    assert principal.is_admin


async def test_authenticate_records_when_the_key_was_last_used(
    keys: ApiKeys, storage: FakeStorage, clock: FakeClock
) -> None:
    key, token = await keys.create("alice")

    await keys.authenticate(token)

    assert stored(storage, key.id).last_used_time == clock()


async def test_authenticate_does_not_rewrite_last_use_on_every_request(storage: FakeStorage, clock: FakeClock) -> None:
    keys = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock, cache_seconds=0)
    key, token = await keys.create("alice")
    first_use = clock()
    await keys.authenticate(token)

    clock.advance(30)
    await keys.authenticate(token)
    assert stored(storage, key.id).last_used_time == first_use

    clock.advance(61)
    await keys.authenticate(token)
    assert stored(storage, key.id).last_used_time == clock()


async def test_a_wrong_secret_is_unauthenticated(keys: ApiKeys) -> None:
    key, _ = await keys.create("alice")

    with pytest.raises(Unauthenticated):
        await keys.authenticate(f"csk_{key.id}_not-the-secret")


async def test_a_wrong_secret_is_unauthenticated_even_after_the_key_was_cached(keys: ApiKeys) -> None:
    key, token = await keys.create("alice")
    await keys.authenticate(token)

    with pytest.raises(Unauthenticated):
        await keys.authenticate(f"csk_{key.id}_not-the-secret")
    assert await keys.authenticate(token) == Principal("alice")


@pytest.mark.parametrize(
    "token", ["", "csk", "csk_", "csk__secret", "csk_id_", "abc_id_secret", "Bearer csk_a_b", "random garbage"]
)
async def test_a_malformed_token_is_unauthenticated(keys: ApiKeys, token: str) -> None:
    with pytest.raises(Unauthenticated):
        await keys.authenticate(token)


async def test_a_token_for_an_unknown_key_is_unauthenticated(keys: ApiKeys) -> None:
    with pytest.raises(Unauthenticated):
        await keys.authenticate("csk_0123456789abcdef_whatever")


async def test_revoke_takes_effect_at_once_on_the_same_instance(
    keys: ApiKeys, storage: FakeStorage, clock: FakeClock
) -> None:
    key, token = await keys.create("alice")
    await keys.authenticate(token)  # now cached

    revoked = await keys.revoke(key.id)

    assert revoked.revoke_time == clock()
    assert stored(storage, key.id).revoke_time == clock()
    with pytest.raises(Unauthenticated):
        await keys.authenticate(token)


async def test_revoking_twice_keeps_the_first_revocation_time(keys: ApiKeys, clock: FakeClock) -> None:
    key, _ = await keys.create("alice")
    first = (await keys.revoke(key.id)).revoke_time

    clock.advance(10)
    again = await keys.revoke(key.id)

    assert again.revoke_time == first


async def test_revoking_an_unknown_key_is_not_found(keys: ApiKeys) -> None:
    with pytest.raises(NotFound) as error:
        await keys.revoke("0123456789abcdef")

    assert error.value.metadata == {"keyId": "0123456789abcdef"}


async def test_other_keys_keep_working_after_a_revocation(keys: ApiKeys) -> None:
    key, _ = await keys.create("alice")
    _, other = await keys.create("alice")

    await keys.revoke(key.id)

    assert await keys.authenticate(other) == Principal("alice")


async def test_another_instance_sees_a_revocation_when_not_cached(storage: FakeStorage, clock: FakeClock) -> None:
    ours = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock)
    theirs = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock, cache_seconds=0)
    key, token = await ours.create("alice")
    await theirs.authenticate(token)

    await ours.revoke(key.id)

    with pytest.raises(Unauthenticated):
        await theirs.authenticate(token)


async def test_forget_drops_a_cached_verification(storage: FakeStorage, clock: FakeClock) -> None:
    ours = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock)
    theirs = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock, cache_seconds=3600)
    key, token = await ours.create("alice")
    await theirs.authenticate(token)
    await ours.revoke(key.id)

    theirs.forget(key.id)

    with pytest.raises(Unauthenticated):
        await theirs.authenticate(token)


@pytest.mark.parametrize("scopes", [{"root"}, {"admin", "write"}, {""}])
async def test_unknown_scopes_are_invalid(keys: ApiKeys, storage: FakeStorage, scopes: set[str]) -> None:
    with pytest.raises(InvalidArgument) as error:
        await keys.create("alice", scopes=scopes)

    assert violated_field(error) == "scopes"
    assert storage.state.api_keys == {}


@pytest.mark.parametrize("user_id", ["", " alice", "alice ", "x" * 129, "ali\nce"])
async def test_invalid_user_ids_are_rejected(keys: ApiKeys, user_id: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await keys.create(user_id)

    assert violated_field(error) == "user_id"


async def test_an_over_long_name_is_rejected(keys: ApiKeys) -> None:
    with pytest.raises(InvalidArgument) as error:
        await keys.create("alice", name="n" * 201)

    assert violated_field(error) == "name"


async def test_list_pages_through_all_keys_in_id_order(keys: ApiKeys) -> None:
    created = [(await keys.create(user))[0] for user in ("alice", "bob", "alice", "carol", "alice")]

    first = await keys.list(user_id=None, size=2, token="")
    second = await keys.list(user_id=None, size=2, token=first.next_page_token)
    third = await keys.list(user_id=None, size=2, token=second.next_page_token)

    listed = [k.id for page in (first, second, third) for k in page.items]
    assert listed == sorted(k.id for k in created)
    assert first.next_page_token and second.next_page_token
    assert third.next_page_token == ""


async def test_list_filters_by_user(keys: ApiKeys) -> None:
    alices = {(await keys.create("alice"))[0].id for _ in range(3)}
    await keys.create("bob")

    page = await keys.list(user_id="alice", size=0, token="")

    assert {k.id for k in page.items} == alices
    assert all(k.user_id == "alice" for k in page.items)
    assert page.next_page_token == ""


async def test_list_shows_revoked_keys_with_their_revocation_time(keys: ApiKeys, clock: FakeClock) -> None:
    key, _ = await keys.create("alice")
    await keys.revoke(key.id)

    (listed,) = (await keys.list(user_id="alice", size=10, token="")).items

    assert listed.revoke_time == clock()


async def test_a_page_token_is_bound_to_the_user_filter(keys: ApiKeys) -> None:
    for _ in range(3):
        await keys.create("alice")
    page = await keys.list(user_id="alice", size=1, token="")

    for user in ("bob", None):
        with pytest.raises(InvalidArgument) as error:
            await keys.list(user_id=user, size=1, token=page.next_page_token)
        assert violated_field(error) == "page_token"


async def test_list_with_a_negative_page_size_is_invalid(keys: ApiKeys) -> None:
    with pytest.raises(InvalidArgument):
        await keys.list(user_id=None, size=-1, token="")


async def test_revoke_announces_the_key_id(storage: FakeStorage, clock: FakeClock) -> None:
    announced: list[str] = []
    keys = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock, announce=announced.append)
    key, _ = await keys.create("alice")
    await keys.revoke(key.id)
    assert announced == [key.id]


async def test_the_cache_is_bypassed_while_not_trusted(storage: FakeStorage, clock: FakeClock) -> None:
    trusted = True
    ours = ApiKeys(storage.unit_of_work, PageTokens(b"s"), clock=clock)
    theirs = ApiKeys(
        storage.unit_of_work, PageTokens(b"s"), clock=clock, cache_seconds=3600, cache_trusted=lambda: trusted
    )
    key, token = await ours.create("alice")
    await theirs.authenticate(token)
    await ours.revoke(key.id)
    assert await theirs.authenticate(token) == Principal("alice")  # cached, and the cache is trusted

    trusted = False  # e.g. the link to the other replicas is down: a revocation might not have reached us

    with pytest.raises(Unauthenticated):
        await theirs.authenticate(token)


# ---------------------------------------------------------------------------------------------- JWT re-checks


class Seconds:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_jwt_is_refused_from_its_exp_plus_the_leeway() -> None:
    clock = Seconds(time.time())  # the first verification is pyjwt's, on the real clock
    verifier = JwtVerifier(secret="s" * 32, leeway=5, clock=clock)
    token = jwt.encode({"sub": "ana", "exp": int(clock.now) + 60}, "s" * 32, algorithm="HS256")
    clock.now = float(int(clock.now))

    valid_until = clock.now + 60 + 5  # exp + leeway: what a stream's per-message check compares with
    assert verifier.verify(token) == Principal("ana", valid_until=valid_until)
    clock.now += 64.9  # remembered: no second verification, and still within exp + leeway
    assert verifier.verify(token) == Principal("ana", valid_until=valid_until)
    clock.now += 0.1
    with pytest.raises(Unauthenticated):
        verifier.verify(token)
    with pytest.raises(Unauthenticated):  # forgotten: verified afresh, and expired on pyjwt's clock too
        JwtVerifier(secret="s" * 32, leeway=0).verify(jwt.encode({"sub": "ana", "exp": 1}, "s" * 32))


def test_a_token_that_fails_verification_is_not_remembered() -> None:
    verifier = JwtVerifier(secret="s" * 32, leeway=0)
    forged = jwt.encode({"sub": "ana", "exp": 4_000_000_000}, "another secret" + "x" * 20, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            verifier.verify(forged)
