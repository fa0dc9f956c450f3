"""The one time source, and the NYSE calendar.

Everything asks a Clock for the time: real time, or the simulated time given by `--asof`. Naive times given by a
user are America/New_York; everything stored is ISO-8601 UTC. Trading days, early closes and holidays come from
exchange_calendars (XNYS), never from hard-coded hours.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np

from common.errors import ConfigError

NY = ZoneInfo("America/New_York")
UTC = timezone.utc


def parse_asof(text: str) -> datetime:
    """An ISO date or date-time; naive means New York time; a bare date means 16:00 (after the close)."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            moment = datetime.combine(date.fromisoformat(raw), time(16, 0))
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--asof: cannot parse {text!r} (use e.g. 2016-11-09T10:30 or 2016-11-09)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=NY)
    return moment.astimezone(UTC)


class Clock:
    """Real time, or a fixed simulated moment."""

    def __init__(self, asof: datetime | None = None):
        if asof is not None and asof.tzinfo is None:
            asof = asof.replace(tzinfo=NY)
        self._asof = asof.astimezone(UTC) if asof is not None else None

    @property
    def simulated(self) -> bool:
        return self._asof is not None

    def now(self) -> datetime:
        """Aware UTC now. The only place in the product that reads the system clock."""
        if self._asof is not None:
            return self._asof
        return datetime.now(UTC)

    def now_ny(self) -> datetime:
        return self.now().astimezone(NY)

    def today(self) -> date:
        """Today's date in New York."""
        return self.now_ny().date()

    def set(self, moment: datetime) -> None:
        """Move a simulated clock (the backtest steps through sessions with this)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=NY)
        self._asof = moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """The storage form of a timestamp."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def _xnys():
    import exchange_calendars  # imported lazily: it costs a third of a second

    today = datetime.now(UTC).date()
    return exchange_calendars.get_calendar("XNYS", start="2000-01-03", end=str(today.replace(year=today.year + 2)))


@dataclass(frozen=True)
class Session:
    day: date
    open: datetime  # aware UTC
    close: datetime  # aware UTC (early closes included)

    @property
    def early_close(self) -> bool:
        return self.close.astimezone(NY).time() < time(16, 0)

    def fraction(self, moment: datetime) -> float:
        """Share of the regular session elapsed at `moment`, clamped to 0..1."""
        span = (self.close - self.open).total_seconds()
        return min(1.0, max(0.0, (moment - self.open).total_seconds() / span))


class Calendar:
    """NYSE sessions. All lookups are by New York date."""

    def __init__(self):
        cal = _xnys()
        self._days = np.array(cal.sessions.values.astype("datetime64[D]"))
        self._opens = cal.opens.values.astype("datetime64[s]").astype(np.int64)
        self._closes = cal.closes.values.astype("datetime64[s]").astype(np.int64)
        self._dates: list[date] = self._days.tolist()  # datetime64[D] converts to datetime.date
        self._first, self._last = self._dates[0], self._dates[-1]
        self._indexes: dict[date, int] = {}  # every command asks about the same few days many times

    def _index(self, day: date) -> int:
        """Index of the first session on or after `day`."""
        index = self._indexes.get(day)
        if index is None:
            self._check_range(day)
            index = self._indexes[day] = int(np.searchsorted(self._days, np.datetime64(day, "D")))
        return index

    def _check_range(self, day: date) -> None:
        if not self._first <= day <= self._last:
            raise ConfigError(f"date {day} is outside the NYSE calendar ({self._first} .. {self._last})")

    def is_session(self, day: date) -> bool:
        i = self._index(day)
        return i < len(self._days) and self._dates[i] == day

    def session(self, day: date) -> Session:
        i = self._index(day)
        if i >= len(self._days) or self._dates[i] != day:
            raise ConfigError(f"{day} is not an NYSE trading day")
        return self._session_at(i)

    def _session_at(self, i: int) -> Session:
        to_dt = lambda secs: datetime.fromtimestamp(int(secs), UTC)  # noqa: E731
        return Session(self._dates[i], to_dt(self._opens[i]), to_dt(self._closes[i]))

    def next_session(self, day: date) -> date:
        """The first session strictly after `day`."""
        i = self._index(day + timedelta(days=1))
        return self._dates[i]

    def previous_session(self, day: date) -> date:
        """The last session strictly before `day`."""
        i = self._index(day) - 1
        if i < 0:
            raise ConfigError(f"no NYSE session before {day} in the calendar")
        return self._dates[i]

    def sessions(self, start: date, end: date) -> list[date]:
        """Sessions with start <= day <= end."""
        lo = np.searchsorted(self._days, np.datetime64(start, "D"))
        hi = np.searchsorted(self._days, np.datetime64(end, "D"), side="right")
        return self._dates[lo:hi]

    def sessions_back(self, day: date, count: int) -> date:
        """The date `count` sessions before `day` (day itself need not be a session)."""
        i = self._index(day) - count
        if i < 0:
            raise ConfigError(f"not enough NYSE history before {day}")
        return self._dates[i]

    def is_open(self, moment: datetime) -> bool:
        """True inside a regular session (open inclusive, close exclusive)."""
        day = moment.astimezone(NY).date()
        if not self.is_session(day):
            return False
        s = self.session(day)
        return s.open <= moment < s.close

    def current_or_last_session(self, moment: datetime) -> tuple[Session, float]:
        """The session a command acting at `moment` works on, and the session fraction it sees.

        Inside a session: that session and the fraction elapsed. Outside: the latest session that has opened by
        `moment`, seen whole (fraction 1), so a weekend dry run uses the last session's data.
        """
        day = moment.astimezone(NY).date()
        if self.is_session(day):
            s = self.session(day)
            if moment >= s.open:
                return s, s.fraction(moment)
        last = self.session(self.previous_session(day))
        return last, 1.0

    def last_completed_session(self, moment: datetime) -> date:
        """The latest session whose regular close is at or before `moment`: its daily bar is final."""
        session, _ = self.current_or_last_session(moment)
        return session.day if session.close <= moment else self.previous_session(session.day)

    def next_open(self, moment: datetime) -> datetime:
        """The next regular-session open at or after `moment`."""
        day = moment.astimezone(NY).date()
        if self.is_session(day) and moment < self.session(day).open:
            return self.session(day).open
        return self.session(self.next_session(day)).open


@functools.lru_cache(maxsize=1)
def calendar() -> Calendar:
    return Calendar()


def day_bounds_utc(day: date) -> tuple[str, str]:
    """ISO UTC bounds [start, end) of a New York calendar day, comparable with stored timestamps."""
    start = datetime.combine(day, time(0, 0), tzinfo=NY)
    end = datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=NY)
    return iso_utc(start), iso_utc(end)
