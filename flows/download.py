"""`data download`: historical bars from Alpaca into the files the replay reads, resumable batch by batch.

Output formats: 1Day bars -> the daily long format `date,symbol,open,high,low,close,volume` (date = the New York date
of the bar, as CsvMarket reads it); 1Min and 5Min bars -> the intraday format of ports/intraday_csv.py
(`timestamp,symbol,...`, timestamp = the bar's start in UTC), regular-session bars only (the replay ignores the
extended-hours bars Alpaca also sends, so they are not stored). Rows are sorted by symbol, then time. Only
completed sessions are asked for: an --end still in progress (or in the future) stops at the last completed session.

Resuming: the symbols (sorted) go in batches of BATCH_SYMBOLS, one request chain each (pages follow next_page_token).
Each finished batch is written atomically to `<out>.parts/batch-NNNNN.csv.gz`, and `<out>.parts/state.json` records
the arguments and the finished batches. A rerun with the same arguments skips the finished batches; other arguments
for the same --out are refused while that folder exists. When every batch is done, the output is written atomically
(temp file + rename) and the parts folder removed. Ctrl-C or a failure keeps the finished batches.

Symbols Alpaca sends no bar for are named in the result (`no_bars`): the command makes that an error for symbols
typed with --symbols (an unknown symbol) and a warning for a universe's.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO

import pandas as pd

from common.clock import NY, calendar
from common.errors import ConfigError, DataError, MomentumError
from common.universe import CAPS, SYMBOL_PATTERN, unknown_text
from config import home
from ports.alpaca.bars_download import (
    ADJUSTMENTS,
    FEEDS,
    TIMEFRAMES,
    AlpacaBarsClient,
    RawBar,
)

log = logging.getLogger(__name__)

BATCH_SYMBOLS = 50  # symbols per request chain: one finished batch is what a rerun need not fetch again
STATE_FILE = "state.json"
STATE_FORMAT = 1
_STATE_KEYS = {"request", "done", "last_session", "last_moment"}
SIP_DELAY = timedelta(minutes=16)  # the free plan may not query the last 15 minutes of SIP data
DAILY_HEADER = "date,symbol,open,high,low,close,volume\n"
INTRADAY_HEADER = "timestamp,symbol,open,high,low,close,volume\n"
PROGRESS_EVERY = 10_000  # rows between progress reports inside a batch (a page holds up to 10,000 bars)


@dataclass(frozen=True)
class DownloadRequest:
    timeframe: str
    symbols: tuple[str, ...]  # sorted, unique
    start: date
    end: date
    out: Path
    adjustment: str = "split"
    feed: str = "iex"

    def identity(self) -> dict:
        """What a parts folder must have been started with to be resumed (the output path is its location)."""
        return {"timeframe": self.timeframe, "symbols": list(self.symbols), "start": str(self.start),
                "end": str(self.end), "adjustment": self.adjustment, "feed": self.feed,
                "batch_symbols": BATCH_SYMBOLS}


@dataclass(frozen=True)
class BatchRecord:
    """What a finished batch holds."""

    bars: int
    symbols_with_bars: int
    sessions: list[str]  # ISO dates with at least one bar
    no_bars: list[str] = field(default_factory=list)  # symbols of the batch Alpaca sent no bar for


@dataclass
class DownloadPlan:
    request: DownloadRequest
    parts: Path
    batches: list[tuple[str, ...]]
    first_moment: datetime  # the query bounds: bars starting within [first_moment, last_moment]
    last_moment: datetime
    last_session: date  # the last session asked for (--end, or the last completed session before it)
    done: dict[int, BatchRecord] = field(default_factory=dict)  # finished by an earlier run

    @property
    def resumed(self) -> bool:
        return bool(self.done)


@dataclass(frozen=True)
class Progress:
    batches_done: int
    batches_total: int
    symbols_done: int
    symbols_total: int
    bars: int
    batch_finished: bool  # False: a page arrived inside a batch


@dataclass(frozen=True)
class DownloadResult:
    out: Path
    symbols_asked: int
    symbols_with_bars: int
    bars: int
    sessions: int
    first_session: date | None
    last_session: date | None
    no_bars: tuple[str, ...] = ()  # symbols asked for that Alpaca sent no bar for: unknown, or not traded then

    def text(self) -> str:
        span = f" ({self.first_session} .. {self.last_session})" if self.first_session else ""
        return (f"wrote {self.out}: {self.symbols_with_bars} of {self.symbols_asked} symbols with bars, "
                f"{self.bars:,} bars, {self.sessions} sessions{span}")

    def unknown_text(self) -> str:
        """What the symbols without bars are, for the warning or the error that names them."""
        return (f"{unknown_text(self.no_bars)} (Alpaca has no bars for {'it' if len(self.no_bars) == 1 else 'them'}"
                f" from {self.first_session} to {self.last_session}; {self.out} holds the others)")


# -- the request -------------------------------------------------------------------------------------------------

def download_request(rt, *, timeframe: str, symbols: str | None, universe: str | None, start: str, end: str,
                     out: str | None, adjustment: str, feed: str) -> DownloadRequest:
    """The command's options checked; any bad value is one ConfigError line naming the option."""
    _check_choice("--timeframe", timeframe, TIMEFRAMES)
    _check_choice("--adjustment", adjustment, ADJUSTMENTS)
    _check_choice("--feed", feed, FEEDS)
    first, last = _day(start, "--start"), _day(end, "--end")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}")
    if (symbols is None) == (universe is None):
        raise ConfigError("give either --symbols A,B,C or --universe large|mid|small|all (one of the two)")
    chosen = _symbols(symbols) if symbols is not None else _universe_symbols(rt, universe)
    if out is not None and not out.strip():
        raise ConfigError("--out: empty path; give a file such as bars.csv.gz, or leave --out out for the default")
    target = Path(out) if out is not None else home() / "data" / f"bars_{timeframe}_{first}_{last}.csv.gz"
    return DownloadRequest(timeframe, chosen, first, last, target, adjustment, feed)


