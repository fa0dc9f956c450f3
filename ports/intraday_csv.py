"""Market-data port `csv:PATH` over a file of intraday bars: replays what was knowable inside each session.

File format: a long CSV (gz allowed) with the header `timestamp,symbol,open,high,low,close,volume`, one row per bar
and symbol. `timestamp` is the bar's START, ISO-8601 with an offset or `Z` (e.g. 2024-06-14T13:30:00Z or
2024-06-14T09:30:00-04:00). Bars are 1 or 5 minutes long; the length is inferred per file from the smallest positive
gap between two timestamps of one symbol (a file mixes no lengths). Only regular-session bars count: a bar starting
before the NYSE open or at/after the close (early closes included) is ignored, so extended-hours rows may stay in
the file. A symbol missing from a bar simply did not trade in it. Two rows for one bar start and symbol that
disagree are refused (DataError naming them); a row repeated with the same values is dropped with a warning.
`python main.py data download --timeframe 1Min` writes this format.

What the source serves (common/types.py):
- `bars()`: daily bars aggregated from the regular-session bars (open of the first, highest high, lowest low,
  close of the last, summed volume). SPY, when the file has none, comes from the SPY/VIX daily market file.
- `snapshot()` (view INTRADAY): at a session fraction, the bars that have ENDED by then (a bar ends at its start
  plus the bar length): price = close of the last completed bar, high/low/volume so far over those bars,
  open = the session's first bar's open. The first bar's open is the opening print: it is known from that bar's
  start, so at the opening bell (fraction 0) price, high and low are the open and volume so far is 0. A symbol
  whose first bar has not started yet (or that has no bar that session) is NaN. prev_close is the symbol's last
  close of an earlier session in the file. Bid and ask sit half of a 0.10% spread either side of the price.
  SPY from the daily market file shows what a daily bar makes knowable (its open before the close).
- `session_bars()`: the session's regular bars as SessionBars, `ends` as session fractions.

The file is parsed once and cached as an .npz (ports/market_sources.load_cached, kind "intraday"): bars sorted by
session, start and symbol, plus the daily aggregates. A snapshot reads per-session running values (last close,
high, low and volume after each bar) built once per session, so the ~30 snapshots of a replayed session cost a
row lookup each. Memory: about 50 bytes per bar (a year of 5-minute bars of 500 symbols is ~10M bars, ~0.5 GB).
"""
from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from common.clock import calendar
from common.errors import DataError
from common.types import BAR_FIELDS, INTRADAY, Panel, SessionBars, Snapshot
from ports.market_sources import (
    SPREAD,
    FileMarket,
    close_before_table,
    load_cached,
    one_line,
    positions,
    read_csv,
    unique_rows,
    window,
)

log = logging.getLogger(__name__)

INTRADAY_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
BAR_SECONDS = (60, 300)  # the bar lengths a file may have
END_TOLERANCE = 1e-9  # a bar ending within this session fraction of a moment counts as ended by then
_OFFSET_PATTERN = r"(?:Z|z|[+-]\d{2}:?\d{2})$"
_MEMO_SIZE = 32
_SESSION_MEMO_SIZE = 4  # per-session running values kept (a replay walks forward; a scan revisits its session)


