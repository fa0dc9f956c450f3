"""The cap-tiered stock universe, fixed or point in time.

A fixed universe, `data/universe.json` = {"symbols": {"large": [...], "mid": [...], "small": [...]}}, is one list for
every day. A point-in-time universe = {"point_in_time": true, "periods": [{"from": "2013-05-07", "symbols": {...}},
...], "source": ..., "members": ..., "built_by": ..., "members_left_out": [...]} holds the members of each period;
a period runs from its "from" day until the next period's, the last one for ever.

Loading validates strictly (exact keys, symbol format, no duplicates within a list of caps, dates in order) and fails
with one line naming the file and the problem. `build_universe` derives a universe from data: by median daily dollar
volume (terciles), by market capitalisation (> $10B large, $2-10B mid, < $2B small), or point in time from index
membership intervals and dollar volume (`_point_in_time_by_dollar_volume`).

A symbol the market-data source does not know is named as unknown (`unknown_symbols`): a warning in a scan of the
universe, an error when it was typed on the command line (`refuse_unknown`).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import ConfigError

log = logging.getLogger(__name__)

CAPS = ("large", "mid", "small")
SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
DATE_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LARGE_CAP_MIN = 10e9
MID_CAP_MIN = 2e9
DOLLAR_VOLUME_ROWS = 250  # about a year of sessions: recent liquidity, not the liquidity of years ago
MIN_TIER_SESSIONS = 60  # a symbol is tiered on at least a quarter of a year of sessions, never on a few days
QUARTER_MONTHS = (1, 4, 7, 10)
MEMBERS_FILE = "sp500_membership_intervals.csv"  # looked for beside the bars file when no --members is given
POINT_IN_TIME_KEYS = ("point_in_time", "periods", "source", "members", "built_by", "members_left_out")


@dataclass
class Universe:
    """One list of symbols by cap for every day."""

    caps: dict[str, list[str]]
    _cap_by_symbol: dict[str, str] = field(init=False, repr=False, compare=False)
    point_in_time = False

    def __post_init__(self) -> None:
        # First listing wins, matching the order in which symbols("all") walks the caps.
        self._cap_by_symbol = {}
        for name in reversed(CAPS):
            self._cap_by_symbol.update({symbol: name for symbol in self.caps.get(name, [])})

    def symbols(self, cap: str, on: date | None = None) -> list[str]:
        """The symbols of one cap, or of all caps ("all": large, then mid, then small); `on` changes nothing."""
        if cap == "all":
            return [symbol for name in CAPS for symbol in self.caps.get(name, [])]
        if cap not in CAPS:
            raise ConfigError(f"--cap: unknown cap {cap!r} (use large, mid, small or all)")
        return list(self.caps.get(cap, []))

    def cap_of(self, symbol: str, on: date | None = None) -> str | None:
        """The cap a symbol belongs to, or None when it is not in the universe."""
        return self._cap_by_symbol.get(symbol)

    def symbols_in_any_period(self, cap: str = "all") -> list[str]:
        """Every symbol the universe ever lists: for a fixed universe, its symbols."""
        return self.symbols(cap)

    def describe(self) -> str:
        return (f"one fixed list of {len(self._cap_by_symbol)} symbols for every day (survivorship: a list of today's "
                "members trades, in a replay, names known to have survived)")


@dataclass
class Period:
    start: date
    universe: Universe


@dataclass
class PointInTimeUniverse:
    """The members of each period; a period runs from its start until the next period's start."""

    periods: list[Period]
    source: str = ""
    members: str = ""
    built_by: str = ""
    members_left_out: list[str] = field(default_factory=list)
    point_in_time = True

    def __post_init__(self) -> None:
        self._starts = [period.start for period in self.periods]

    @property
    def first_day(self) -> date:
        """The first day with known members: a replay cannot start before it."""
        return self._starts[0]

    def period_on(self, on: date | None) -> Period:
        """The period holding `on`; without a day, the last period (the members a live trader has today)."""
        if on is None:
            return self.periods[-1]
        index = bisect.bisect_right(self._starts, on) - 1
        if index < 0:
            raise ConfigError(f"the point-in-time universe starts on {self._starts[0]}: no members known on {on}")
        return self.periods[index]

    def symbols(self, cap: str, on: date | None = None) -> list[str]:
        """The symbols of one cap (or "all") that are members on `on`, or in the last period without a day."""
        if cap != "all" and cap not in CAPS:
            raise ConfigError(f"--cap: unknown cap {cap!r} (use large, mid, small or all)")
        return self.period_on(on).universe.symbols(cap)

    def cap_of(self, symbol: str, on: date | None = None) -> str | None:
        """The cap of a symbol on `on` (the last period without a day), or None when it is not a member then."""
        return self.period_on(on).universe.cap_of(symbol)

    def symbols_in_any_period(self, cap: str = "all") -> list[str]:
        """Every symbol listed (in `cap`) in some period, in the order they first appear: the data a whole replay
        may need."""
        return list(dict.fromkeys(s for period in self.periods for s in period.universe.symbols(cap)))

    def describe(self) -> str:
        members = f"point-in-time members of {Path(self.members).name}" if self.members else "point-in-time members"
        text = (f"{members}, re-tiered quarterly on trailing dollar volume: {len(self.periods)} periods from "
                f"{self.periods[0].start}")
        if self.members_left_out:
            text += (f"; {len(self.members_left_out)} members of those years have no (or too few) bars in "
                     f"{Path(self.source).name or 'the source'} and are left out (survivorship remains for them)")
        return text


