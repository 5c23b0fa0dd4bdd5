"""State configuration: clear errors, and a Redis password that never shows."""

from __future__ import annotations

import io

import pytest

from polyroute import ConfigError, InMemoryHealth, Router, load_config
from polyroute.router.state import redis as redis_state
from tests.redis_server import free_port
from tests.state.helpers import make_state

PASSWORD = "s3cret-redis-pw-7f1e"


def test_redis_without_the_client_package_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_state, "aioredis", None)
    with pytest.raises(ConfigError, match=r"pip install 'polyroute\[redis\]'"):
        make_state("redis")


def test_custom_health_is_for_the_memory_backend_only() -> None:
    config = {
        "providers": [{"name": "a", "type": "simulated"}],
        "state": {"backend": "redis"},
    }
    with pytest.raises(ConfigError, match="memory state backend only"):
        Router.from_config(config, health=InMemoryHealth(failures=1, seconds=1))


def test_unknown_backend_and_bad_limits_name_their_key() -> None:
    base = {"providers": [{"name": "a", "type": "simulated"}]}
    with pytest.raises(ConfigError, match=r"state\.backend"):
        load_config({**base, "state": {"backend": "etcd"}})
    bad = {"providers": [{"name": "a", "type": "simulated", "limits": {"rpm": 0}}]}
    with pytest.raises(ConfigError, match=r"providers\.0\.limits\.rpm"):
        load_config(bad)


async def test_the_redis_password_never_shows(json_log: io.StringIO) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    config = load_config(
        {
            "providers": [{"name": "a", "type": "simulated"}],
            "state": {"backend": "redis", "url": url},
        }
    )
    state = make_state("redis", url)
    await state.start()
    assert state.degraded
    shown = [json_log.getvalue(), repr(config), repr(state), state.describe_backend()]
    await state.aclose()
    assert "state.degraded" in shown[0]
    assert all(PASSWORD not in text for text in shown)
