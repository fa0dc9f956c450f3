"""Market-data port implementations: `sim` (synthetic, offline) and `csv:PATH` (replay of real daily bars).

Both serve daily bars as a Panel and DAILY snapshots (common/types.py): at a moment before the close a snapshot
shows only what daily bars make knowable then, today's open (price, high and low so far are the open) and the
previous close, with volume so far unknown (NaN); from the close on it shows the whole bar. Nothing derived from
today's high, low, close or volume reaches a decision made during the session. Bid and ask sit half of a 0.10%
spread either side of the price.

The csv source pivots the long-format file once into dates x symbols arrays and caches them as an .npz keyed by the
source's absolute path, size, modification time and a digest of its first and last 64 KiB, so later processes load
in milliseconds and a changed or cut-off file is always parsed again.

Bad input is refused, never half read: a gzip file cut short or a plain CSV ending in the middle of a row is one
DataError naming the file; two rows for one date and symbol that disagree are a DataError naming them; a row
repeated with the same values is dropped with a warning naming it. A symbol the file does not hold is unknown
(`unknown_symbols`), which a scan reports as such rather than as a symbol with bad data.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import zipfile
import zlib
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from common.clock import calendar
from common.errors import DataError
from common.types import BAR_FIELDS, DAILY, Panel, Snapshot
from config import home
from ports import sim_market

log = logging.getLogger(__name__)

SIM_EPOCH = date(2010, 1, 4)  # session index 0 of the synthetic market; its paths are fixed from here on
SPREAD = 0.001  # full bid/ask spread quoted in snapshots, as a share of the price
STOCK_COLUMNS = ("date", "symbol", "open", "high", "low", "close", "volume")
# A market file may also carry SPY's raw (price-only) close or its dividend per share, for a price-return benchmark
# beside the dividend-adjusted spy_close (backtest/benchmarks.py); ../shared/data's carries neither.
OPTIONAL_MARKET_COLUMNS = ("spy_close_raw", "spy_dividend")
DIVIDEND = "dividend"  # optional column: cash per share paid to holders at the open of that date (the ex-date)
MARKET_COLUMNS = ("date", "spy_open", "spy_high", "spy_low", "spy_close", "spy_volume",
                  "vix_open", "vix_high", "vix_low", "vix_close")
_BARS_MEMO_SIZE = 32  # recent bars requests a CsvMarket keeps (a backtest session repeats a handful of them)
SAMPLE_BYTES = 1 << 16  # read from each end of a source for its cache signature
_CACHE_FORMAT = 3  # bump when the cached layout changes, so old cache files are reparsed (3: dividend columns)


def default_cache_dir() -> Path:
    """Where parsed files are cached when no cache folder is given: data/cache in the home folder (CACHE_DIR's
    default)."""
    return home() / "data" / "cache"


def daily_snapshot(session: date, fraction: float, symbols: Sequence[str], bar: dict[str, np.ndarray],
                   prev_close: np.ndarray) -> Snapshot:
    """The DAILY Snapshot of one session's bars (arrays per field, one entry per symbol) at `fraction`: the open
    before the close, the whole bar from the close on."""
    fraction = float(min(1.0, max(0.0, fraction)))
    o = np.asarray(bar["open"], dtype=float)
    if fraction >= 1.0:
        price, high, low = (np.asarray(bar[name], dtype=float).copy() for name in ("close", "high", "low"))
        volume = np.asarray(bar["volume"], dtype=float).copy()
    else:
        price, high, low = o.copy(), o.copy(), o.copy()
        volume = np.full(o.shape, np.nan)
    half_spread = price * SPREAD / 2.0
    return Snapshot(session=session, fraction=fraction, symbols=list(symbols), open=o.copy(), high=high,
                    low=low, price=price, volume=volume, prev_close=np.asarray(prev_close, dtype=float),
                    bid=price - half_spread, ask=price + half_spread, view=DAILY)


# ----------------------------------------------------------------------------------------------------------- sim

@functools.lru_cache(maxsize=1)
def _sim_sessions() -> np.ndarray:
    """NYSE sessions from SIM_EPOCH on (datetime64[D]); a session's position is its index in the sim model."""
    days = calendar().sessions(SIM_EPOCH, date(2200, 1, 1))
    return np.array(days, dtype="datetime64[D]")


