"""Budget periods: UTC days, ISO weeks, months, or all time, and the window of one
that holds a given moment (shared by the routing state's budgets and the store's
spend ledger, so both agree on when a period begins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, get_args

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[Period, ...] = get_args(Period)
BEGINNING = datetime.min.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class PeriodWindow(NamedTuple):
    """One period's window: its id (``2026-12-05``, ``2026-W49``, ``2026-12``,
    ``total``), when it began and when it ends (``None``: never)."""

    id: str
    starts_at: datetime
    ends_at: datetime | None


def period_window(period: Period, now: datetime) -> PeriodWindow:
    """The window of ``period`` that holds ``now`` (timezone-aware): a UTC day from
    midnight, an ISO week from Monday 00:00, a month from the 1st, or ``total``. Raises
    ``ValueError`` for a naive ``now``: which day it is depends on its zone."""
    if now.tzinfo is None:
        raise ValueError("period windows need a timezone-aware time (UTC)")
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        return PeriodWindow(midnight.strftime("%Y-%m-%d"), midnight, midnight + timedelta(days=1))
    if period == "week":
        year, week, weekday = midnight.isocalendar()
        monday = midnight - timedelta(days=weekday - 1)
        return PeriodWindow(f"{year}-W{week:02d}", monday, monday + timedelta(days=7))
    if period == "month":
        first = midnight.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return PeriodWindow(first.strftime("%Y-%m"), first, following)
    return PeriodWindow("total", BEGINNING, None)
