"""The records and the checks every backend shares: no database needed."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

import polyroute.store
from polyroute.core.errors import PolyrouteError
from polyroute.store import (
    ConflictError,
    InvalidValueError,
    KeyRecord,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
    budget_window_start,
    hash_secret,
)
from polyroute.store.contract import key_changes, new_key, new_team
from tests.store.conftest import spend_row

NOW = datetime(2025, 3, 12, 15, 30, tzinfo=UTC)  # a Wednesday

PUBLIC = {
    *("SCHEMA_VERSION", "BudgetPeriod", "ConflictError", "CostStatus", "InvalidValueError"),
    *("KeyChanges", "KeyRecord", "KeyUpdate", "LedgerWriter", "NewKey", "NewTeam"),
    *("NotFoundError", "PostgresStore", "SpendGroup", "SpendGroupBy", "SpendRow"),
    *("SpendScope", "SqliteStore", "Store", "StoreConfig", "StoreError"),
    *("StoreUnavailableError", "TeamRecord", "TeamUpdate", "budget_window_start"),
    *("build_store", "hash_secret", "load_store_config"),
    *("BatchWriter", "LogsConfig", "RequestLogWriter", "RequestPage", "RequestQuery"),
    "Retention",
}


def test_the_store_package_exports_exactly_these_documented_names() -> None:
    assert set(polyroute.store.__all__) == PUBLIC
    aliases = {"SCHEMA_VERSION", "BudgetPeriod", "CostStatus", "SpendGroupBy", "SpendScope"}
    for name in PUBLIC - aliases:
        member = getattr(polyroute.store, name)
        assert member.__doc__, f"polyroute.store.{name} has no docstring"


def test_store_errors_hang_from_the_one_exception_tree() -> None:
    for error in (StoreError, NotFoundError, ConflictError, StoreUnavailableError):
        assert issubclass(error, PolyrouteError)
    missing = NotFoundError("key", "key_1")
    assert (missing.kind, missing.id) == ("key", "key_1")
    assert isinstance(missing, LookupError)
    assert issubclass(InvalidValueError, ValueError)
    assert StoreUnavailableError("postgres", "down").retryable


def test_hash_secret_is_the_sha256_hex_of_the_secret() -> None:
    assert hash_secret("pr-abc") == hashlib.sha256(b"pr-abc").hexdigest()


@pytest.mark.parametrize(
    ("period", "start"),
    [
        ("day", datetime(2025, 3, 12, tzinfo=UTC)),
        ("week", datetime(2025, 3, 10, tzinfo=UTC)),
        ("month", datetime(2025, 3, 1, tzinfo=UTC)),
        ("total", datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_budget_window_starts_at_the_utc_boundary(period: str, start: datetime) -> None:
    assert budget_window_start(period, NOW) == start  # type: ignore[arg-type]
    # 19:30 on the 11th in that zone, the 12th in UTC: windows follow UTC
    elsewhere = NOW.astimezone(timezone(timedelta(hours=-20)))
    assert budget_window_start(period, elsewhere) == start  # type: ignore[arg-type]


def test_a_spend_row_with_a_naive_time_or_unknown_status_cannot_be_made() -> None:
    with pytest.raises(InvalidValueError, match="time"):
        spend_row("r", time=datetime(2025, 3, 10, 12, 0))
    with pytest.raises(InvalidValueError, match="cost_status"):
        spend_row("r", cost_status="guessed")


def test_a_key_is_active_until_revoked_or_expired() -> None:
    key = KeyRecord(
        id="key_1",
        name="ci",
        team_id=None,
        secret_hash=hash_secret("s"),
        display_prefix="pr-s",
        models=None,
        rpm=None,
        tpm=None,
        budget_usd=None,
        budget_period=None,
        expires_at=NOW + timedelta(seconds=1),
        log_content=None,
        metadata={},
        created_at=NOW,
        updated_at=NOW,
        revoked_at=None,
        previous_hash=None,
        previous_valid_until=None,
    )
    assert key.is_active(NOW)
    assert not key.is_active(NOW + timedelta(seconds=1))
    assert not replace(key, expires_at=None, revoked_at=NOW).is_active(NOW)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a", "rpm": 0}, "rpm"),
        ({"name": "a", "tpm": True}, "tpm"),
        ({"name": "a", "budget_usd": -1}, "budget_usd"),
        ({"name": "a", "budget_period": "year"}, "budget_period"),
        ({"name": "a", "metadata": {"when": datetime.now}}, "metadata"),
        ({"name": "a", "colour": "red"}, "colour"),
        ({"rpm": 5}, "name"),
    ],
)
def test_bad_team_values_are_refused_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidValueError) as caught:
        new_team(fields)
    assert caught.value.field == field


def test_a_key_needs_a_sha256_hash_never_the_secret_itself() -> None:
    with pytest.raises(InvalidValueError, match="secret_hash"):
        new_key({"name": "k", "secret_hash": "pr-the-actual-secret", "display_prefix": "pr-t"})
    with pytest.raises(InvalidValueError, match="display_prefix"):
        new_key({"name": "k", "secret_hash": hash_secret("s"), "display_prefix": "x" * 40})


def test_key_changes_refuse_the_secret_and_a_string_for_models() -> None:
    with pytest.raises(InvalidValueError, match="secret_hash"):
        key_changes({"secret_hash": hash_secret("s")})
    with pytest.raises(InvalidValueError, match="models"):
        key_changes({"models": "gpt-4o"})
    with pytest.raises(InvalidValueError, match="expires_at"):
        key_changes({"expires_at": datetime(2030, 1, 1)})
    assert key_changes({"models": ["a", "b"]}) == {"models": ("a", "b")}
