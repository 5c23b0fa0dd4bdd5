"""Budget periods: UTC days, ISO weeks, months, or all time, and the window of one
that holds a given moment (shared by the routing state's budgets and the store's
spend ledger, so both agree on when a period begins)."""

from __future__ import annotations

from collections.abc import Callable
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
    latest = _latest.get(period)
    if (
        latest is not None
        and latest.starts_at <= now
        and (latest.ends_at is None or now < latest.ends_at)
    ):
        return latest
    make = _WINDOW_OF.get(period)
    if make is None:
        raise ValueError(f"a period is one of {PERIODS}, not {period!r}")
    window = _latest[period] = make(now.astimezone(UTC))
    return window


def _day(now: datetime) -> PeriodWindow:
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return PeriodWindow(midnight.strftime("%Y-%m-%d"), midnight, midnight + timedelta(days=1))


def _week(now: datetime) -> PeriodWindow:
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    year, week, weekday = midnight.isocalendar()
    monday = midnight - timedelta(days=weekday - 1)
    return PeriodWindow(f"{year}-W{week:02d}", monday, monday + timedelta(days=7))


def _month(now: datetime) -> PeriodWindow:
    first = datetime(now.year, now.month, 1, tzinfo=UTC)
    following = (first + timedelta(days=32)).replace(day=1)
    return PeriodWindow(first.strftime("%Y-%m"), first, following)


def _total(_now: datetime) -> PeriodWindow:
    return PeriodWindow("total", BEGINNING, None)


_WINDOW_OF: dict[str, Callable[[datetime], PeriodWindow]] = {
    "day": _day,
    "week": _week,
    "month": _month,
    "total": _total,
}
_latest: dict[str, PeriodWindow] = {}
"""The window each period was last asked for: asked again by most requests (a budget
check each), and left once a period."""