AnyUniverse = Universe | PointInTimeUniverse


class ClockedUniverse:
    """A point-in-time universe that answers for `today()` when no day is given: the runtime's clock, simulated in a
    backtest, so every caller of `symbols(cap)` and `cap_of(symbol)` sees the members of the day it runs on."""

    point_in_time = True

    def __init__(self, universe: PointInTimeUniverse, today: Callable[[], date]):
        self.universe = universe
        self._today = today

    def symbols(self, cap: str, on: date | None = None) -> list[str]:
        return self.universe.symbols(cap, on if on is not None else self._today())

    def cap_of(self, symbol: str, on: date | None = None) -> str | None:
        return self.universe.cap_of(symbol, on if on is not None else self._today())

    def symbols_in_any_period(self, cap: str = "all") -> list[str]:
        return self.universe.symbols_in_any_period(cap)

    @property
    def first_day(self) -> date:
        return self.universe.first_day

    def describe(self) -> str:
        return self.universe.describe()


def on_the_clock(universe: AnyUniverse, today: Callable[[], date]) -> AnyUniverse | ClockedUniverse:
    """A point-in-time universe answering for `today()`; a fixed universe as it is."""
    return ClockedUniverse(universe, today) if isinstance(universe, PointInTimeUniverse) else universe


# ------------------------------------------------------------------------------------------------ unknown symbols

UNKNOWN_REASON = "unknown symbol: the data source has no data for it"  # how a scan records one

def unknown_symbols(market: Any, symbols: Sequence[str], *, ask: bool = False) -> list[str]:
    """The symbols `market` has no data for at all, in the order given: a symbol the source does not know is named as
    unknown, never mistaken for one whose data is bad.

    A file source answers from its own list (`unknown_symbols` of the csv sources) and the synthetic market serves
    every symbol. A source whose list costs a request (Alpaca's asset list) is asked only with `ask`: a symbol
    typed on the command line is worth the request, a universe checked on every scan is not."""
    own = getattr(market, "unknown_symbols", None)
    if callable(own):
        return list(own(symbols))
    if not ask:
        return []
    known = set(market.known_symbols())
    return [symbol for symbol in dict.fromkeys(symbols) if symbol not in known]


def unknown_text(symbols: Sequence[str], limit: int | None = None) -> str:
    """'unknown symbol: XYZ' or 'unknown symbols: XYZ, QQQQ'; beyond `limit` names, 'and N more'."""
    named = list(symbols if limit is None else symbols[:limit])
    more = f" and {len(symbols) - len(named)} more" if len(symbols) > len(named) else ""
    return f"unknown symbol{'s' if len(symbols) != 1 else ''}: {', '.join(named)}{more}"


