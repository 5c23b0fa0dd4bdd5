"""A process's budget grants, without Redis: how big a grant is, what it admits, when it
stops admitting and when it is to be settled (polyroute.router.state.grants)."""

from __future__ import annotations

from polyroute.router.state import BudgetLimit
from polyroute.router.state.budgets import ScopeWindow
from polyroute.router.state.grants import GRANT_MAX_AGE_S, Grant, GrantBook
from tests.clock import Clock

WINDOWS = (ScopeWindow("key:a", BudgetLimit(100.0, "total"), "total", None),)


def book_with_grant(micros: int, clock: Clock) -> tuple[GrantBook, Grant]:
    book = GrantBook(64, clock)
    grant = Grant("p:g1", WINDOWS, micros, {"key:a": 50_000_000}, 61.0, clock())
    book.install(grant)
    return book, grant


def test_a_grant_is_64_requests_or_a_quarter_of_each_processes_share_of_what_is_left() -> None:
    book = GrantBook(64)
    assert book.wanted(WINDOWS, 10_000, processes=2) == 640_000  # nothing known yet
    book.room[WINDOWS] = 4_000_000
    assert book.wanted(WINDOWS, 10_000, processes=2) == 500_000  # 4.00 / (4 x 2)
    book.room[WINDOWS] = 150_000
    assert book.wanted(WINDOWS, 10_000, processes=2) == 0  # 0.0187: under two requests
    assert GrantBook(0).wanted(WINDOWS, 10_000, processes=1) == 0  # grants off


def test_requests_are_admitted_until_the_grant_is_used_up_or_too_old() -> None:
    clock = Clock()
    book, grant = book_with_grant(30_000, clock)
    assert book.admit(WINDOWS, 10_000, "r1") is grant
    assert book.admit(WINDOWS, 10_000, "r2") is grant
    assert grant.remaining() == {"key:a": 50_010_000}  # left beside it, and its free part
    assert book.admit(WINDOWS, 20_000, "r3") is None  # 0.01 free
    clock.now += GRANT_MAX_AGE_S
    assert book.admit(WINDOWS, 10_000, "r4") is None


def test_a_retired_grant_is_settled_when_its_last_request_ends_with_what_they_cost() -> None:
    clock = Clock()
    book, grant = book_with_grant(30_000, clock)
    book.admit(WINDOWS, 10_000, "r1")
    book.admit(WINDOWS, 10_000, "r2")
    assert book.end("r1", 7_000) == (True, None)  # still the current grant
    assert book.retire(WINDOWS) is grant
    assert grant.retired
    assert book.shrink(grant) == "p:g1=30000"
    assert grant.member == "p:g1=20000"
    assert book.end("r2", 9_000) == (True, grant)  # its last request: settle it now
    assert grant.spent == 16_000
    assert book.end("elsewhere", 5_000) == (False, None)  # not admitted from a grant


def test_grants_past_their_age_are_retired_and_others_kept() -> None:
    clock = Clock()
    book, grant = book_with_grant(30_000, clock)
    assert book.retire_old() == []
    clock.now += GRANT_MAX_AGE_S
    assert book.retire_old() == [grant]
    assert book.current == {}