class SimMarket:
    """A deterministic synthetic market for any symbol, plus SPY and VIX, from SIM_EPOCH on (ports/sim_market.py)."""

    name = "sim"
    static_history = True  # completed sessions never change (flows/prepared_history.py)
    first_date = SIM_EPOCH
    market_first_date = SIM_EPOCH

    def __init__(self, symbols: Sequence[str] | None = None):
        self._known = list(symbols or [])

    def _day_range(self, start: date, end: date) -> tuple[int, int]:
        if start < SIM_EPOCH:
            raise DataError(f"the sim market starts on {SIM_EPOCH}; no data from {start}")
        sessions = _sim_sessions()
        lo = int(np.searchsorted(sessions, np.datetime64(start, "D")))
        hi = int(np.searchsorted(sessions, np.datetime64(end, "D"), side="right")) - 1
        return lo, hi

    def _session_index(self, session: date) -> int:
        lo, hi = self._day_range(session, session)
        if hi != lo:
            raise DataError(f"no data for session {session} in the sim market ({session} is not an NYSE session)")
        return lo

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        lo, hi = self._day_range(start, end)
        symbols = list(symbols)
        if hi < lo or not symbols:
            return _empty_panel(symbols, _sim_sessions()[lo:max(lo, hi + 1)])
        daily = sim_market.daily_bars(symbols, lo, hi)
        return Panel(_sim_sessions()[lo:hi + 1], symbols, daily.open, daily.high, daily.low, daily.close,
                     daily.volume)

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        day = self._session_index(session)
        symbols = list(symbols)
        daily = sim_market.daily_bars(symbols, day, day)
        bar = {name: getattr(daily, name)[0] for name in BAR_FIELDS}
        return daily_snapshot(session, fraction, symbols, bar, daily.prev_close[0])

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        lo, hi = self._day_range(start, end)
        index = pd.DatetimeIndex(_sim_sessions()[lo:hi + 1], name="date")
        if hi < lo:
            return pd.DataFrame({name: [] for name in MARKET_COLUMNS[1:]}, index=index, dtype=float)
        return pd.DataFrame(sim_market.market_series(lo, hi), index=index)[list(MARKET_COLUMNS[1:])]

    def known_symbols(self) -> list[str]:
        return list(self._known)

    def unknown_symbols(self, symbols: Sequence[str]) -> list[str]:
        """None: the synthetic market draws a path for any symbol."""
        return []


def _empty_panel(symbols: list[str], dates: np.ndarray) -> Panel:
    shape = (len(dates), len(symbols))
    fields = [np.full(shape, np.nan) for _ in BAR_FIELDS]
    return Panel(dates, symbols, *fields)


# ----------------------------------------------------------------------------------------------------------- cache

def _signature(source: Path, kind: str) -> str:
    stat = source.stat()
    return (f"{source.resolve()}|{kind}|{stat.st_size}|{stat.st_mtime_ns}|{_content_sample(source, stat.st_size)}|"
            f"{_CACHE_FORMAT}")


def _content_sample(source: Path, size: int) -> str:
    """A digest of the file's first and last SAMPLE_BYTES. Size and modification time miss a file rewritten with
    the same size within the clock's resolution, or restored with its old time kept; the content does not (a gzip
    file's last bytes are the CRC and length of everything it holds, and a cut-off file loses them)."""
    with open(source, "rb") as handle:
        head = handle.read(SAMPLE_BYTES)
        handle.seek(max(len(head), size - SAMPLE_BYTES))
        tail = handle.read(SAMPLE_BYTES)
    return hashlib.sha256(head + tail).hexdigest()[:16]


