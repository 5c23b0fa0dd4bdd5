"""A team's change is a change of its keys for readers of ``keys_changed_since``: the
gateways keep keys in memory, with their team's limits, and learn of changes that way."""

from __future__ import annotations

from polyroute.store import Store, hash_secret


async def test_changing_a_team_marks_its_keys_changed(store: Store) -> None:
    team = await store.create_team(name="search")
    other = await store.create_team(name="other")
    key = await store.create_key(
        name="ci", team_id=team.id, secret_hash=hash_secret("pr-ci"), display_prefix="pr-ci"
    )
    await store.create_key(
        name="ops", team_id=other.id, secret_hash=hash_secret("pr-ops"), display_prefix="pr-ops"
    )
    seen = await store.keys_changed_since(0)
    await store.update_team(team.id, budget_usd=5.0, budget_period="day")
    changes = await store.keys_changed_since(seen.version)
    assert changes.version > seen.version
    assert changes.keys == (key,)  # the key is as it was: its team is what changed
    empty = await store.create_team(name="empty")
    await store.update_team(empty.id, rpm=5)  # no keys: nothing for key readers
    assert await store.keys_version() == changes.version