def is_intraday_file(path: str | Path) -> bool:
    """True when the CSV's header has a `timestamp` column (reads the first line only; an unreadable file is not
    intraday, and the daily reader then reports why it cannot be read)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            header = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error):
        return False
    return "timestamp" in [name.strip().strip('"').lstrip("\ufeff") for name in header.split(",")]


# ----------------------------------------------------------------------------------------------------------- parse

def parse_intraday_file(path: Path) -> dict[str, np.ndarray]:
    """The file's regular-session bars, sorted by (session, start, symbol), and their daily aggregates."""
    frame = _read_rows(path)
    seconds = _utc_seconds(path, frame["timestamp"])
    symbol_codes, symbols = pd.factorize(frame["symbol"].str.strip().to_numpy(), sort=True)
    values = {name: frame[name].to_numpy(dtype=np.float64) for name in BAR_FIELDS}
    keep = unique_rows(path, seconds * max(len(symbols), 1) + symbol_codes, values,
                       lambda row: f"{symbols[symbol_codes[row]]} at {_utc_text(int(seconds[row]))}")
    seconds, symbol_codes = seconds[keep], symbol_codes[keep]
    values = {name: column[keep] for name, column in values.items()}
    bar_seconds = _bar_length(path, seconds, symbol_codes)
    opens, spans, days = _candidate_sessions(seconds)
    session, offset = _regular_session(seconds, opens, spans)
    regular = session >= 0
    if not regular.any():
        raise DataError(f"{path}: no regular-session bars (bars must start between the NYSE open and close)")
    log.info("%s: %d of %d bars are in regular sessions", path, int(regular.sum()), len(regular))
    present, session = np.unique(session[regular], return_inverse=True)
    offset, symbol_codes = offset[regular], symbol_codes[regular]
    values = {name: column[regular] for name, column in values.items()}
    order = np.lexsort((symbol_codes, offset, session))
    session, offset, symbol_codes = session[order], offset[order], symbol_codes[order]
    values = {name: column[order] for name, column in values.items()}
    arrays: dict[str, np.ndarray] = {
        "symbols": np.asarray(symbols, dtype=str), "sessions": days[present],
        "session_opens": opens[present], "session_spans": spans[present], "bar_seconds": np.array(bar_seconds),
        "row_start": np.searchsorted(session, np.arange(len(present) + 1)).astype(np.int64),
        "offset": offset.astype(np.int32), "symbol_code": symbol_codes.astype(np.int32), **values}
    arrays.update(_daily_aggregates(session, offset, symbol_codes, values, len(present), len(symbols)))
    log.info("parsed %s: %d bars of %d s, %d sessions, %d symbols", path, len(offset), bar_seconds, len(present),
             len(symbols))
    return arrays


def _read_rows(path: Path) -> pd.DataFrame:
    frame = read_csv(path, INTRADAY_COLUMNS, BAR_FIELDS, what="intraday bars")
    frame = frame.dropna(subset=["timestamp", "symbol"])
    if frame.empty:
        raise DataError(f"{path}: no rows of intraday bars")
    return frame


def _utc_seconds(path: Path, stamps: pd.Series) -> np.ndarray:
    """Unix seconds of each timestamp; a timestamp without an offset is refused (New York or UTC? nobody knows)."""
    stamps = stamps.str.strip()
    naive = ~stamps.str.contains(_OFFSET_PATTERN, regex=True)
    if naive.any():
        raise DataError(f"{path}: timestamp {stamps[naive].iloc[0]!r} has no UTC offset "
                        f"(use e.g. 2024-06-14T13:30:00Z or 2024-06-14T09:30:00-04:00)")
    try:
        moments = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: bad timestamp ({one_line(exc)})") from None
    return moments.asi8 // 1_000_000_000


