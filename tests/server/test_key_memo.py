"""A connection's memo of its key (KeyMemo): a kept-alive client's secret is hashed once,
and any change to the keys known (a revocation, new limits, a rotation) is seen by the
very next request; a key that can expire, or a previous secret in its grace, is never
kept (their clock is read at every request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from polyroute.server import store_keys
from polyroute.server.keys import KeyMemo
from polyroute.server.store_keys import StoreKeys
from polyroute.store import SqliteStore, Store, hash_secret

SECRET = "pr-memo-test-0123456789abcdef0123456789"
OTHER = "pr-memo-test-fedcba9876543210fedcba9876"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "store.db")
    await store.start()
    yield store
    await store.aclose()


async def loaded(store: Store) -> StoreKeys:
    keys = StoreKeys(store, hold_s=60)
    await keys.refresh()
    return keys


def hashes_counted() -> mock._patch[mock.MagicMock]:
    return mock.patch.object(store_keys, "hash_secret", side_effect=hash_secret)


async def test_a_kept_alive_connection_hashes_its_key_once(store: Store) -> None:
    record = await store.create_key(
        name="ci", secret_hash=hash_secret(SECRET), display_prefix=SECRET[:10]
    )
    keys, memo = await loaded(store), KeyMemo()
    with hashes_counted() as hashed:
        found = [keys.find(SECRET, memo) for _ in range(3)]
        assert hashed.call_count == 1
        assert found[0] is not None
        assert found[0].id == record.id
        assert found[1] is found[0]
        assert found[2] is found[0]
        assert keys.find(OTHER, memo) is None  # another secret is looked up, not the memo's
        assert hashed.call_count == 2
    assert keys.find(SECRET, KeyMemo()) is found[0]  # another connection: its own memo


async def test_any_change_to_the_keys_is_seen_by_the_next_request(store: Store) -> None:
    record = await store.create_key(
        name="ci", secret_hash=hash_secret(SECRET), display_prefix=SECRET[:10]
    )
    keys, memo = await loaded(store), KeyMemo()
    before = keys.find(SECRET, memo)
    assert before is not None
    assert before.rpm is None
    await store.update_key(record.id, rpm=5)
    await keys.refresh()
    changed = keys.find(SECRET, memo)
    assert changed is not None
    assert changed.rpm == 5  # new limits, not the memo's
    await store.revoke_key(record.id)
    await keys.refresh()
    assert keys.find(SECRET, memo) is None
    assert keys.find(SECRET, memo) is None


async def test_keys_that_can_expire_or_end_their_grace_are_never_kept(store: Store) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    await store.create_key(
        name="expiring", secret_hash=hash_secret(SECRET), display_prefix=SECRET[:10],
        expires_at=soon,
    )  # fmt: skip
    rotated = await store.create_key(
        name="rotated", secret_hash=hash_secret(OTHER), display_prefix=OTHER[:10]
    )
    new = "pr-memo-test-new-secret-00000000000000000"
    await store.rotate_key(rotated.id, hash_secret(new), new[:10], grace_s=60)
    keys = await loaded(store)
    for secret in (SECRET, OTHER):  # an expiring key; a previous secret in its grace
        memo = KeyMemo()
        with hashes_counted() as hashed:
            assert keys.find(secret, memo) is not None
            assert keys.find(secret, memo) is not None
            assert hashed.call_count == 2
        assert memo.client is None
    at_expiry = StoreKeys(store, hold_s=60, now=lambda: soon)
    await at_expiry.refresh()
    assert at_expiry.find(SECRET, KeyMemo()) is None