def _check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{option}: unknown value {value!r} (use {', '.join(allowed)})")


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: expected a date YYYY-MM-DD, got {text!r}") from None


def _symbols(text: str) -> tuple[str, ...]:
    symbols = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not symbols:
        raise ConfigError("--symbols: no symbols given (use e.g. AAPL,MSFT)")
    bad = next((s for s in symbols if not SYMBOL_PATTERN.match(s)), None)
    if bad is not None:
        raise ConfigError(f"--symbols: invalid symbol {bad!r} (expected e.g. AAPL or BRK.B)")
    return tuple(sorted(set(symbols)))


def _universe_symbols(rt, name: str) -> tuple[str, ...]:
    if name not in (*CAPS, "all"):
        raise ConfigError(f"--universe: unknown universe {name!r} (use large, mid, small or all)")
    symbols = rt.universe.symbols_in_any_period(name)  # every period's members of a point-in-time universe
    if not symbols:
        raise ConfigError(f"--universe {name}: the universe file has no {name} symbols")
    return tuple(sorted(set(symbols)))


def bars_client(rt, **transport) -> AlpacaBarsClient:
    """The bars client on the configured keys, data host and the request budget every process shares."""
    key, secret = rt._alpaca_keys("data download")
    return AlpacaBarsClient(key, secret, url_override=rt.config.alpaca_data_url or None, budget=rt._budget(),
                            timeout=rt.config.alpaca_timeout, **transport)


# -- the plan ----------------------------------------------------------------------------------------------------

def plan_download(request: DownloadRequest, now: datetime) -> DownloadPlan:
    """Batches, query bounds, and what an earlier run with the same arguments already finished."""
    parts = request.out.with_name(request.out.name + ".parts")
    if request.out.exists() and not parts.exists():
        raise ConfigError(f"{request.out} already exists; delete it or choose another --out")
    batches = [request.symbols[i:i + BATCH_SYMBOLS] for i in range(0, len(request.symbols), BATCH_SYMBOLS)]
    resumed = _resume_point(parts, request)
    if resumed is not None:
        last_session, last_moment, done = resumed
    else:
        last_session = _last_session(request, now)
        last_moment = datetime.combine(last_session, time(23, 59, 59), NY)
        if request.feed == "sip":
            last_moment = min(last_moment, now - SIP_DELAY)
        done = {}
    first_moment = datetime.combine(request.start, time(0, 0), NY)
    return DownloadPlan(request, parts, batches, first_moment, last_moment, last_session, done)


def _last_session(request: DownloadRequest, now: datetime) -> date:
    """--end, or the last completed session before it; at least one session must lie from --start on."""
    cal = calendar()
    completed = cal.last_completed_session(now)
    sessions = cal.sessions(request.start, min(request.end, completed))
    if not sessions:
        raise ConfigError(f"no completed NYSE session from {request.start} to {request.end} "
                          f"(the last completed session is {completed})")
    return sessions[-1]


def _resume_point(parts: Path, request: DownloadRequest) -> tuple[date, datetime, dict[int, BatchRecord]] | None:
    """Where an earlier run with the same arguments stopped (its last session and query bound, and its finished
    batches whose part files are there), or None when there was none."""
    state = _read_state(parts, request)
    if state is None:
        return None
    try:
        done = {int(index): BatchRecord(**record) for index, record in state["done"].items()}
        return (date.fromisoformat(state["last_session"]), datetime.fromisoformat(state["last_moment"]),
                {index: record for index, record in done.items() if (parts / _batch_file(index)).exists()})
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(f"{parts / STATE_FILE} is unreadable; delete {parts} or choose another --out") from None