def _cache_file(source: Path, cache_dir: Path, kind: str) -> Path:
    """One cache file per source path and kind of file it was read as (a stocks file given as the market file must
    be parsed as one, not served the stock arrays); valid only while the stored signature matches."""
    digest = hashlib.sha256(f"{source.resolve()}|{kind}".encode("utf-8")).hexdigest()[:16]
    return cache_dir / f"{source.name.split('.')[0]}-{digest}.npz"


def _read_cache(cache_path: Path, signature: str) -> dict[str, np.ndarray] | None:
    if not cache_path.exists():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("market-data cache %s is unreadable (%s); parsing the source again", cache_path, exc)
        return None
    if str(arrays.pop("_signature", "")) != signature:
        return None
    return arrays


def _write_cache(cache_path: Path, signature: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a cache file."""
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_path.parent, suffix=".tmp", delete=False) as handle:
            np.savez(handle, _signature=np.array(signature), **arrays)
        os.replace(handle.name, cache_path)
    except OSError as exc:
        # A read-only or full disk only costs speed; the data itself was parsed fine.
        log.warning("cannot write market-data cache %s: %s", cache_path, exc)


def load_cached(source: Path, cache_dir: Path | None, parse: Callable[[Path], dict[str, np.ndarray]],
                kind: str) -> dict[str, np.ndarray]:
    """Arrays parsed from `source` as a `kind` file ("stocks" or "market"), from the cache when it is current, else
    parsed and cached."""
    try:
        signature = _signature(source, kind)
    except OSError as exc:
        raise DataError(f"{source}: cannot read market data ({exc.strerror or exc})") from None
    cache_path = _cache_file(source, cache_dir or default_cache_dir(), kind)
    arrays = _read_cache(cache_path, signature)
    if arrays is None:
        arrays = parse(source)
        _write_cache(cache_path, signature, arrays)
    return arrays


# ----------------------------------------------------------------------------------------------------------- csv

def read_csv(path: Path, required: Sequence[str], numeric: Sequence[str], optional: Sequence[str] = (),
             what: str = "market data") -> pd.DataFrame:
    """The required columns of a CSV (gz allowed) and those of `optional` it has, numeric ones as float64, or
    DataError naming the file and what is wrong (`what` says what the file holds)."""
    try:
        header = pd.read_csv(path, nrows=0)
        missing = [name for name in required if name not in header.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(expected {','.join(required)})")
        present = [name for name in optional if name in header.columns]
        frame = pd.read_csv(path, usecols=[*required, *present],
                            dtype={name: str for name in ("date", "timestamp", "symbol") if name in required})
        numeric = [*numeric, *present]
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read {what} ({one_line(exc)})") from None
    cut = _cut_off_line(path, len(header.columns))
    if cut is not None:
        raise DataError(f"{path}: the file ends in the middle of a row ({cut[:60]!r}); it looks truncated")
    for name in numeric:
        frame[name] = _as_numbers(path, name, frame[name])
    return frame


def _cut_off_line(path: Path, columns: int) -> str | None:
    """The last line of a plain CSV that stops in the middle of a row (a copy or download cut short), else None.
    pandas reads such a row with the missing cells as NaN, which would pass for data; a gzip file needs no check
    (its end-of-stream marker is missing, and reading it fails)."""
    if path.suffix.lower() != ".csv":
        return None
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 4096))
        tail = handle.read()
    if not tail or tail.endswith((b"\n", b"\r")):
        return None
    last = tail.rsplit(b"\n", 1)[-1]
    return last.decode("utf-8", errors="replace") if last.count(b",") < columns - 1 else None


def _as_numbers(path: Path, name: str, values: pd.Series) -> pd.Series:
    """A numeric column as float64; text cells become NaN (the scanner skips them) and are counted."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64)
    numbers = pd.to_numeric(values, errors="coerce")
    garbled = int((numbers.isna() & values.notna()).sum())
    if garbled:
        log.warning("%s: %d non-numeric value(s) in column %s read as missing", path, garbled, name)
    return numbers.astype(np.float64)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _parse_dates(path: Path, values: pd.Series) -> np.ndarray:
    try:
        return pd.to_datetime(values, format="ISO8601").to_numpy().astype("datetime64[D]")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: bad date ({one_line(exc)})") from None


def parse_stock_file(path: Path) -> dict[str, np.ndarray]:
    """Pivot a long-format daily file into dates x symbols float64 arrays (NaN where a symbol has no row)."""
    frame = read_csv(path, STOCK_COLUMNS, BAR_FIELDS, optional=(DIVIDEND,))
    frame = frame.dropna(subset=["date", "symbol"])
    day = _parse_dates(path, frame["date"])
    date_codes, dates = pd.factorize(day, sort=True)
    symbol_codes, symbols = pd.factorize(frame["symbol"].str.strip().to_numpy(), sort=True)
    fields = (*BAR_FIELDS, *([DIVIDEND] if DIVIDEND in frame.columns else []))
    values = {name: frame[name].to_numpy(dtype=np.float64) for name in fields}
    keep = unique_rows(path, date_codes * len(symbols) + symbol_codes, values,
                       lambda row: f"{symbols[symbol_codes[row]]} on {np.datetime64(dates[date_codes[row]], 'D')}")
    arrays: dict[str, np.ndarray] = {"dates": np.asarray(dates, dtype="datetime64[D]"),
                                     "symbols": np.asarray(symbols, dtype=str)}
    for name in fields:
        grid = np.full((len(dates), len(symbols)), np.nan)
        grid[date_codes[keep], symbol_codes[keep]] = values[name][keep]
        arrays[name] = grid
    log.info("parsed %s: %d rows, %d dates, %d symbols", path, len(frame), len(dates), len(symbols))
    return arrays


def unique_rows(path: Path, keys: np.ndarray, values: dict[str, np.ndarray], name_of: Callable[[int], str],
                max_named: int = 3) -> np.ndarray:
    """Mask keeping the first row of each key (a date and symbol, or a bar's start and symbol).

    A row repeated with the same values is dropped with a warning naming it (a file concatenated twice is still
    the same data). Rows that share a key but disagree are a DataError naming the first ones and the columns
    that differ: which of two bars for one day is true cannot be guessed, and keeping either silently would trade
    on a price that may never have existed."""
    repeated = pd.Series(keys).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return np.ones(len(keys), dtype=bool)
    rows = np.flatnonzero(repeated)
    frame = pd.DataFrame({name: column[rows] for name, column in values.items()})
    frame.insert(0, "_key", keys[rows])
    distinct = frame.drop_duplicates()  # missing values compare equal here: the same NaN volume is the same row
    conflicting = distinct[distinct["_key"].duplicated(keep=False)]
    if len(conflicting):
        first = conflicting[conflicting["_key"] == conflicting["_key"].iloc[0]]
        differ = [name for name in values if first[name].nunique(dropna=False) > 1]
        shown = ", ".join(f"{name} " + " vs ".join(f"{v:g}" for v in first[name]) for name in differ)
        keys_in_conflict = conflicting["_key"].unique()
        named = [name_of(int(rows[np.argmax(keys[rows] == key)])) for key in keys_in_conflict[:max_named]]
        more = f" and {len(keys_in_conflict) - max_named} more" if len(keys_in_conflict) > max_named else ""
        raise DataError(f"{path}: conflicting duplicate rows for {', '.join(named)}{more} ({shown}); "
                        f"keep one row per key in the file")
    dropped = pd.Series(keys).duplicated(keep="first").to_numpy()
    named = [name_of(int(row)) for row in np.flatnonzero(dropped)[:max_named]]
    count = int(dropped.sum())
    log.warning("%s: %d repeated row(s) dropped (identical duplicates: %s%s)", path, count, ", ".join(named),
                f" and {count - max_named} more" if count > max_named else "")
    return ~dropped


def parse_market_file(path: Path) -> dict[str, np.ndarray]:
    """SPY and VIX daily columns of a market file, sorted by date (and the optional SPY price-return columns)."""
    frame = read_csv(path, MARKET_COLUMNS, MARKET_COLUMNS[1:], optional=OPTIONAL_MARKET_COLUMNS)
    frame = frame.dropna(subset=["date"])
    frame["date"] = _parse_dates(path, frame["date"])
    numeric = [name for name in (*MARKET_COLUMNS[1:], *OPTIONAL_MARKET_COLUMNS) if name in frame.columns]
    days = frame["date"].to_numpy()
    keep = unique_rows(path, days.astype(np.int64), {name: frame[name].to_numpy(dtype=np.float64) for name in numeric},
                       lambda row: str(np.datetime64(days[row], "D")))
    frame = frame[keep].sort_values("date", kind="stable")
    arrays = {name: frame[name].to_numpy(dtype=np.float64) for name in (*MARKET_COLUMNS[1:], *OPTIONAL_MARKET_COLUMNS)
              if name in frame.columns}
    arrays["dates"] = frame["date"].to_numpy().astype("datetime64[D]")
    return arrays


def companion_market_file(stocks_path: Path) -> Path | None:
    """A spy_vix_daily*.csv (or .csv.gz) beside the stocks file, if there is one."""
    found = sorted(stocks_path.parent.glob("spy_vix_daily*.csv")) + sorted(
        stocks_path.parent.glob("spy_vix_daily*.csv.gz"))
    return found[0] if found else None


class FileMarket:
    """What the csv sources share: the dates and symbols of their file, and SPY and VIX from a daily market file
    (`market_path`), memoised. A subclass sets dates, symbols, _column, market_path, cache_dir, _market and
    _series_memo."""

    path: Path
    dates: np.ndarray
    symbols: list[str]

    def _open_files(self, path: str | Path, market_path: str | Path | None, cache_dir: Path | None) -> None:
        """The bars file (it must exist), its cache folder and the SPY/VIX file (given, or the companion beside
        it), with empty memos; a subclass then loads the bars."""
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: " + ("a folder, not a market data file" if self.path.is_dir()
                                                else "market data file not found"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if market_path is not None and not Path(market_path).is_file():
            raise DataError(f"{market_path}: market (SPY/VIX) file not found")
        self.market_path = Path(market_path) if market_path is not None else companion_market_file(self.path)
        self._market: dict[str, np.ndarray] | None = None
        self._bars_memo: dict[tuple, Panel] = {}
        self._series_memo: dict[tuple, pd.DataFrame] = {}

    @property
    def first_date(self) -> date:
        return self.dates[0].astype(date)

    @property
    def last_date(self) -> date:
        return self.dates[-1].astype(date)

    def known_symbols(self) -> list[str]:
        return list(self.symbols)

    def unknown_symbols(self, symbols: Sequence[str]) -> list[str]:
        """The symbols (each once, in the order given) that neither the bars file nor, for SPY, the market file
        holds: a scan names them as unknown rather than as symbols with bad data."""
        return [symbol for symbol in dict.fromkeys(symbols) if symbol not in self._column
                and not (symbol == "SPY" and self.market_path is not None)]

    # --- SPY / VIX

    @property
    def market_first_date(self) -> date:
        """First day of the SPY/VIX series (it usually starts long before the bars file)."""
        return self._market_arrays()["dates"][0].astype(date)

    def _market_arrays(self) -> dict[str, np.ndarray]:
        if self._market is None:
            if self.market_path is None:
                raise DataError(f"no SPY/VIX data for {self.path}: give --market PATH or put a "
                                f"spy_vix_daily*.csv beside it")
            self._market = load_cached(self.market_path, self.cache_dir, parse_market_file, "market")
        return self._market

    def _spy_from_market(self, symbols: Sequence[str]) -> bool:
        return "SPY" in symbols and "SPY" not in self._column and self.market_path is not None

    def market_series(self, start: date, end: date) -> pd.DataFrame:
        """Memoised like `bars` (every scan of a session asks for the same window); each caller gets a copy."""
        key = (start, end)
        stored = self._series_memo.get(key)
        if stored is None:
            market = self._market_arrays()
            rows = window(market["dates"], start, end)
            index = pd.DatetimeIndex(market["dates"][rows], name="date")
            stored = pd.DataFrame({name: market[name][rows] for name in (*MARKET_COLUMNS[1:], *OPTIONAL_MARKET_COLUMNS)
                                   if name in market}, index=index)
            if len(self._series_memo) >= _BARS_MEMO_SIZE:
                self._series_memo.pop(next(iter(self._series_memo)))
            self._series_memo[key] = stored
        return stored.copy()


class CsvMarket(FileMarket):
    """Replays real daily bars from a long-format CSV; SPY and VIX come from a market file."""

    name = "csv"
    static_history = True  # the file does not change while it is open (flows/prepared_history.py)

    def __init__(self, path: str | Path, market_path: str | Path | None = None, cache_dir: Path | None = None):
        self._open_files(path, market_path, cache_dir)
        arrays = load_cached(self.path, self.cache_dir, parse_stock_file, "stocks")
        if len(arrays["dates"]) == 0:
            raise DataError(f"{self.path}: no rows of market data")
        self.dates: np.ndarray = arrays["dates"]
        self.symbols: list[str] = [str(s) for s in arrays["symbols"]]
        self._fields = {name: arrays[name] for name in BAR_FIELDS}
        self._dividends = arrays.get(DIVIDEND)
        self._column = {symbol: j for j, symbol in enumerate(self.symbols)}

    # --- bars and snapshots

    def _columns(self, symbols: Sequence[str]) -> np.ndarray:
        """Each symbol's column in the stock file (-1 when the file does not have it)."""
        return np.array([self._column.get(s, -1) for s in symbols], dtype=np.int64)

    def _gather(self, name: str, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Field `name` at stock-file rows `rows` (-1 = no such date) and `columns` (-1 = unknown symbol: NaN)."""
        if name not in self._fields:  # the derived "_close_before" table, built on first use
            self._fields[name] = self._close_before_table()
        # rows first, then columns: two plain takes cost less than one two-dimensional fancy index
        out = self._fields[name].take(np.maximum(rows, 0), axis=0).take(np.maximum(columns, 0), axis=1)
        out[:, columns < 0] = np.nan
        out[rows < 0, :] = np.nan
        return out

    @property
    def carries_dividends(self) -> bool:
        """Whether the file has a `dividend` column (the S&P 500 file of ../shared/data does not: price only)."""
        return self._dividends is not None

    def dividends(self, symbols: Sequence[str], start: date, end: date) -> dict[tuple[str, date], float]:
        """Cash per share paid on each ex-date start..end (from the file's `dividend` column; none without one)."""
        if self._dividends is None:
            return {}
        rows = window(self.dates, start, end)
        paid: dict[tuple[str, date], float] = {}
        for symbol in symbols:
            j = self._column.get(symbol)
            if j is None:
                continue
            values = self._dividends[rows, j]
            for k in np.flatnonzero(np.isfinite(values) & (values > 0)):
                paid[(symbol, self.dates[rows][k].astype(date))] = float(values[k])
        return paid

    def bars(self, symbols: Sequence[str], start: date, end: date) -> Panel:
        """Served from a small in-process memo of earlier identical requests (the file never changes while it is
        open, and a backtest asks for the same symbols and window many times a session). The arrays are shared and
        read-only: a caller that wants to change values works on a copy (numpy refuses a write to them)."""
        key = (tuple(symbols), start, end)
        stored = self._bars_memo.get(key)
        if stored is None:
            stored = self._bars(list(symbols), start, end)
            for array in (stored.dates, *(getattr(stored, name) for name in BAR_FIELDS)):
                array.flags.writeable = False
            if len(self._bars_memo) >= _BARS_MEMO_SIZE:
                self._bars_memo.pop(next(iter(self._bars_memo)))  # the oldest request goes first
            self._bars_memo[key] = stored
        return Panel(stored.dates, list(stored.symbols), *(getattr(stored, name) for name in BAR_FIELDS))

    def _bars(self, symbols: list[str], start: date, end: date) -> Panel:
        dates = self.dates[window(self.dates, start, end)]
        serve_spy = self._spy_from_market(symbols)
        if serve_spy:
            market_dates = self._market_arrays()["dates"]
            dates = np.union1d(dates, market_dates[window(market_dates, start, end)])
        rows, columns = positions(self.dates, dates), self._columns(symbols)
        fields = {name: self._gather(name, rows, columns) for name in BAR_FIELDS}
        if serve_spy:
            self._fill_spy(fields, symbols, dates)
        return Panel(dates, symbols, *(fields[name] for name in BAR_FIELDS))

    def _fill_spy(self, fields: dict[str, np.ndarray], symbols: list[str], dates: np.ndarray) -> None:
        market = self._market_arrays()
        rows = positions(market["dates"], dates)
        spy_columns = [j for j, s in enumerate(symbols) if s == "SPY"]
        for name in BAR_FIELDS:
            values = np.where(rows >= 0, market[f"spy_{name}"][np.maximum(rows, 0)], np.nan)
            for j in spy_columns:
                fields[name][:, j] = values

    def snapshot(self, symbols: Sequence[str], session: date, fraction: float) -> Snapshot:
        symbols = list(symbols)
        row = int(positions(self.dates, np.array([session], dtype="datetime64[D]"))[0])
        if row < 0:
            raise DataError(f"no data for session {session} in {self.path} "
                            f"(covers {self.first_date} .. {self.last_date})")
        rows, columns = np.array([row]), self._columns(symbols)
        bar = {name: self._gather(name, rows, columns)[0] for name in BAR_FIELDS}
        prev_close = self._last_close_before(row, columns)
        if self._spy_from_market(symbols):
            self._spy_snapshot_bar(bar, prev_close, symbols, session)
        return daily_snapshot(session, fraction, symbols, bar, prev_close)

    def _last_close_before(self, row: int, columns: np.ndarray) -> np.ndarray:
        """Each symbol's last close before stock-file row `row` (a symbol may have skipped days).

        Read from a table of every symbol's last close before every row, built once: the data never changes
        while the market is open, and gathering the whole history per snapshot grew with the date."""
        if row == 0:
            return np.full(len(columns), np.nan)
        return self._gather("_close_before", np.array([row]), columns)[0]

    def _close_before_table(self) -> np.ndarray:
        return close_before_table(self._fields["close"])

    def _spy_snapshot_bar(self, bar: dict[str, np.ndarray], prev_close: np.ndarray, symbols: list[str],
                          session: date) -> None:
        market = self._market_arrays()
        row = int(positions(market["dates"], np.array([session], dtype="datetime64[D]"))[0])
        for j, symbol in enumerate(symbols):
            if symbol != "SPY":
                continue
            for name in BAR_FIELDS:
                bar[name][j] = market[f"spy_{name}"][row] if row >= 0 else np.nan
            prev_close[j] = market["spy_close"][row - 1] if row > 0 else np.nan


def close_before_table(closes: np.ndarray) -> np.ndarray:
    """Row r, column j: symbol j's last non-NaN close in rows < r (NaN when it has none)."""
    rows = np.arange(closes.shape[0])[:, None]
    last_row = np.maximum.accumulate(np.where(~np.isnan(closes), rows, -1), axis=0)
    filled = np.where(last_row >= 0, closes[np.maximum(last_row, 0), np.arange(closes.shape[1])[None, :]],
                      np.nan)
    before = np.full_like(closes, np.nan)
    before[1:] = filled[:-1]
    return before


def window(dates: np.ndarray, start: date, end: date) -> slice:
    """The rows of the sorted `dates` from start to end, both included."""
    lo = int(np.searchsorted(dates, np.datetime64(start, "D")))
    hi = int(np.searchsorted(dates, np.datetime64(end, "D"), side="right"))
    return slice(lo, max(lo, hi))


def positions(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Index of each needle date in the sorted `haystack`, -1 where absent."""
    at = np.searchsorted(haystack, needles)
    inside = at < len(haystack)
    found = inside & (haystack[np.minimum(at, len(haystack) - 1)] == needles) if len(haystack) else inside
    return np.where(found, at, -1)
