"""Teams, on both backends."""

from __future__ import annotations

import pytest

from polyroute.store import ConflictError, InvalidValueError, NotFoundError, Store, hash_secret
from tests.store.conftest import Database


async def test_a_created_team_is_read_back_by_id_and_by_name(store: Store) -> None:
    team = await store.create_team(
        name="research", rpm=60, tpm=100_000, budget_usd=50, budget_period="month",
        metadata={"owner": "ana", "tags": ["ml", 1]},
    )  # fmt: skip
    assert team.id.startswith("team_")
    assert (team.name, team.rpm, team.tpm) == ("research", 60, 100_000)
    assert (team.budget_usd, team.budget_period) == (50.0, "month")
    assert team.metadata == {"owner": "ana", "tags": ["ml", 1]}
    assert team.created_at == team.updated_at
    assert team.created_at.utcoffset() is not None
    assert await store.get_team(team.id) == team
    assert await store.team_by_name("research") == team
    assert await store.team_by_name("nobody") is None


async def test_team_names_are_unique(store: Store) -> None:
    await store.create_team(name="ops")
    with pytest.raises(ConflictError, match="'ops' exists"):
        await store.create_team(name="ops")


async def test_teams_are_listed_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.create_team(name=name)
    assert [team.name for team in await store.list_teams()] == ["alpha", "mid", "zeta"]


async def test_an_update_changes_only_the_given_fields(store: Store) -> None:
    team = await store.create_team(name="ops", rpm=10, metadata={"a": 1})
    updated = await store.update_team(team.id, rpm=None, budget_usd=2.5, budget_period="day")
    assert (updated.rpm, updated.budget_usd, updated.budget_period) == (None, 2.5, "day")
    assert (updated.name, updated.metadata, updated.created_at) == (
        "ops",
        {"a": 1},
        team.created_at,
    )
    assert updated.updated_at > team.updated_at
    assert await store.get_team(team.id) == updated


async def test_renaming_a_team_to_a_taken_name_conflicts(store: Store) -> None:
    await store.create_team(name="ops")
    dev = await store.create_team(name="dev")
    with pytest.raises(ConflictError):
        await store.update_team(dev.id, name="ops")
    assert (await store.get_team(dev.id)).name == "dev"


async def test_unknown_team_ids_raise_not_found(store: Store) -> None:
    for call in (
        store.get_team("team_missing"),
        store.update_team("team_missing", rpm=5),
        store.delete_team("team_missing"),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert (caught.value.kind, caught.value.id) == ("team", "team_missing")


async def test_bad_values_are_refused_before_reaching_the_database(store: Store) -> None:
    team = await store.create_team(name="ops")
    with pytest.raises(InvalidValueError, match="budget_period"):
        await store.update_team(team.id, budget_period="year")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="secret_hash"):
        await store.update_team(team.id, secret_hash="x")  # type: ignore[call-arg]
    assert await store.get_team(team.id) == team


async def test_a_team_with_active_keys_cannot_be_deleted(store: Store) -> None:
    team = await store.create_team(name="ops")
    key = await store.create_key(
        name="ci", secret_hash=hash_secret("s1"), display_prefix="pr-s1", team_id=team.id
    )
    with pytest.raises(ConflictError, match="1 active key"):
        await store.delete_team(team.id)
    await store.revoke_key(key.id)
    version = await store.keys_version()
    await store.delete_team(team.id)
    assert await store.list_teams() == []
    with pytest.raises(NotFoundError):
        await store.get_team(team.id)
    detached = await store.get_key(key.id)  # the revoked key stays, detached
    assert detached.team_id is None
    assert (await store.keys_changed_since(version)).keys == (detached,)


async def test_teams_survive_a_restart(database: Database, store: Store) -> None:
    team = await store.create_team(name="ops", budget_usd=1.25, metadata={"k": [1, 2]})
    await store.aclose()
    reopened = database.store()
    await reopened.start()
    try:
        assert await reopened.list_teams() == [team]
    finally:
        await reopened.aclose()