def _utc_text(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _bar_length(path: Path, seconds: np.ndarray, symbol_codes: np.ndarray) -> int:
    """60 or 300: the smallest positive gap between two bars of one symbol."""
    order = np.lexsort((seconds, symbol_codes))
    gaps = np.diff(seconds[order])
    same_symbol = np.diff(symbol_codes[order]) == 0
    positive = gaps[same_symbol & (gaps > 0)]
    if positive.size == 0:
        raise DataError(f"{path}: cannot tell the bar length (no symbol has two bars); bars must be 1 or 5 minutes")
    smallest = int(positive.min())
    for length in sorted(BAR_SECONDS, reverse=True):
        if smallest % length == 0:
            return length
    raise DataError(f"{path}: bars {smallest} s apart; bars must be 1 or 5 minutes (timestamps on whole minutes)")


def _candidate_sessions(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open (unix s), length (s) and date of every NYSE session that the timestamps may fall in."""
    first = pd.Timestamp(int(seconds.min()), unit="s").date()
    last = pd.Timestamp(int(seconds.max()), unit="s").date()
    cal = calendar()
    days = cal.sessions(first - timedelta(days=1), last + timedelta(days=1))
    sessions = [cal.session(day) for day in days]
    opens = np.array([int(s.open.timestamp()) for s in sessions], dtype=np.int64)
    spans = np.array([int((s.close - s.open).total_seconds()) for s in sessions], dtype=np.int64)
    return opens, spans, np.array(days, dtype="datetime64[D]")


def _regular_session(seconds: np.ndarray, opens: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the session each bar starts in (-1 outside regular hours) and its start in seconds after the open."""
    index = np.searchsorted(opens, seconds, side="right") - 1
    offset = seconds - opens[np.maximum(index, 0)]
    inside = (index >= 0) & (offset < spans[np.maximum(index, 0)]) if len(opens) else np.zeros(len(seconds), bool)
    return np.where(inside, index, -1), offset


def _daily_aggregates(session: np.ndarray, offset: np.ndarray, symbol_codes: np.ndarray,
                      values: dict[str, np.ndarray], days: int, width: int) -> dict[str, np.ndarray]:
    """Sessions x symbols daily bars from the regular bars: first open, max high, min low, last close, volume."""
    order = np.lexsort((offset, symbol_codes, session))
    key = session[order].astype(np.int64) * width + symbol_codes[order]
    starts = np.flatnonzero(np.r_[True, np.diff(key) != 0])
    ends = np.r_[starts[1:], len(key)] - 1
    rows, cols = session[order][starts], symbol_codes[order][starts]
    reduced = {
        "open": values["open"][order][starts],
        "high": np.fmax.reduceat(values["high"][order], starts),
        "low": np.fmin.reduceat(values["low"][order], starts),
        "close": values["close"][order][ends],
        "volume": np.add.reduceat(np.nan_to_num(values["volume"][order]), starts),
    }
    out = {}
    for name in BAR_FIELDS:
        grid = np.full((days, width), np.nan)
        grid[rows, cols] = reduced[name]
        out[f"daily_{name}"] = grid
    return out


# ----------------------------------------------------------------------------------------------------------- source

@dataclass(frozen=True)
class _SessionView:
    """One session's bars on a (bars x symbols) grid, and the running values after each bar (row k = after k bars
    ended; row 0 = before any, showing the opening print)."""

    ends: np.ndarray  # (K,) session fraction at which each bar ends
    first_start: np.ndarray  # (S,) session fraction at which each symbol's first bar starts (inf: no bar)
    grid: dict[str, np.ndarray]  # field -> (K, S)
    running: dict[str, np.ndarray]  # open, high, low, price, volume -> (K + 1, S)


def _session_view(offsets: np.ndarray, symbol_codes: np.ndarray, values: dict[str, np.ndarray], width: int,
                  span: float, bar_seconds: int) -> _SessionView:
    starts, bar_index = np.unique(offsets, return_inverse=True)
    grid = {}
    for name in BAR_FIELDS:
        cells = np.full((len(starts), width), np.nan)
        cells[bar_index, symbol_codes] = values[name]
        grid[name] = cells
    traded = np.isfinite(grid["close"])
    has_bar = traded.any(axis=0)
    first = np.argmax(traded, axis=0)
    columns = np.arange(width)
    first_open = np.where(has_bar, grid["open"][first, columns], np.nan)
    first_start = np.where(has_bar, starts[first] / span, np.inf)
    price = _forward_filled(np.vstack([first_open, grid["close"]]))
    volume = np.cumsum(np.nan_to_num(np.vstack([np.zeros(width), grid["volume"]])), axis=0)
    unknown = np.isnan(price)
    volume[unknown] = np.nan
    running = {
        "open": np.where(unknown, np.nan, first_open[None, :]),
        "high": np.fmax.accumulate(np.vstack([first_open, grid["high"]]), axis=0),
        "low": np.fmin.accumulate(np.vstack([first_open, grid["low"]]), axis=0),
        "price": price,
        "volume": volume,
    }
    ends = np.minimum((starts + bar_seconds) / span, 1.0)
    return _SessionView(ends, first_start, grid, running)


def _forward_filled(rows: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last finite value above it in its column (NaN while there is none)."""
    index = np.where(np.isfinite(rows), np.arange(rows.shape[0])[:, None], 0)
    np.maximum.accumulate(index, axis=0, out=index)
    return rows[index, np.arange(rows.shape[1])[None, :]]


class IntradayCsvMarket(FileMarket):
    """Replays real intraday bars from a long-format CSV; SPY and VIX daily series come from a market file."""

    name = "csv"
    static_history = True  # the file does not change while it is open (flows/prepared_history.py)

    def __init__(self, path: str | Path, market_path: str | Path | None = None, cache_dir: Path | None = None):
        self._open_files(path, market_path, cache_dir)
        arrays = load_cached(self.path, self.cache_dir, parse_intraday_file, "intraday")
        self.dates: np.ndarray = arrays["sessions"]
        self.symbols: list[str] = [str(s) for s in arrays["symbols"]]
        self.bar_seconds = int(arrays["bar_seconds"])
        self._bars_of = arrays  # the long bar arrays and the session index into them
        self._daily = {name: arrays[f"daily_{name}"] for name in BAR_FIELDS}
        self._close_before = close_before_table(self._daily["close"])
        self._column = {symbol: j for j, symbol in enumerate(self.symbols)}
        self._views: dict[int, _SessionView] = {}
        self._columns_memo: dict[tuple, np.ndarray] = {}

    # --- daily bars

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        """Daily bars from the regular-session bars; memoised with shared read-only arrays, as CsvMarket does."""
        key = (tuple(symbols), start, end)
        stored = self._bars_memo.get(key)
        if stored is None:
            stored = self._daily_panel(list(symbols), start, end)
            for array in (stored.dates, *(getattr(stored, name) for name in BAR_FIELDS)):
                array.flags.writeable = False
            _remember(self._bars_memo, key, stored)
        return Panel(stored.dates, list(stored.symbols), *(getattr(stored, name) for name in BAR_FIELDS))

    def _daily_panel(self, symbols: list[str], start: date, end: date) -> Panel:
        dates = self.dates[window(self.dates, start, end)]
        serve_spy = self._spy_from_market(symbols)
        if serve_spy:
            market_dates = self._market_arrays()["dates"]
            dates = np.union1d(dates, market_dates[window(market_dates, start, end)])
        rows, columns = positions(self.dates, dates), self._columns(symbols)
        fields = {name: _gather(self._daily[name], rows, columns) for name in BAR_FIELDS}
        if serve_spy:
            market = self._market_arrays()
            market_rows = positions(market["dates"], dates)
            for name in BAR_FIELDS:
                spy = np.where(market_rows >= 0, market[f"spy_{name}"][np.maximum(market_rows, 0)], np.nan)
                fields[name][:, [j for j, s in enumerate(symbols) if s == "SPY"]] = spy[:, None]
        return Panel(dates, symbols, *(fields[name] for name in BAR_FIELDS))

    # --- the intraday view

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        symbols = list(symbols)
        day = self._session_row(session)
        view = self._view(day)
        fraction = float(min(1.0, max(0.0, fraction)))
        ended = int(np.searchsorted(view.ends, fraction + END_TOLERANCE, side="right"))
        columns = self._columns(symbols)
        unseen = (columns < 0) | (view.first_start[np.maximum(columns, 0)] > fraction + END_TOLERANCE)
        fields = {}
        for name, running in view.running.items():
            values = running[ended].take(np.maximum(columns, 0))
            values[unseen] = np.nan
            fields[name] = values
        prev_close = _gather(self._close_before, np.array([day]), columns)[0]
        if self._spy_from_market(symbols):
            self._spy_knowable(fields, prev_close, symbols, session, fraction)
        half_spread = fields["price"] * SPREAD / 2.0
        return Snapshot(session=session, fraction=fraction, symbols=symbols, open=fields["open"],
                        high=fields["high"], low=fields["low"], price=fields["price"], volume=fields["volume"],
                        prev_close=prev_close, bid=fields["price"] - half_spread, ask=fields["price"] + half_spread,
                        view=INTRADAY)

    def session_bars(self, symbols: Sequence[str], session: date) -> SessionBars:
        """The session's regular bars in time order; SPY from the daily market file has none (NaN)."""
        symbols = list(symbols)
        view = self._view(self._session_row(session))
        columns = self._columns(symbols)
        arrays = {name: _gather(view.grid[name], np.arange(len(view.ends)), columns) for name in BAR_FIELDS}
        return SessionBars(session=session, symbols=symbols, ends=view.ends.copy(), **arrays)

    def _session_row(self, session: date) -> int:
        row = int(positions(self.dates, np.array([session], dtype="datetime64[D]"))[0])
        if row < 0:
            raise DataError(f"no data for session {session} in {self.path} "
                            f"(covers {self.first_date} .. {self.last_date})")
        return row

    def _view(self, day: int) -> _SessionView:
        view = self._views.get(day)
        if view is None:
            bars = self._bars_of
            rows = slice(int(bars["row_start"][day]), int(bars["row_start"][day + 1]))
            view = _session_view(bars["offset"][rows], bars["symbol_code"][rows],
                                 {name: bars[name][rows] for name in BAR_FIELDS}, len(self.symbols),
                                 float(bars["session_spans"][day]), self.bar_seconds)
            if len(self._views) >= _SESSION_MEMO_SIZE:
                self._views.pop(next(iter(self._views)))
            self._views[day] = view
        return view

    def _spy_knowable(self, fields: dict[str, np.ndarray], prev_close: np.ndarray, symbols: list[str],
                      session: date, fraction: float) -> None:
        """SPY from the daily market file: its open before the close (volume unknown), the whole bar from the close."""
        market = self._market_arrays()
        row = int(positions(market["dates"], np.array([session], dtype="datetime64[D]"))[0])
        bar = {name: market[f"spy_{name}"][row] if row >= 0 else np.nan for name in BAR_FIELDS}
        whole = fraction >= 1.0
        known = {"open": bar["open"], "price": bar["close"] if whole else bar["open"],
                 "high": bar["high"] if whole else bar["open"], "low": bar["low"] if whole else bar["open"],
                 "volume": bar["volume"] if whole else np.nan}
        for j, symbol in enumerate(symbols):
            if symbol == "SPY":
                for name, value in known.items():
                    fields[name][j] = value
                prev_close[j] = market["spy_close"][row - 1] if row > 0 else np.nan

    def _columns(self, symbols: Sequence[str]) -> np.ndarray:
        """Each symbol's column (-1 when the file does not have it); memoised, a replay asks for the same lists."""
        key = tuple(symbols)
        columns = self._columns_memo.get(key)
        if columns is None:
            columns = np.array([self._column.get(s, -1) for s in symbols], dtype=np.int64)
            _remember(self._columns_memo, key, columns)
        return columns


def _gather(table: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """`table` at `rows` (-1: NaN row) and `columns` (-1: NaN column), as a new array."""
    out = table.take(np.maximum(rows, 0), axis=0).take(np.maximum(columns, 0), axis=1)
    out[:, columns < 0] = np.nan
    out[rows < 0, :] = np.nan
    return out


def _remember(memo: dict, key: tuple, value) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.pop(next(iter(memo)))  # the oldest request goes first
    memo[key] = value
