"""Affinity pins in the routing state: kept in this process with a fake clock, shared
between processes through a real redis-server (a read renews the idle TTL), and kept
in this process alone while Redis is down."""

from __future__ import annotations

from typing import Any

from tests.clock import Clock
from tests.redis_server import RedisServer
from tests.state.helpers import memory, until


async def test_a_memory_pin_lasts_while_it_is_used_and_goes_after_ttl_idle() -> None:
    clock = Clock()
    state = memory(clock)
    assert await state.get_pin("affinity:c1", 10) is None
    await state.put_pin("affinity:c1", "a", 10)
    for _ in range(5):  # used every 9 s: 45 s in all, never idle for 10
        clock.now += 9
        assert await state.get_pin("affinity:c1", 10) == "a"
    clock.now += 10
    assert await state.get_pin("affinity:c1", 10) is None
    await state.put_pin("affinity:c1", "b", 10)  # made again, elsewhere
    assert await state.get_pin("affinity:c1", 10) == "b"


async def test_two_redis_states_share_a_pin_and_each_follows_the_others_moves(
    redis_states: Any, redis_server: RedisServer
) -> None:
    one, two = await redis_states(prefix="gw"), await redis_states(prefix="gw")
    await one.put_pin("affinity:c1", "a", 60)
    assert redis_server.cli("GET", "{gw}:pin:affinity:c1") == "a"  # there once put returns
    asked = two.decisions["shared"]
    assert await two.get_pin("affinity:c1", 60) == "a"  # read in Redis: no copy yet
    assert two.decisions["shared"] == asked + 1
    assert await two.get_pin("affinity:c1", 60) == "a"  # from its copy: no round trip
    assert two.decisions["shared"] == asked + 1
    await two.put_pin("affinity:c1", "b", 60)  # moved by the other process
    await until(lambda: one.local.get_pin_now("affinity:c1", 60) == "b")  # heard
    assert await one.get_pin("affinity:c1", 60) == "b"
    assert await one.get_pin("affinity:never", 60) is None


async def test_a_copy_used_renews_the_shared_ttl(
    redis_states: Any, redis_server: RedisServer
) -> None:
    one, two = await redis_states(prefix="gw"), await redis_states(prefix="gw")
    await one.put_pin("affinity:c1", "a", 60)
    assert await two.get_pin("affinity:c1", 60) == "a"
    redis_server.cli("PEXPIRE", "{gw}:pin:affinity:c1", "5000")  # as if idle for 55 s
    assert await one.get_pin("affinity:c1", 60) == "a"  # its copy, renewed in Redis too
    await until(lambda: int(redis_server.cli("PTTL", "{gw}:pin:affinity:c1")) > 59_000)


async def test_an_idle_redis_pin_expires_for_every_process(
    redis_states: Any, redis_server: RedisServer
) -> None:
    one, two = await redis_states(prefix="gw"), await redis_states(prefix="gw")
    await one.put_pin("affinity:c1", "a", 0.2)
    assert redis_server.cli("EXISTS", "{gw}:pin:affinity:c1") == "1"
    await until(lambda: redis_server.cli("EXISTS", "{gw}:pin:affinity:c1") == "0")
    # Idle for its TTL: gone in Redis, and the writer's own copy went with it.
    assert await one.get_pin("affinity:c1", 0.2) is None
    assert await two.get_pin("affinity:c1", 0.2) is None


async def test_redis_down_pins_held_here_answer_and_after_it_they_are_read_anew(
    redis_states: Any, own_redis: RedisServer
) -> None:
    state = await redis_states(own_redis.start().url)
    await state.put_pin("affinity:c1", "a", 60)
    own_redis.kill()
    await state.put_pin("affinity:c2", "b", 60)  # never raises
    assert await state.get_pin("affinity:c1", 60) == "a"
    assert await state.get_pin("affinity:c2", 60) == "b"
    assert await state.get_pin("affinity:c3", 60) is None  # not here, and no Redis to ask
    await until(lambda: state.degraded)
    own_redis.start()  # empty
    await until(lambda: not state.degraded, within=20)
    # Moves made while this process was away were not heard: its copies are dropped.
    assert await state.get_pin("affinity:c1", 60) is None