def _read_state(parts: Path, request: DownloadRequest) -> dict | None:
    """The state of an earlier run for this output, or None when there is none; another run's is refused."""
    if not parts.exists():
        return None
    advice = f"delete {parts} or choose another --out"
    try:
        state = json.loads((parts / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if any(parts.iterdir()):
            raise ConfigError(f"{parts} has no {STATE_FILE}: not a download's parts folder; {advice}") from None
        return None
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict) or not _STATE_KEYS <= set(state) or not isinstance(state["request"], dict):
        raise ConfigError(f"{parts / STATE_FILE} is unreadable; {advice}")
    arguments = state["request"]
    if arguments != request.identity():
        differing = [key for key in request.identity() if arguments.get(key) != request.identity()[key]]
        raise ConfigError(f"{parts} holds a download of {request.out} with other arguments "
                          f"({', '.join(differing) or 'format'}); {advice}")
    return state


# -- the run -----------------------------------------------------------------------------------------------------

def run_download(plan: DownloadPlan, client: AlpacaBarsClient,
                 progress: Callable[[Progress], None] | None = None) -> DownloadResult:
    """Fetch the batches not finished yet, then write the output file and remove the parts folder."""
    request = plan.request
    plan.parts.mkdir(parents=True, exist_ok=True)
    records = dict(plan.done)
    _write_state(plan, records)
    report = progress or (lambda _progress: None)
    for index, symbols in enumerate(plan.batches):
        if index in records:
            continue
        bars = client.bars(symbols, timeframe=request.timeframe, start=plan.first_moment, end=plan.last_moment,
                           adjustment=request.adjustment, feed=request.feed)
        try:
            records[index] = _write_batch(plan, index, bars,
                                          lambda count: report(_progress(plan, records, count, False)))
        except MomentumError as err:
            raise type(err)(f"{err}; {len(records)} of {len(plan.batches)} batches are saved in {plan.parts}: "
                            f"run the same command again to resume") from None
        _write_state(plan, records)
        log.info("batch %d/%d: %d bars", index + 1, len(plan.batches), records[index].bars)
        report(_progress(plan, records, 0, batch_finished=True))
    return _finish(plan, records)


def _progress(plan: DownloadPlan, records: dict[int, BatchRecord], bars_in_batch: int,
              batch_finished: bool) -> Progress:
    symbols_done = sum(len(plan.batches[index]) for index in records)
    bars = sum(record.bars for record in records.values()) + bars_in_batch
    return Progress(len(records), len(plan.batches), symbols_done, len(plan.request.symbols), bars, batch_finished)


def _batch_file(index: int) -> str:
    return f"batch-{index:05d}.csv.gz"


def _write_batch(plan: DownloadPlan, index: int, bars: Iterable[RawBar],
                 on_rows: Callable[[int], None]) -> BatchRecord:
    """Write one batch's rows to its part file atomically; a failure leaves no part file behind."""
    rows = _daily_rows(bars) if plan.request.timeframe == "1Day" else _regular_session_rows(bars)
    with _replacing(plan.parts / _batch_file(index)) as temp:
        with gzip.open(temp, "wt", compresslevel=1, encoding="utf-8", newline="") as out:
            record, in_order, with_bars = _write_rows(out, rows, on_rows)
        if not in_order:  # Alpaca documents (symbol, time) order; a server that breaks it costs a sort
            _sort_part(temp, plan.request.timeframe)
    return replace(record, no_bars=sorted(set(plan.batches[index]) - with_bars))


def _write_rows(out: IO[str], rows: Iterator[tuple[str, str, str, RawBar]],
                on_rows: Callable[[int], None]) -> tuple[BatchRecord, bool, set[str]]:
    """Write the rows; what they hold, whether they came in (symbol, time) order, and the symbols they hold."""
    count, symbols, sessions = 0, set(), set()
    last_key, in_order = ("", ""), True
    for day, key, when, bar in rows:
        out.write(f"{when},{bar.symbol},{bar.open!r},{bar.high!r},{bar.low!r},{bar.close!r},"
                  f"{_volume(bar.volume)}\n")
        in_order = in_order and (bar.symbol, key) >= last_key
        last_key = (bar.symbol, key)
        count += 1
        symbols.add(bar.symbol)
        sessions.add(day)
        if count % PROGRESS_EVERY == 0:
            on_rows(count)
    return BatchRecord(count, len(symbols), sorted(sessions)), in_order, symbols


def _volume(value: float) -> str:
    """Whole shares as an integer (Alpaca's volumes are), anything else as it came."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _daily_rows(bars: Iterable[RawBar]) -> Iterator[tuple[str, str, str, RawBar]]:
    """(session, sort key, date column, bar): a daily bar's date is its New York date."""
    for bar in bars:
        day = _moment(bar.t).astimezone(NY).date().isoformat()
        yield day, day, day, bar


def _regular_session_rows(bars: Iterable[RawBar]) -> Iterator[tuple[str, str, str, RawBar]]:
    """(session, sort key, timestamp column, bar) of the bars that start inside a regular session."""
    hours: dict[date, tuple[datetime, datetime] | None] = {}
    for bar in bars:
        start = _moment(bar.t)
        day = start.astimezone(NY).date()
        if day not in hours:
            hours[day] = _regular_hours(day)
        session = hours[day]
        if session is not None and session[0] <= start < session[1]:
            stamp = start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            yield day.isoformat(), stamp, stamp, bar


def _regular_hours(day: date) -> tuple[datetime, datetime] | None:
    """The open and close of the session on `day` (early closes included), or None when it is no session."""
    cal = calendar()
    if not cal.is_session(day):
        return None
    session = cal.session(day)
    return session.open, session.close


def _moment(stamp: str) -> datetime:
    """An RFC-3339 timestamp; Alpaca may send nanoseconds, which datetime cannot hold (they are dropped)."""
    text = stamp.replace("Z", "+00:00")
    if "." in text:
        whole, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = whole + rest[digits:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"alpaca bars: bad timestamp {stamp!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sort_part(path: Path, timeframe: str) -> None:
    time_column = "date" if timeframe == "1Day" else "timestamp"
    names = (DAILY_HEADER if timeframe == "1Day" else INTRADAY_HEADER).strip().split(",")
    frame = pd.read_csv(path, names=names, header=None, dtype={time_column: str, "symbol": str},
                        compression="gzip")
    frame = frame.sort_values(["symbol", time_column], kind="stable")
    frame.to_csv(path, header=False, index=False, compression={"method": "gzip", "compresslevel": 1})


def _write_state(plan: DownloadPlan, records: dict[int, BatchRecord]) -> None:
    state = {"format": STATE_FORMAT, "request": plan.request.identity(), "last_session": str(plan.last_session),
             "last_moment": plan.last_moment.isoformat(), "batches": len(plan.batches),
             "done": {str(index): asdict(record) for index, record in sorted(records.items())}}
    with _replacing(plan.parts / STATE_FILE) as temp:
        temp.write_text(json.dumps(state, indent=1), encoding="utf-8")


def _finish(plan: DownloadPlan, records: dict[int, BatchRecord]) -> DownloadResult:
    sessions = sorted({day for record in records.values() for day in record.sessions})
    total = sum(record.bars for record in records.values())
    if total == 0:
        shutil.rmtree(plan.parts)
        raise DataError(f"alpaca returned no bars for the {len(plan.request.symbols)} symbols from "
                        f"{plan.request.start} to {plan.last_session} (feed {plan.request.feed}); nothing written")
    with _replacing(plan.request.out) as temp, _text_output(temp, plan.request.out.name.endswith(".gz")) as out:
        out.write(DAILY_HEADER if plan.request.timeframe == "1Day" else INTRADAY_HEADER)
        for index in range(len(plan.batches)):
            _copy_part(plan.parts / _batch_file(index), out)
    shutil.rmtree(plan.parts)
    return DownloadResult(plan.request.out, len(plan.request.symbols),
                          sum(record.symbols_with_bars for record in records.values()), total, len(sessions),
                          date.fromisoformat(sessions[0]), date.fromisoformat(sessions[-1]),
                          tuple(sorted(symbol for record in records.values() for symbol in record.no_bars)))


def _copy_part(part: Path, out: IO[str]) -> None:
    """Append a finished batch; a part file damaged since (a cut-off or corrupt gzip) is one line naming it, and
    the output is not written (the temp file is removed)."""
    try:
        with gzip.open(part, "rt", encoding="utf-8", newline="") as source:
            shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"{part}: cannot read a downloaded batch ({str(err).strip() or type(err).__name__}); delete "
                        f"it and run the same command again to download that batch again") from None


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temp file beside `path`, renamed over it when the block succeeds and removed when it fails or is
    interrupted: a reader never sees half a file, and a rerun never finds one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _text_output(path: Path, compress: bool) -> IO[str]:
    if compress:
        return gzip.open(path, "wt", compresslevel=6, encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")