def refuse_unknown(market: Any, symbols: Sequence[str], option: str) -> None:
    """ConfigError (exit 2) naming every symbol given in `option` that the market has no data for."""
    unknown = unknown_symbols(market, symbols, ask=True)
    if unknown:
        raise ConfigError(f"{option}: {unknown_text(unknown)} ({_not_in(market)})")


def _not_in(market: Any) -> str:
    path = getattr(market, "path", None)
    return f"not in {path}" if path is not None else f"not known to the {getattr(market, 'name', '')} data source"


# ------------------------------------------------------------------------------------------------------ loading

def load_universe(path: str | Path) -> AnyUniverse:
    """Read and validate a universe file; any problem is one ConfigError line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: universe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read universe file ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(document, dict) and "point_in_time" in document:
        return _validated_point_in_time(path, document)
    return Universe(_validated_caps(path, document))


def _validated_caps(path: Path, document: object) -> dict[str, list[str]]:
    if not isinstance(document, dict) or set(document) != {"symbols"}:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise ConfigError(f"{path}: expected an object with exactly the key \"symbols\" (found {found})")
    caps = _validated_tiers(str(path), document["symbols"])
    if not any(caps.values()):
        raise ConfigError(f"{path}: the universe has no symbols")
    return caps


def _validated_tiers(where: str, tiers: object) -> dict[str, list[str]]:
    """The "symbols" object of a universe or of one period; `where` starts every error line."""
    if not isinstance(tiers, dict):
        raise ConfigError(f"{where}: \"symbols\" must be an object with keys large, mid, small")
    unknown = sorted(set(tiers) - set(CAPS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} in \"symbols\" (allowed: large, mid, small)")
    seen: dict[str, str] = {}
    return {cap: _validated_tier(where, cap, tiers.get(cap, []), seen) for cap in CAPS}


def _validated_tier(where: str, cap: str, entries: object, seen: dict[str, str]) -> list[str]:
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: \"{cap}\" must be a list of symbols")
    for symbol in entries:
        if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
            raise ConfigError(f"{where}: invalid symbol {symbol!r} in {cap} (expected e.g. AAPL or BRK.B)")
        if symbol in seen:
            place = cap if seen[symbol] == cap else f"{seen[symbol]} and {cap}"
            raise ConfigError(f"{where}: duplicate symbol {symbol!r} ({place})")
        seen[symbol] = cap
    return list(entries)


def _validated_point_in_time(path: Path, document: dict) -> PointInTimeUniverse:
    unknown = sorted(set(document) - set(POINT_IN_TIME_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (a point-in-time universe has the keys "
                          f"{', '.join(POINT_IN_TIME_KEYS)})")
    if document["point_in_time"] is not True:
        raise ConfigError(f"{path}: \"point_in_time\" must be true (or leave it out for a fixed universe)")
    for key in ("source", "members", "built_by"):
        if not isinstance(document.get(key, ""), str):
            raise ConfigError(f"{path}: \"{key}\" must be a string")
    left_out = document.get("members_left_out", [])
    if not isinstance(left_out, list) or not all(isinstance(symbol, str) for symbol in left_out):
        raise ConfigError(f"{path}: \"members_left_out\" must be a list of symbols")
    entries = document.get("periods")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: \"periods\" must be a non-empty list of {{\"from\": ..., \"symbols\": ...}}")
    periods: list[Period] = []
    for number, entry in enumerate(entries, start=1):
        period = _validated_period(path, number, entry)
        if periods and period.start <= periods[-1].start:
            raise ConfigError(f"{path}: period {number} (from {period.start}) does not start after period "
                              f"{number - 1} (from {periods[-1].start}): periods must be in date order, no overlap")
        periods.append(period)
    return PointInTimeUniverse(periods, document.get("source", ""), document.get("members", ""),
                               document.get("built_by", ""), list(left_out))


def _validated_period(path: Path, number: int, entry: object) -> Period:
    if not isinstance(entry, dict) or set(entry) != {"from", "symbols"}:
        raise ConfigError(f"{path}: period {number}: expected an object with exactly the keys \"from\" and \"symbols\"")
    start = _iso_date(entry["from"])
    if start is None:
        raise ConfigError(f"{path}: period {number}: bad \"from\" date {entry['from']!r} (expected YYYY-MM-DD)")
    caps = _validated_tiers(f"{path}: period {number} (from {start})", entry["symbols"])
    if not any(caps.values()):
        raise ConfigError(f"{path}: period {number} (from {start}) has no symbols")
    return Period(start, Universe(caps))


def _iso_date(text: object) -> date | None:
    if not isinstance(text, str) or not DATE_PATTERN.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------------ writing

def write_universe(universe: AnyUniverse, path: str | Path) -> None:
    """Write atomically (temp file + rename), so a scan never reads half a universe. The file gets the mode any new
    file gets (0644 under the usual umask 022), not the temp file's private 0600."""
    path = Path(path)
    if isinstance(universe, PointInTimeUniverse):
        lines = _point_in_time_lines(universe)
    else:
        lines = ["{", '  "symbols": {', *_tier_lines(universe, "    "), "  }", "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
        try:
            out.write("\n".join(lines + [""]))
            os.chmod(out.name, 0o666 & ~_umask())
        except BaseException:
            out.close()
            Path(out.name).unlink(missing_ok=True)
            raise
    os.replace(out.name, path)


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tier_lines(universe: Universe, indent: str) -> list[str]:
    lines = []
    for i, cap in enumerate(CAPS):
        comma = "," if i < len(CAPS) - 1 else ""
        lines.append(f'{indent}"{cap}": [' + _wrapped(universe.caps.get(cap, []), indent) + f"]{comma}")
    return lines


def _point_in_time_lines(universe: PointInTimeUniverse) -> list[str]:
    lines = ["{", '  "point_in_time": true,']
    for key in ("source", "members", "built_by"):
        lines.append(f'  "{key}": {json.dumps(getattr(universe, key))},')
    lines.append('  "members_left_out": [' + _wrapped(universe.members_left_out, "  ") + "],")
    lines.append('  "periods": [')
    for i, period in enumerate(universe.periods):
        lines += ["    {", f'      "from": "{period.start.isoformat()}",', '      "symbols": {']
        lines += _tier_lines(period.universe, "        ")
        lines += ["      }", "    }" + ("," if i < len(universe.periods) - 1 else "")]
    return lines + ["  ]", "}"]


def _wrapped(symbols: list[str], indent: str = "    ", per_line: int = 12) -> str:
    """A symbol list a person can read and diff: a dozen quoted symbols per line."""
    if not symbols:
        return ""
    quoted = [json.dumps(s) for s in symbols]
    rows = [", ".join(quoted[i:i + per_line]) for i in range(0, len(quoted), per_line)]
    return f"\n{indent}  " + f",\n{indent}  ".join(rows) + f"\n{indent}"


def summary(universe: AnyUniverse) -> str:
    """Symbols per cap, and for a point-in-time universe its periods and those of the first and last one."""
    if isinstance(universe, Universe):
        return ", ".join(f"{cap} {len(universe.symbols(cap))}" for cap in CAPS)
    first, last = universe.periods[0], universe.periods[-1]
    return (f"{len(universe.periods)} periods, {len(universe.symbols_in_any_period())} symbols in all; "
            f"from {first.start}: {summary(first.universe)}; from {last.start}: {summary(last.universe)}; "
            f"{len(universe.members_left_out)} index members left out (no or too few bars)")


# ----------------------------------------------------------------------------------------------------- building

def build_universe(source_file: str | Path, by: str, *, point_in_time: bool = False,
                   members_file: str | Path | None = None) -> AnyUniverse:
    """A universe from data: by="dollar-volume" (long-format bars file) or by="market-cap" (constituents file);
    `point_in_time` (dollar volume only) keeps each day's index members of `members_file` (default: MEMBERS_FILE
    beside the bars file)."""
    if by not in ("dollar-volume", "market-cap"):
        raise ConfigError(f"--by: unknown method {by!r} (use dollar-volume or market-cap)")
    if members_file is not None and not point_in_time:
        raise ConfigError("--members: only with --point-in-time")
    if point_in_time and by != "dollar-volume":
        raise ConfigError("--point-in-time: only with --by dollar-volume (a market-cap list has no history)")
    if point_in_time:
        members = Path(members_file) if members_file is not None else Path(source_file).with_name(MEMBERS_FILE)
        return _point_in_time_by_dollar_volume(Path(source_file), members)
    if by == "dollar-volume":
        return _by_dollar_volume(Path(source_file))
    return _by_market_cap(Path(source_file))


def _read_table(path: Path, usecols: list[str] | None = None, nrows: int | None = None,
                dtype: type | None = None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=usecols, nrows=nrows, dtype=dtype)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    except ValueError as exc:  # usecols naming a column the file does not have
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None


def _read_bars(path: Path) -> pd.DataFrame:
    """date, symbol, close, volume of the rows with a well-formed symbol, sorted by symbol then date."""
    header = _read_table(path, nrows=0).columns
    missing = [c for c in ("date", "symbol", "close", "volume") if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} for --by dollar-volume")
    frame = _read_table(path, usecols=["date", "symbol", "close", "volume"])
    frame = frame[frame["symbol"].astype(str).str.match(SYMBOL_PATTERN.pattern)]
    return frame.sort_values(["symbol", "date"], kind="stable")


def _in_thirds(dollar_volume: pd.Series) -> dict[str, list[str]]:
    """Symbols ranked by dollar volume, largest first (ties in symbol order), split into three tiers as equal as
    can be, the larger tiers first."""
    ranked = dollar_volume.sort_index(kind="stable").sort_values(ascending=False, kind="stable").index.tolist()
    tiers = np.array_split(np.array(ranked, dtype=object), len(CAPS))
    return {cap: [str(s) for s in tier] for cap, tier in zip(CAPS, tiers)}


def _by_dollar_volume(path: Path) -> Universe:
    """Median daily dollar volume over each symbol's last rows, ranked and split into three equal tiers."""
    frame = _read_bars(path)
    recent = frame.groupby("symbol", sort=False).tail(DOLLAR_VOLUME_ROWS)
    dollar_volume = (recent["close"] * recent["volume"]).groupby(recent["symbol"]).median().dropna()
    if len(dollar_volume) < len(CAPS):
        raise ConfigError(f"{path}: only {len(dollar_volume)} symbol(s) with usable prices and volumes")
    log.info("universe by dollar volume from %s: %d symbols", path, len(dollar_volume))
    return Universe(_in_thirds(dollar_volume))


# ------------------------------------------------------------------------------------------- point in time

def _point_in_time_by_dollar_volume(bars_path: Path, members_path: Path) -> PointInTimeUniverse:
    """Each day's index members with bars, re-tiered at the first session and at each quarter's first session on
    the median dollar volume of the DOLLAR_VOLUME_ROWS sessions before it (at least MIN_TIER_SESSIONS with a value).

    Periods also start on each membership change (moved to the next session of the file): a leaver is dropped that
    day; a joiner is placed that day by its own dollar volume before the day against the tier boundaries of the
    quarter's re-tier (the tiers of the others do not move), or, with fewer than MIN_TIER_SESSIONS sessions of bars
    before it, waits for the next re-tier. Nothing after a period's start shapes it."""
    intervals = _read_membership(members_path)
    panel = _dollar_volume_panel(bars_path)
    sessions = panel.index
    if len(sessions) <= MIN_TIER_SESSIONS:
        raise ConfigError(f"{bars_path}: only {len(sessions)} sessions; a point-in-time universe needs more than "
                          f"{MIN_TIER_SESSIONS} (the first tiers read {MIN_TIER_SESSIONS} sessions before them)")
    periods = _periods(panel, intervals)
    if not periods:
        raise ConfigError(f"{bars_path}: no index member of {members_path} has {MIN_TIER_SESSIONS} sessions of bars")
    left_out = _members_left_out(intervals, periods, sessions[-1])
    log.info("point-in-time universe from %s and %s: %d periods, %d members left out", bars_path,
             members_path, len(periods), len(left_out))
    return PointInTimeUniverse(periods, str(bars_path), str(members_path), "dollar-volume, point-in-time", left_out)


def _periods(panel: pd.DataFrame, intervals: pd.DataFrame) -> list[Period]:
    """The periods, in date order, each differing from the one before (a re-tier that changes nothing adds none)."""
    retiers = _retier_sessions(panel.index)
    starts = sorted(set(retiers) | _change_sessions(intervals, panel.index, retiers[0]))
    with_bars = set(panel.columns)
    periods: list[Period] = []
    tiers: dict[str, list[str]] = {}
    volume, bounds, previous = pd.Series(dtype=float), (0.0, 0.0), set()
    for start in starts:
        members = _members_on(intervals, start) & with_bars
        if start in retiers:
            volume = _trailing_dollar_volume(panel, start, sorted(members))
            tiers = _in_thirds(volume)
            bounds = _tier_bounds(volume, tiers)
        else:
            joiners = _trailing_dollar_volume(panel, start, sorted(members - previous))
            volume = pd.concat([volume.drop(joiners.index, errors="ignore"), joiners])
            tiers = _with_joiners(tiers, members, joiners, bounds, volume)
        previous = members
        universe = Universe(tiers)
        if universe.symbols("all") and (not periods or periods[-1].universe.caps != universe.caps):
            periods.append(Period(start.date(), universe))
    return periods


def _dollar_volume_panel(path: Path) -> pd.DataFrame:
    """close x volume by session (rows: the file's dates, sorted) and symbol (columns); NaN where there is none."""
    frame = _read_bars(path)
    frame = frame.assign(date=pd.to_datetime(frame["date"], errors="coerce", format="%Y-%m-%d"),
                         dollar_volume=pd.to_numeric(frame["close"], errors="coerce")
                         * pd.to_numeric(frame["volume"], errors="coerce"))
    frame = frame.dropna(subset=["date"]).drop_duplicates(["date", "symbol"], keep="last")
    if frame.empty:
        raise ConfigError(f"{path}: no rows with a date and a well-formed symbol")
    return frame.pivot(index="date", columns="symbol", values="dollar_volume").sort_index()


def _read_membership(path: Path) -> pd.DataFrame:
    """ticker, start, end (Timestamps; a missing end is far in the future) of each membership interval, one line
    naming the row for a bad date or symbol. A ticker is a member on days start <= day < end: the end date is the
    first day out, as in the file, where a replaced member's end is its successor's start."""
    frame = _read_table(path, usecols=["ticker", "start_date", "end_date"], dtype=str)
    start = pd.to_datetime(frame["start_date"], errors="coerce", format="%Y-%m-%d")
    end = pd.to_datetime(frame["end_date"], errors="coerce", format="%Y-%m-%d")
    bad = (~frame["ticker"].fillna("").str.match(SYMBOL_PATTERN.pattern) | start.isna()
           | (end.isna() & frame["end_date"].notna()) | (end <= start))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        values = ",".join("" if pd.isna(v) else str(v) for v in frame.iloc[row])
        raise ConfigError(f"{path}: line {row + 2}: bad membership interval {values!r} "
                          "(expected TICKER,YYYY-MM-DD,YYYY-MM-DD with the end after the start, or no end)")
    return pd.DataFrame({"ticker": frame["ticker"], "start": start, "end": end.fillna(pd.Timestamp.max)})


def _retier_sessions(sessions: pd.DatetimeIndex) -> list[pd.Timestamp]:
    """The first session with MIN_TIER_SESSIONS sessions before it, then the first session of each later quarter."""
    first = sessions[MIN_TIER_SESSIONS]
    month = sessions.month
    quarter_start = np.isin(month, QUARTER_MONTHS) & (month != np.roll(month, 1))
    return [first] + [day for day in sessions[quarter_start] if day > first]


def _change_sessions(intervals: pd.DataFrame, sessions: pd.DatetimeIndex, first: pd.Timestamp) -> set[pd.Timestamp]:
    """The sessions on which membership changes (a change on a day without a session counts from the next one)."""
    changes = pd.concat([intervals["start"], intervals["end"]])
    at = sessions.searchsorted(changes[(changes > first) & (changes <= sessions[-1])].unique())
    return set(sessions[at])


def _members_on(intervals: pd.DataFrame, day: pd.Timestamp) -> set[str]:
    return set(intervals["ticker"][(intervals["start"] <= day) & (day < intervals["end"])])


def _trailing_dollar_volume(panel: pd.DataFrame, day: pd.Timestamp, symbols: list[str]) -> pd.Series:
    """Median dollar volume of `symbols` over the DOLLAR_VOLUME_ROWS sessions before `day`, for those with at
    least MIN_TIER_SESSIONS values there."""
    end = panel.index.searchsorted(day)  # sessions strictly before the day
    window = panel.iloc[max(0, end - DOLLAR_VOLUME_ROWS):end][symbols]
    known = window.notna().sum() >= MIN_TIER_SESSIONS
    return window.loc[:, known].median().dropna()


def _with_joiners(tiers: dict[str, list[str]], members: set[str], joiners: pd.Series, bounds: tuple[float, float],
                  volume: pd.Series) -> dict[str, list[str]]:
    """The tiers without the symbols no longer members, with each joiner in the tier its dollar volume reaches
    (at least the smallest large, else at least the smallest mid, else small), each tier by dollar volume."""
    large_min, mid_min = bounds
    placed = {cap: [s for s in symbols if s in members] for cap, symbols in tiers.items()}
    for symbol, value in joiners.items():
        placed["large" if value >= large_min else "mid" if value >= mid_min else "small"].append(symbol)
    return {cap: _ranked(volume, symbols) for cap, symbols in placed.items()}


def _tier_bounds(volume: pd.Series, tiers: dict[str, list[str]]) -> tuple[float, float]:
    """The smallest dollar volume of the large tier and of the mid tier (a tier left empty takes the one above)."""
    large_min = volume[tiers["large"]].min() if tiers["large"] else np.inf
    return large_min, volume[tiers["mid"]].min() if tiers["mid"] else large_min


def _ranked(volume: pd.Series, symbols: list[str]) -> list[str]:
    return volume[sorted(symbols)].sort_values(ascending=False, kind="stable").index.tolist()


def _members_left_out(intervals: pd.DataFrame, periods: list[Period], last: pd.Timestamp) -> list[str]:
    """Index members during the universe's span (first period to the file's last session) listed in no period: no
    bars in the file (left the index, or listed there under another ticker) or too few before every re-tier."""
    first = pd.Timestamp(periods[0].start)
    during = intervals["ticker"][(intervals["start"] <= last) & (intervals["end"] > first)]
    listed = {symbol for period in periods for symbol in period.universe.symbols("all")}
    return sorted(set(during) - listed)


# ------------------------------------------------------------------------------------------------ market cap

def _column(path: Path, columns: pd.Index, candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"{path}: no {what} column (expected one of {', '.join(candidates)})")


def _by_market_cap(path: Path) -> Universe:
    """Tiers by market capitalisation; rows without a cap or with a malformed symbol are skipped and counted."""
    frame = _read_table(path)
    symbol_col = _column(path, frame.columns, ("Symbol", "symbol", "ticker", "Ticker"), "symbol")
    cap_col = _column(path, frame.columns, ("Market Cap", "market_cap", "MarketCap", "marketcap"), "market cap")
    symbols = frame[symbol_col].astype(str).str.strip()
    market_cap = pd.to_numeric(frame[cap_col], errors="coerce")
    usable = symbols.str.match(SYMBOL_PATTERN.pattern) & market_cap.notna() & (market_cap > 0)
    usable &= ~symbols.duplicated(keep="first")
    skipped = int((~usable).sum())
    if skipped:
        log.warning("%s: %d row(s) skipped (no market cap, bad or repeated symbol)", path, skipped)
    caps_by_symbol = market_cap[usable].set_axis(symbols[usable]).sort_values(ascending=False, kind="stable")
    tiers = {
        "large": caps_by_symbol[caps_by_symbol > LARGE_CAP_MIN].index.tolist(),
        "mid": caps_by_symbol[(caps_by_symbol >= MID_CAP_MIN) & (caps_by_symbol <= LARGE_CAP_MIN)].index.tolist(),
        "small": caps_by_symbol[caps_by_symbol < MID_CAP_MIN].index.tolist(),
    }
    log.info("universe by market cap from %s: %d large, %d mid, %d small, %d skipped", path,
             len(tiers["large"]), len(tiers["mid"]), len(tiers["small"]), skipped)
    return Universe(tiers)
