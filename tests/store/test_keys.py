"""API keys, on both backends: the store keeps hashes, never secrets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polyroute.store import (
    ConflictError,
    InvalidValueError,
    KeyRecord,
    NotFoundError,
    Store,
    hash_secret,
)
from tests.store.conftest import Database

SECRET = "pr-ab12cd34ef56-the-secret-part"


async def new_key(store: Store, name: str = "ci", secret: str = SECRET, **fields: Any) -> KeyRecord:
    return await store.create_key(
        name=name, secret_hash=hash_secret(secret), display_prefix=secret[:8], **fields
    )


async def test_a_key_is_stored_as_its_hash_and_prefix_only(
    database: Database, store: Store
) -> None:
    team = await store.create_team(name="ops")
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    key = await new_key(
        store, team_id=team.id, models=["gpt-4o", "claude"], rpm=30, tpm=9000,
        budget_usd=10, budget_period="week", expires_at=expires, log_content=False,
        metadata={"ticket": 42},
    )  # fmt: skip
    assert key.id.startswith("key_")
    assert (key.secret_hash, key.display_prefix) == (hash_secret(SECRET), "pr-ab12c")
    assert (key.team_id, key.models, key.rpm, key.tpm) == (team.id, ("gpt-4o", "claude"), 30, 9000)
    assert (key.budget_usd, key.budget_period, key.expires_at) == (10.0, "week", expires)
    assert (key.log_content, key.metadata, key.revoked_at) == (False, {"ticket": 42}, None)
    assert (key.previous_hash, key.previous_valid_until) == (None, None)
    assert await store.get_key(key.id) == key
    rows = await database.query("SELECT * FROM api_keys")
    assert SECRET not in repr(rows)


async def test_a_secret_given_in_place_of_its_hash_is_refused(store: Store) -> None:
    with pytest.raises(InvalidValueError, match="secret_hash"):
        await store.create_key(name="ci", secret_hash=SECRET, display_prefix="pr-ab12")
    assert await store.list_keys(include_revoked=True) == []


async def test_key_by_hash_finds_the_key_of_a_secret(store: Store) -> None:
    key = await new_key(store)
    await new_key(store, name="other", secret="pr-other-secret")
    assert await store.key_by_hash(hash_secret(SECRET)) == key
    assert await store.key_by_hash(hash_secret("pr-wrong")) is None


async def test_a_key_of_an_unknown_team_is_not_created(store: Store) -> None:
    with pytest.raises(NotFoundError) as caught:
        await new_key(store, team_id="team_missing")
    assert caught.value.kind == "team"
    key = await new_key(store)
    with pytest.raises(NotFoundError):
        await store.update_key(key.id, team_id="team_missing")
    assert await store.list_keys() == [key]


async def test_active_key_names_are_unique_and_free_again_once_revoked(store: Store) -> None:
    first = await new_key(store)
    with pytest.raises(ConflictError, match="active key named 'ci'"):
        await new_key(store, secret="pr-second-secret")
    await store.revoke_key(first.id)
    second = await new_key(store, secret="pr-second-secret")
    assert second.name == "ci"


async def test_two_keys_cannot_share_a_secret(store: Store) -> None:
    await new_key(store)
    with pytest.raises(ConflictError, match="secret hash"):
        await new_key(store, name="copy")


async def test_an_update_changes_only_the_given_fields(store: Store) -> None:
    team = await store.create_team(name="ops")
    key = await new_key(store, models=["a"], rpm=5)
    expires = datetime.now(UTC) + timedelta(days=3)
    updated = await store.update_key(
        key.id, team_id=team.id, models=None, expires_at=expires, log_content=True, name="ci-2"
    )
    assert (updated.team_id, updated.models, updated.expires_at) == (team.id, None, expires)
    assert (updated.log_content, updated.name, updated.rpm) == (True, "ci-2", 5)
    assert (updated.secret_hash, updated.created_at) == (key.secret_hash, key.created_at)
    assert updated.updated_at > key.updated_at
    assert await store.get_key(key.id) == updated


async def test_a_revoked_key_is_listed_only_on_request(store: Store) -> None:
    key = await new_key(store)
    kept = await new_key(store, name="kept", secret="pr-kept-secret")
    revoked = await store.revoke_key(key.id)
    assert revoked.revoked_at is not None
    assert not revoked.is_active(datetime.now(UTC))
    assert await store.revoke_key(key.id) == revoked  # the first revocation stands
    assert await store.list_keys() == [kept]
    assert await store.list_keys(include_revoked=True) == [revoked, kept]
    # still found by its hash, so that the gateway can tell "revoked" from "unknown"
    assert await store.key_by_hash(hash_secret(SECRET)) == revoked


async def test_keys_are_listed_by_team(store: Store) -> None:
    team = await store.create_team(name="ops")
    mine = await new_key(store, name="b", team_id=team.id)
    also = await new_key(store, name="a", secret="pr-also-secret", team_id=team.id)
    await new_key(store, name="c", secret="pr-loose-secret")
    assert await store.list_keys(team_id=team.id) == [also, mine]


async def test_the_old_secret_works_during_the_rotation_grace_only(store: Store) -> None:
    key = await new_key(store)
    new_secret = "pr-rotated-secret"
    rotated = await store.rotate_key(key.id, hash_secret(new_secret), "pr-rotat", grace_s=3600)
    assert (rotated.secret_hash, rotated.display_prefix) == (hash_secret(new_secret), "pr-rotat")
    assert rotated.previous_hash == hash_secret(SECRET)
    assert rotated.previous_valid_until is not None
    assert rotated.previous_valid_until - rotated.updated_at == timedelta(hours=1)
    assert await store.key_by_hash(hash_secret(SECRET)) == rotated
    assert await store.key_by_hash(hash_secret(new_secret)) == rotated
    # rotated again without grace: the first secret is forgotten, the second ends now
    again = await store.rotate_key(key.id, hash_secret("pr-third"), "pr-third", grace_s=0)
    assert await store.key_by_hash(hash_secret(SECRET)) is None
    assert await store.key_by_hash(hash_secret(new_secret)) is None
    assert await store.key_by_hash(hash_secret("pr-third")) == again


async def test_a_revoked_key_cannot_be_rotated(store: Store) -> None:
    key = await new_key(store)
    await store.revoke_key(key.id)
    with pytest.raises(ConflictError, match="revoked"):
        await store.rotate_key(key.id, hash_secret("pr-new"), "pr-new", grace_s=60)


async def test_unknown_key_ids_raise_not_found(store: Store) -> None:
    version = await store.keys_version()
    for call in (
        store.get_key("key_missing"),
        store.update_key("key_missing", rpm=5),
        store.revoke_key("key_missing"),
        store.rotate_key("key_missing", hash_secret("x"), "x", 1),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert (caught.value.kind, caught.value.id) == ("key", "key_missing")
    assert await store.keys_version() == version  # a failed change bumps nothing


async def test_keys_version_grows_with_every_change_and_says_what_changed(store: Store) -> None:
    assert await store.keys_version() == 0
    a = await new_key(store, name="a", secret="pr-a-secret")
    b = await new_key(store, name="b", secret="pr-b-secret")
    everything = await store.keys_changed_since(0)
    assert everything.version == await store.keys_version() == 2
    assert everything.keys == (a, b)
    b = await store.update_key(b.id, rpm=7)
    a = await store.revoke_key(a.id)
    changes = await store.keys_changed_since(everything.version)
    assert changes.version == 4
    assert changes.keys == (b, a)  # in the order they changed, the revoked one included
    assert (await store.keys_changed_since(changes.version)).keys == ()


async def test_another_process_sees_key_changes_through_the_version(
    database: Database, store: Store
) -> None:
    other = database.store()
    await other.start()
    try:
        seen = await other.keys_changed_since(0)
        key = await new_key(store)
        changes = await other.keys_changed_since(seen.version)
        assert changes.keys == (key,)
        assert await other.key_by_hash(hash_secret(SECRET)) == key
    finally:
        await other.aclose()


async def test_concurrent_changes_each_get_their_own_version(store: Store) -> None:
    keys = await asyncio.gather(
        *(new_key(store, name=f"k{n}", secret=f"pr-secret-{n}") for n in range(8))
    )
    assert await store.keys_version() == 8
    changes = await store.keys_changed_since(0)
    assert sorted(key.id for key in changes.keys) == sorted(key.id for key in keys)
