"""Records with a TTL (the gateway's stored responses): kept in this process with a fake
clock and a bound, shared between processes through a real redis-server, and kept in
this process alone while Redis cannot take them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.clock import Clock
from tests.redis_server import RedisServer
from tests.state.helpers import memory, until


def _record_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [log for log in logs if log["event"] == "state.record_local"]


# In this process ---------------------------------------------------------------------


async def test_a_memory_record_is_found_until_its_ttl_is_over() -> None:
    clock = Clock()
    state = memory(clock)
    await state.put_record("resp_1", b"one", 10)
    assert await state.get_record("resp_1") == b"one"
    clock.now += 9.9
    assert await state.get_record("resp_1") == b"one"
    clock.now += 0.1
    assert await state.get_record("resp_1") is None
    assert await state.get_record("resp_never") is None


async def test_a_memory_record_put_again_takes_the_new_value_and_ttl() -> None:
    clock = Clock()
    state = memory(clock)
    await state.put_record("resp_1", b"old", 10)
    clock.now += 5
    await state.put_record("resp_1", b"new", 10)
    clock.now += 9
    assert await state.get_record("resp_1") == b"new"
    assert len(state.records) == 1
    assert state.records.size == len("resp_1") + 3


async def test_expired_records_are_pruned_on_put_even_behind_longer_lived_ones() -> None:
    clock = Clock()
    state = memory(clock)
    await state.put_record("long", b"x" * 10, 3600)  # the oldest, and still alive
    for n in range(5):
        await state.put_record(f"short{n}", b"y" * 10, 1)
    clock.now += 2
    await state.put_record("next", b"z", 3600)  # never read: pruned all the same
    assert len(state.records) == 2
    assert state.records.size == len("long") + 10 + len("next") + 1


async def test_replaced_records_do_not_pile_up_in_the_expiry_heap() -> None:
    state = memory(Clock())
    for n in range(10_000):
        await state.put_record("resp_1", str(n).encode(), 3600)
    assert await state.get_record("resp_1") == b"9999"
    # The heap behind pruning (private: its size is the point here) stays near the
    # number of records, not the number of puts.
    assert len(state.records._expiries) <= 2 * len(state.records) + 64


async def test_past_max_records_the_oldest_written_go_first() -> None:
    state = memory(Clock(), max_records=3)
    for key in ("a", "b", "c"):
        await state.put_record(key, b"v", 60)
    await state.put_record("a", b"v2", 60)  # written again: now the newest
    await state.put_record("d", b"v", 60)
    assert [await state.get_record(key) for key in "abcd"] == [b"v2", None, b"v", b"v"]
    assert len(state.records) == 3


async def test_past_max_bytes_the_oldest_written_go_first() -> None:
    state = memory(Clock(), max_record_bytes=100)
    for key in ("a", "b", "c"):
        await state.put_record(key, b"x" * 29, 60)  # 30 each with the key
    await state.put_record("d", b"x" * 59, 60)  # 150 in all: "a" and "b" go
    assert [await state.get_record(key) is not None for key in "abcd"] == [
        False,
        False,
        True,
        True,
    ]
    assert state.records.size == 90


async def test_a_record_over_the_bound_or_with_a_bad_ttl_is_refused() -> None:
    state = memory(Clock(), max_record_bytes=100)
    await state.put_record("kept", b"x", 60)
    with pytest.raises(ValueError, match="over the bound"):
        await state.put_record("big", b"x" * 100, 60)
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl_s"):
            await state.put_record("bad", b"x", ttl)
    assert await state.get_record("kept") == b"x"
    assert len(state.records) == 1


async def test_deleting_a_memory_record_says_whether_a_live_one_was_there() -> None:
    clock = Clock()
    state = memory(clock)
    await state.put_record("resp_1", b"one", 10)
    await state.put_record("resp_2", b"two", 10)
    assert await state.delete_record("resp_1") is True
    assert await state.get_record("resp_1") is None
    assert await state.delete_record("resp_1") is False
    clock.now += 10
    assert await state.delete_record("resp_2") is False  # expired already
    assert state.records.size == 0


# Shared through Redis ------------------------------------------------------------------


async def test_two_redis_states_see_each_others_records(redis_states: Any) -> None:
    one, two = await redis_states(), await redis_states()
    large = bytes(range(256)) * 2048  # 512 KiB
    await one.put_record("resp_1", large, 60)
    await two.put_record("resp_2", b"two", 60)
    assert await two.get_record("resp_1") == large
    assert await one.get_record("resp_2") == b"two"
    assert len(one.local.records) == len(two.local.records) == 0  # nothing kept alone
    assert await two.delete_record("resp_1") is True
    assert await one.get_record("resp_1") is None
    assert await one.delete_record("resp_1") is False


async def test_a_redis_record_has_the_ttl_asked_for_under_the_prefix_tag(
    redis_states: Any, redis_server: RedisServer
) -> None:
    state = await redis_states(prefix="gw")
    await state.put_record("resp_1", b"one", 90)
    assert 89_000 < int(redis_server.cli("PTTL", "{gw}:record:resp_1")) <= 90_000
    with capture_logs() as logs:
        await state.put_record("resp_2", b"two", 0.0004)  # 1 ms in Redis, not 0 (an error)
    assert _record_events(logs) == []
    assert len(state.local.records) == 0


async def test_a_missing_redis_record_is_none(redis_states: Any) -> None:
    state = await redis_states()
    await state.put_record("resp_1", b"one", 60)
    assert await state.get_record("resp_2") is None
    assert await state.get_record("") is None


async def test_a_record_over_the_bound_is_refused_with_redis_up_too(
    redis_states: Any, redis_server: RedisServer
) -> None:
    state = await redis_states()
    state.local.records.max_bytes = 100  # the bound of the copy it would fall back to
    with pytest.raises(ValueError, match="over the bound"):
        await state.put_record("big", b"x" * 200, 60)
    assert redis_server.cli("--scan") == ""


async def test_redis_down_keeps_records_here_with_one_event_then_shares_again(
    redis_states: Any, own_redis: RedisServer
) -> None:
    state = await redis_states(own_redis.start().url)
    await state.put_record("shared", b"s", 60)
    own_redis.kill()
    with capture_logs() as logs:
        await state.put_record("resp_1", b"one", 60)  # never raises
        await state.put_record("resp_2", b"two", 60)
        assert await state.get_record("resp_1") == b"one"
        assert await state.get_record("resp_2") == b"two"
        assert await state.get_record("shared") is None  # in Redis only
    assert state.degraded
    assert [log["op"] for log in _record_events(logs)] == ["put"]  # one for the outage
    assert [log["event"] for log in logs].count("state.degraded") == 1

    own_redis.start()  # empty
    await until(lambda: not state.degraded, within=20)
    assert await state.get_record("resp_1") == b"one"  # not in Redis: the copy kept here
    await state.put_record("resp_1", b"again", 60)
    other = await redis_states(own_redis.url)
    assert await other.get_record("resp_1") == b"again"
    assert await other.get_record("resp_2") is None  # kept by the first process alone
    assert len(state.local.records) == 1  # resp_1's copy went once Redis took it


async def test_a_frozen_redis_holds_a_record_write_no_longer_than_its_bound(
    redis_states: Any, own_redis: RedisServer
) -> None:
    state = await redis_states(own_redis.start().url, timeout_ms=50)
    own_redis.pause()
    try:
        with capture_logs() as logs:
            started = time.perf_counter()
            await state.put_record("resp_1", b"one", 60)
            took = time.perf_counter() - started
            assert await state.get_record("resp_1") == b"one"
    finally:
        own_redis.resume()
    assert 0.29 < took < 1.0  # timeout_ms (50 ms) + the records' margin, then alone
    events = _record_events(logs)
    assert (events[0]["op"], events[0]["reason"]) == ("put", "timeout")
    await until(lambda: not state.degraded, within=20)
