"""The ``store:`` configuration and ``build_store``."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyroute.core.errors import ConfigError
from polyroute.store import (
    SqliteStore,
    StoreConfig,
    StoreUnavailableError,
    build_store,
    load_store_config,
)
from polyroute.store.postgres import PostgresStore
from tests.server.helpers import free_port


def test_the_default_store_is_a_sqlite_file_in_the_working_directory() -> None:
    config = load_store_config(None)
    assert (config.backend, config.path, config.dsn_env) == ("sqlite", "polyroute.db", None)
    store = build_store(config)
    assert isinstance(store, SqliteStore)
    assert store.path == Path("polyroute.db")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backend": "postgres"}, "store.dsn_env: required with backend postgres"),
        ({"dsn_env": "PG_DSN"}, "store.dsn_env: dsn_env applies to backend postgres"),
        (
            {"backend": "postgres", "dsn_env": "PG_DSN", "path": "x.db"},
            "store.path: path applies to backend sqlite only",
        ),
        ({"backend": "mysql"}, "store.backend: Input should be 'sqlite' or 'postgres'"),
        ({"pth": "x.db"}, "store.pth: unknown key (did you mean `path`?)"),
    ],
)
def test_a_bad_store_section_names_the_key(data: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_store_config(data)
    assert str(caught.value).startswith(message)


def test_postgres_reads_its_dsn_from_the_named_environment_variable() -> None:
    config = StoreConfig(backend="postgres", dsn_env="POLYROUTE_TEST_DSN")
    dsn = "postgresql://gateway:s3cret-pw@127.0.0.1:5432/polyroute"
    store = build_store(config, environ={"POLYROUTE_TEST_DSN": dsn})
    assert isinstance(store, PostgresStore)
    assert "s3cret-pw" not in repr(store)
    assert "s3cret-pw" not in repr(config)
    with pytest.raises(ConfigError, match="POLYROUTE_TEST_DSN is not set"):
        build_store(config, environ={})


async def test_a_store_built_from_config_with_a_dsn_keeps_its_password_out_of_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "p%40ss-w0rd-quoted"  # percent-encoded in the URL, "p@ss-w0rd-quoted" decoded
    monkeypatch.setenv("POLYROUTE_TEST_DSN", f"postgresql://u:{password}@127.0.0.1:{free_port()}/d")
    store = build_store(load_store_config({"backend": "postgres", "dsn_env": "POLYROUTE_TEST_DSN"}))
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.start()
        for text in (str(caught.value), repr(store)):
            assert password not in text
            assert "p@ss-w0rd-quoted" not in text
    finally:
        await store.aclose()


def test_a_password_given_in_the_dsn_query_is_masked_too() -> None:
    store = PostgresStore("postgresql://gateway@127.0.0.1/polyroute?password=query-pass-123")
    assert "query-pass-123" not in repr(store)
