"""The gateway's amounts of USD in headers: plain decimals, never an exponent; a budget's
remaining to the micro-dollar it is counted in, so a large one shows no float noise."""

from __future__ import annotations

from polyroute.server.app import budget_header, usd_header


def test_costs_keep_their_sub_micro_digits_and_never_use_an_exponent() -> None:
    assert usd_header(None) == "unpriced"
    assert usd_header(3 * 0.15e-6) == "0.00000045"  # 3 tokens at $0.15 a million
    assert usd_header(12.0) == "12"
    assert usd_header(0.0) == "0"


def test_a_budget_shows_whole_micro_dollars_without_float_noise() -> None:
    assert usd_header(999_999_999.95) == "999999999.9500000477"  # the float, not the amount
    assert budget_header(999_999_999.95) == "999999999.95"
    assert budget_header(0.000001) == "0.000001"
    assert budget_header(0.0) == "0"
