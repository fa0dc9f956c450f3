"""Corporate actions and bad prints, found in daily bars before they can trade.

Splits, spin-offs, special dividends and bad prints show up in daily bars as price moves that are not market moves;
a signal that measures a target or a stop across one of them reads a level that no longer exists (the ARNC spin-off of
2016-11-01 gave a weekly STRAT target 53.8% away at reward:risk 4.65). This module flags them, per symbol and per
day, from the bars alone: pure numpy over a Panel, no I/O.

No look-ahead: the flag of day d uses bars up to d only (its baselines end the day before), so appending later
rows never changes an earlier flag. An event is dated by the bar that shows it; a bad close that the next bar undoes
is only known on that next bar, and is dated there.

Baselines, per symbol, over the rows before the day (medians, so one earlier event does not hide the next):
  usual overnight move  median |log(open / previous close)| over the last 60 rows (at least 20 present, at least 0.1%)
  usual day range       median (high - low) / close over the last 20 rows (at least 10 present)
  usual volume          median volume over the last 20 rows (at least 10 present)
A symbol is judged on its moves only once these exist (about 20 bars after its first); an inconsistent bar is flagged
from the very first. The previous close is the last close present, so a move across missing sessions still counts.

The rules, in priority order (the first that a cell meets names it); "log" moves are natural logs, so a log move of
0.08 is a drop of 7.7% or a rise of 8.3%:
  inconsistent (bad_print)  a non-positive price, high below low, or open or close more than 1% outside the day's
                            range: these prices cannot all be true.
  undone (bad_print)        the previous bar's close moved at least 0.10 in log and 5 usual day ranges, and this close
                            is back within a quarter of that move from where it started, on at most 3x the usual volume
                            (a genuine V-shaped day comes with news volume: ZTS 2015-06-26 on 8x is not flagged).
  split / reverse_split     the open within 0.03 in log of one split factor (3:2, 2:1, 3:1, 4:1, 5:1, 7:1, 8:1, 10:1,
                            20:1 and 1:2 ... 1:50: an overnight move's noise) and the close within 0.05 of the same
                            (a whole day's), the factor at least 25 usual overnight moves, and the volume in pre-split
                            shares (volume x price factor) at most 5x the usual volume: a split is not a news day. A
                            spin-off worth exactly a third of the price still reads as a 3:2 split (the price alone
                            cannot tell), one worth 30% no longer does. 5:4 and 4:3 are left out on purpose: their
                            20-25% drop is exactly what spin-offs and special dividends do in the real file (KLAC's
                            special dividend of 2014-11-26 opened at 0.802x and closed at 0.800x; IR, DOV, A, SYMC,
                            CAG, CTXS, HPE and VNO sit within 5% of 0.8 or 0.75), and a price-only rule cannot tell
                            them apart. Such a split is still flagged, as a distribution, and never back-adjusted.
  spike (bad_print)         the high or low reaches at least 15% and 10 usual day ranges beyond both the open and the
                            close: a print the bar itself does not support (XL's low 5.40 on 2015-08-24 against an open
                            of 35.24 and a close of 36.79).
  distribution              the open is at least 0.08 in log and 25 usual overnight moves below the previous close, the
                            day keeps at least half of that drop (its high stays below the midpoint of the gap), and the
                            volume is at most 3x the usual volume, or 7.5x for a drop of 18% or more. An earnings gap
                            comes with heavy volume (BBY 2014-01-16 -31% on 18x, UAA 2017-01-31 on 16x); a distribution
                            trades on index and arbitrage flows, 1-7x in the real file (ARNC 1.9x, EBAY 3.8x, NI 7.2x).
  jump (bad_print)          the open is at least 0.08 in log and 25 usual overnight moves ABOVE the previous close, the
                            day keeps at least half of it, on at most 2x the usual volume: real news that lifts a stock
                            that far trades heavily, and no corporate action lifts a price except a reverse split.

What it costs on the real file (../shared/data/sp500_daily_2013_2018.csv.gz, 505 stocks, 2013-02-08 .. 2018-02-07,
619,040 stock-days with a close; bench/corporate_actions_study.py prints all of it): 110 stock-days flagged, 1 in 5,600:
  inconsistent 9, undone 15, split 1, reverse_split 0, spike 9, distribution 50, jump 26.
Known events caught (32 of the 34 corporate actions found by hand among the large drops of the file):
  spin-offs   IR 2013-12-02 (Allegion), OKE 2014-02-03 (ONE Gas), DOV 2014-03-03 (Knowles), NOV 2014-06-02 (NOW),
              ADP 2014-10-01 (CDK), A 2014-11-03 (Keysight), VNO 2015-01-16 (Urban Edge), BAX 2015-07-01 (Baxalta),
              MAS 2015-07-01 (TopBuild), NI 2015-07-02 (Columbia Pipeline), EBAY 2015-07-20 (PayPal),
              VTR 2015-08-18 (Care Capital), DRI 2015-11-10 (Four Corners), DHR 2016-07-05 (Fortive),
              ARNC 2016-11-01 (Alcoa Corp), YUM 2016-11-01 (Yum China), CAG 2016-11-10 (Lamb Weston),
              XRX 2017-01-03 (Conduent), VAR 2017-01-30 (Varex), CTXS 2017-02-01 (GoTo), HPE 2017-04-03 (DXC),
              VNO 2017-07-18 (JBG Smith), MET 2017-08-07 (Brighthouse), HPE 2017-09-01 (Micro Focus);
  special dividends  TDG 2013-07-11, 2014-06-12, 2016-10-20 and 2017-08-31, KLAC 2014-11-26, SYMC 2016-03-04;
  share dividend  DISCK 2014-08-07 as a 2:1 split, DISCA the same day as a distribution (the class C dividend, which
              the file does not adjust; DISCA opened 4% off the 2:1 factor, the class A shares trading at a premium).
  Missed: EQR 2016-03-01 (special dividend, -9.8% = 24 usual overnight moves, just under 25) and BHGE 2017-07-05
  (special dividend on its second bar in the file: no baseline yet).
Known bad data caught: the file's own list (README) - LNT's close of 2016-05-19 (inconsistent, then undone on
05-20), AOS 2014-05-19 (high < low) - plus CHD, CRM 2014-05-19, DHR and O 2014-11-06, SPG, CHK, BBY and WRK closes
off their range, the flash-crash prints of 2015-08-24 (XL, HCA, CL, MDT, PEP, JPM, HD, EQR), AME's high of
2013-10-29, and 47 stock-days on the misaligned days 2013-12-18..23, 2014-10-29..31, 2017-08-01/02 and 2017-09-13..15
(most of the ~340 misaligned ticker-days of the README's clusters move too little to be told from the market).
Real moves flagged (the price of the volume caps): earnings gaps NFLX 2014-10-16, AMD 2014-07-18 and 2015-07-07, CNC
and COTY 2016-11-09 as distributions; VMC 2014-02-06 as a jump. The alternatives cost more: 20 usual overnight moves
instead of 25 adds EQR but also six ordinary moves (AMZN 2016-01-29, MDLZ, JWN, JNPR, HES, CHTR); a 7.5x volume cap
for every drop, not only for drops of 18% or more, adds 86 stock-days, nearly all earnings gaps of 8-18%.

recent_reasons() costs about 1 ms for 505 real symbols x 120 sessions with a 60-row lookback (0.6 ms on 500 synthetic
ones; bench script): the cheap absolute tests run over the examined rows, the baselines only for the few cells that
pass them.

In the STRAT scan (core/strat_signals.data_faults) the flags skip 465 of the file's 59,694 daily signals and 317 of its
10,324 weekly ones (every bar, not only the last): those whose bars hold an event. Their median magnitude is 5.5% (1D)
and 7.4% (1W) against 1.9% and 4.7% for all signals: the skipped targets are the ones measured across the event.

The API: events() lists the events of a panel; recent_reasons() gives one reason per symbol for the scanners;
adjust_splits() back-adjusts history across detected splits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.types import Panel
from core import indicators

SPLIT, REVERSE_SPLIT, DISTRIBUTION, BAD_PRINT = "split", "reverse_split", "distribution", "bad_print"
KINDS = (SPLIT, REVERSE_SPLIT, DISTRIBUTION, BAD_PRINT)
# the rules in priority order, and the kind of event each one reports
RULES = ("inconsistent", "undone", "split", "reverse_split", "spike", "distribution", "jump")
KIND_OF_RULE = {"inconsistent": BAD_PRINT, "undone": BAD_PRINT, "split": SPLIT, "reverse_split": REVERSE_SPLIT,
                "spike": BAD_PRINT, "distribution": DISTRIBUTION, "jump": BAD_PRINT}

# Split terms as (new shares, old shares): the price moves by old / new (2:1 halves it, 1:10 multiplies it by 10).
SPLIT_TERMS = ((3, 2), (2, 1), (3, 1), (4, 1), (5, 1), (7, 1), (8, 1), (10, 1), (20, 1),
               (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 8), (1, 10), (1, 12), (1, 15), (1, 20), (1, 25), (1, 50))

GAP_BASELINE = (60, 20)  # rows in the window, rows that must be present
RANGE_BASELINE = (20, 10)
VOLUME_BASELINE = (20, 10)
USUAL_GAP_FLOOR = 0.001  # a flat series is not infinitely quiet

MIN_MOVE = 0.08  # log overnight move of a split, distribution or jump ...
EXTREME_GAPS = 25.0  # ... which must also be this many usual overnight moves
SPLIT_OPEN_TOLERANCE = 0.03  # log distance of the open from the split factor (an overnight move's noise) ...
SPLIT_CLOSE_TOLERANCE = 0.05  # ... and of the close (a whole day's)
SPLIT_MAX_TURNOVER = 5.0  # volume in pre-split shares against the usual volume
DISTRIBUTION_MAX_VOLUME = 3.0
LARGE_DROP = 0.18  # a drop at least this large ...
LARGE_DROP_MAX_VOLUME = 7.5  # ... may come with this much volume and still be a distribution
JUMP_MAX_VOLUME = 2.0
GAP_HELD = 0.5  # the share of the overnight move the day must keep
INVALID_TOLERANCE = 0.01
SPIKE_MIN = 0.15
SPIKE_RANGES = 10.0
REVERSAL_MIN = 0.10
REVERSAL_RANGES = 5.0
REVERSAL_SHARE = 0.25
REVERSAL_MAX_VOLUME = 3.0

_SPLIT_RATIOS = np.array([old / new for new, old in SPLIT_TERMS])  # exact price factors (0.5 for 2:1)
_SPLIT_LOGS = np.log(_SPLIT_RATIOS)
_RULE = {name: code for code, name in enumerate(RULES)}


@dataclass(frozen=True)
class Event:
    """One corporate action or bad print, dated by the bar that shows it (the flag uses bars up to that day)."""

    symbol: str
    day: str  # ISO date of the bar on which the event is known
    kind: str  # split, reverse_split, distribution or bad_print
    rule: str  # the rule that found it (RULES)
    ratio: float  # price after / price before: the exact split factor (0.5 for 2:1), else the move's own ratio
    text: str  # one line: what happened and why it is believed


@dataclass(frozen=True)
class _Found:
    rows: np.ndarray
    cols: np.ndarray
    codes: np.ndarray  # index into RULES
    ratios: np.ndarray
    texts: list[str]


# --- measures -----------------------------------------------------------------------------------------------------

def _windows(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, length: int) -> np.ndarray:
    """values[r - length:r, c] per candidate (r, c), one row each, most recent first (NaN before the panel)."""
    back = rows[:, None] - np.arange(1, length + 1)[None, :]
    if back.size and back.min() < 0:
        return np.where(back >= 0, values[np.maximum(back, 0), cols[:, None]], np.nan)
    return values[back, cols[:, None]]


def _medians(window: np.ndarray, min_count: int) -> np.ndarray:
    """Median of each row over its finite values, NaN with fewer than min_count (np.nanmedian is slow on many
    short rows)."""
    count = np.isfinite(window).sum(axis=1)
    ordered = np.sort(window, axis=1)  # NaN sorts last
    lower = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[:, None], axis=1)[:, 0]
    upper = np.take_along_axis(ordered, np.minimum(count // 2, window.shape[1] - 1)[:, None], axis=1)[:, 0]
    return np.where(count >= max(min_count, 1), (lower + upper) / 2, np.nan)


def _log_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((numerator > 0) & (denominator > 0), np.log(numerator / denominator), np.nan)


def _previous_close(close: np.ndarray) -> np.ndarray:
    """The last close present before each row (the forward fill only runs on the columns with a gap)."""
    previous = np.full_like(close, np.nan)
    previous[1:] = close[:-1]
    gapped = np.flatnonzero(np.isnan(close[:-1]).any(axis=0))
    if len(gapped):
        previous[:, gapped] = indicators.previous_present(close[:, gapped])
    return previous


def _body(bars: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The top and bottom of each bar's body (open to close; the close alone where the open is missing)."""
    return np.fmax(bars["open"], bars["close"]), np.fmin(bars["open"], bars["close"])


def _inconsistent(bars: dict[str, np.ndarray], top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """A present bar whose prices cannot all be true: non-positive, high below low, open or close off the range."""
    high, low = bars["high"], bars["low"]
    with np.errstate(invalid="ignore"):
        off_range = (high < low) | (top > high * (1 + INVALID_TOLERANCE)) | (bottom < low * (1 - INVALID_TOLERANCE))
        return ((low <= 0) | (bottom <= 0) | off_range) & np.isfinite(bars["close"])


def _spike(bars: dict[str, np.ndarray], top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """How far the high or low reaches beyond both open and close, as a fraction of the close."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.fmax(bars["high"] - top, bottom - bars["low"]) / bars["close"]


# --- the cells worth a closer look --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cells:
    """The bars and baselines of the candidate cells (1-D arrays, one entry per candidate)."""

    rows: np.ndarray
    cols: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    prev_close: np.ndarray  # the last close present before the bar
    gap: np.ndarray  # log(open / prev_close)
    move: np.ndarray  # log(close / prev_close)
    prior_move: np.ndarray  # the previous bar's own log move (NaN when the previous row is missing)
    prior_base: np.ndarray  # the close the previous bar moved from
    usual_gap: np.ndarray
    usual_range: np.ndarray
    usual_volume: np.ndarray

    @property
    def bars(self) -> dict[str, np.ndarray]:
        return {"open": self.open, "high": self.high, "low": self.low, "close": self.close}

    @property
    def volume_multiple(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.volume / self.usual_volume


def _arrays(bars: Panel) -> dict[str, np.ndarray]:
    return {name: np.asarray(getattr(bars, name), dtype=float) for name in ("open", "high", "low", "close", "volume")}


def _candidates(a: dict[str, np.ndarray], prev_close: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the cells from row `start` on that pass the absolute test of some rule; most pass none."""
    block = {name: values[start:] for name, values in a.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        gap_ratio = block["open"] / prev_close[start:]
        own_ratio = a["close"] / prev_close  # each bar's close against the close before it
        prior_ratio = np.vstack([np.full((1, own_ratio.shape[1]), np.nan), own_ratio[:-1]])[start:]
        big_gap = (gap_ratio >= np.exp(MIN_MOVE)) | (gap_ratio <= np.exp(-MIN_MOVE))
        big_prior = (prior_ratio >= np.exp(REVERSAL_MIN)) | (prior_ratio <= np.exp(-REVERSAL_MIN))
        top, bottom = _body(block)
        mask = (_inconsistent(block, top, bottom) | big_gap | (_spike(block, top, bottom) >= SPIKE_MIN)
                | (big_prior & np.isfinite(block["close"])))
    rows, cols = np.nonzero(mask)
    return rows + start, cols


def _usual_range(a: dict[str, np.ndarray], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    length, min_count = RANGE_BASELINE
    high, low, close = (_windows(a[name], rows, cols, length) for name in ("high", "low", "close"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _medians((high - low) / close, min_count)


def _usual_gap(a: dict[str, np.ndarray], prev_close: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    length, min_count = GAP_BASELINE
    gaps = np.abs(_log_ratio(_windows(a["open"], rows, cols, length), _windows(prev_close, rows, cols, length)))
    usual = _medians(gaps, min_count)
    return np.where(np.isfinite(usual), np.fmax(usual, USUAL_GAP_FLOOR), np.nan)


def _cells(bars: Panel, start: int) -> _Cells:
    a = _arrays(bars)
    prev_close = _previous_close(a["close"])
    if len(bars.dates) > start:
        rows, cols = _candidates(a, prev_close, start)
    else:
        rows, cols = np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    at = {name: values[rows, cols] for name, values in a.items()}
    prior = np.maximum(rows - 1, 0)
    prior_present = (rows >= 1) & np.isfinite(a["close"][prior, cols])
    prior_move = np.where(prior_present, _log_ratio(a["close"][prior, cols], prev_close[prior, cols]), np.nan)
    return _Cells(
        rows=rows, cols=cols, **at, prev_close=prev_close[rows, cols],
        gap=_log_ratio(at["open"], prev_close[rows, cols]), move=_log_ratio(at["close"], prev_close[rows, cols]),
        prior_move=prior_move, prior_base=np.where(prior_present, prev_close[prior, cols], np.nan),
        usual_gap=_usual_gap(a, prev_close, rows, cols), usual_range=_usual_range(a, rows, cols),
        usual_volume=_medians(_windows(a["volume"], rows, cols, VOLUME_BASELINE[0]), VOLUME_BASELINE[1]))


# --- rules --------------------------------------------------------------------------------------------------------

def _split_term(cells: _Cells) -> np.ndarray:
    """Index into SPLIT_TERMS where the open and the close both sit on that split's factor, -1 elsewhere."""
    distance = np.abs(cells.gap[:, None] - _SPLIT_LOGS[None, :])
    term = np.argmin(np.where(np.isfinite(distance), distance, np.inf), axis=1)
    factor = _SPLIT_LOGS[term]
    with np.errstate(invalid="ignore"):
        on_factor = ((np.abs(cells.gap - factor) <= SPLIT_OPEN_TOLERANCE)
                     & (np.abs(cells.move - factor) <= SPLIT_CLOSE_TOLERANCE))
        extreme = np.abs(factor) >= EXTREME_GAPS * cells.usual_gap
        quiet = cells.volume_multiple * _SPLIT_RATIOS[term] <= SPLIT_MAX_TURNOVER  # volume in pre-split shares
    return np.where(on_factor & extreme & quiet, term, -1)


def _overnight(cells: _Cells, sign: float, max_volume: float | np.ndarray) -> np.ndarray:
    """An overnight move of the given sign, extreme for the symbol, on modest volume, that the day kept."""
    gap = sign * cells.gap
    kept_level = cells.high if sign < 0 else cells.low
    with np.errstate(invalid="ignore"):
        extreme = (gap >= MIN_MOVE) & (gap >= EXTREME_GAPS * cells.usual_gap)
        kept = sign * (kept_level - cells.prev_close) >= GAP_HELD * sign * (cells.open - cells.prev_close)
        return extreme & kept & (cells.volume_multiple <= max_volume)


def _distribution_volume(cells: _Cells) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        large = cells.gap <= np.log(1 - LARGE_DROP)
    return np.where(large, LARGE_DROP_MAX_VOLUME, DISTRIBUTION_MAX_VOLUME)


def _undone(cells: _Cells) -> np.ndarray:
    """The previous bar's close moved far and this close is back where it came from, on no news volume."""
    size = np.abs(cells.prior_move)
    back = np.abs(_log_ratio(cells.close, cells.prior_base))
    with np.errstate(invalid="ignore"):
        return ((size >= np.maximum(REVERSAL_MIN, REVERSAL_RANGES * cells.usual_range))
                & (back <= REVERSAL_SHARE * size) & (cells.volume_multiple <= REVERSAL_MAX_VOLUME))


def _spiked(cells: _Cells) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return _spike(cells.bars, *_body(cells.bars)) >= np.maximum(SPIKE_MIN, SPIKE_RANGES * cells.usual_range)


def _extreme(cells: _Cells) -> np.ndarray:
    """The high or the low, whichever reaches further beyond the bar's open and close."""
    top, bottom = _body(cells.bars)
    return np.where(cells.high - top >= bottom - cells.low, cells.high, cells.low)


def _codes(cells: _Cells) -> tuple[np.ndarray, np.ndarray]:
    """The first rule each cell meets (index into RULES, -1 for none) and the event's price ratio."""
    term = _split_term(cells)
    is_split = term >= 0
    masks = {"inconsistent": _inconsistent(cells.bars, *_body(cells.bars)), "undone": _undone(cells),
             "split": is_split & (_SPLIT_RATIOS[term] < 1), "reverse_split": is_split & (_SPLIT_RATIOS[term] > 1),
             "spike": _spiked(cells), "distribution": _overnight(cells, -1.0, _distribution_volume(cells)),
             "jump": _overnight(cells, 1.0, JUMP_MAX_VOLUME)}
    codes = np.full(len(cells.rows), -1)
    for name in reversed(RULES):
        codes[masks[name]] = _RULE[name]
    split_found = (codes == _RULE["split"]) | (codes == _RULE["reverse_split"])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.select(
            [split_found, codes == _RULE["inconsistent"], codes == _RULE["undone"], codes == _RULE["spike"]],
            [_SPLIT_RATIOS[term], cells.close / cells.prev_close, np.exp(cells.prior_move),
             _extreme(cells) / cells.close], cells.open / cells.prev_close)
    return codes, ratio


# --- reasons ------------------------------------------------------------------------------------------------------

def _inconsistency(o: float, h: float, lo: float, c: float) -> str:
    if min(v for v in (o, h, lo, c) if np.isfinite(v)) <= 0:
        return f"a non-positive price (open {o:.2f}, high {h:.2f}, low {lo:.2f}, close {c:.2f})"
    if h < lo:
        return f"high {h:.2f} below low {lo:.2f}"
    close_inside = lo * (1 - INVALID_TOLERANCE) <= c <= h * (1 + INVALID_TOLERANCE)
    name, value = ("open", o) if close_inside else ("close", c)
    return f"{name} {value:.2f} outside the day's range {lo:.2f}-{h:.2f}"


def _text(cells: _Cells, i: int, rule: str, ratio: float, day: str, prior_day: str) -> str:
    o, h, lo, c, pc = (float(getattr(cells, name)[i]) for name in ("open", "high", "low", "close", "prev_close"))
    volume = f"{cells.volume_multiple[i]:.1f}x its usual volume"
    usual = f"{abs(cells.gap[i]) / cells.usual_gap[i]:.0f}x its usual overnight move"
    if rule in ("split", "reverse_split"):
        new, old = SPLIT_TERMS[int(np.argmin(np.abs(_SPLIT_RATIOS - ratio)))]
        return (f"{rule.replace('_', ' ')} {new}:{old} on {day}: opened at {o / pc:.3f}x and closed at {c / pc:.3f}x "
                f"the previous close {pc:.2f} on {volume}")
    if rule == "distribution":
        return (f"spin-off or special dividend on {day}: opened {o / pc - 1:+.1%} below the previous close "
                f"({pc:.2f} -> {o:.2f}, {usual}) on {volume} and stayed there (high {h:.2f})")
    if rule == "jump":
        return (f"bad print on {day}: opened {o / pc - 1:+.1%} above the previous close ({pc:.2f} -> {o:.2f}, "
                f"{usual}) on only {volume}: no split ratio and no news volume explain it")
    if rule == "undone":
        return f"bad print on {prior_day}: its close {pc:.2f} ({ratio - 1:+.1%}) was undone on {day} (close {c:.2f})"
    if rule == "spike":
        extreme = ratio * c
        side, body = ("high", max(o, c)) if extreme > c else ("low", min(o, c))
        return (f"bad print on {day}: {side} {extreme:.2f} is {abs(extreme / body - 1):.0%} beyond both open {o:.2f} "
                f"and close {c:.2f} ({abs(extreme - body) / c / cells.usual_range[i]:.0f}x the usual day range)")
    return f"bad print on {day}: {_inconsistency(o, h, lo, c)}"


def _days(bars: Panel) -> np.ndarray:
    return np.datetime_as_string(np.asarray(bars.dates, dtype="datetime64[D]"), unit="D")


def _detect(bars: Panel, start: int) -> _Found:
    """The events on rows `start` and later, oldest first (by row, then column)."""
    cells = _cells(bars, start)
    codes, ratios = _codes(cells)
    hit = np.flatnonzero(codes >= 0)
    hit = hit[np.lexsort((cells.cols[hit], cells.rows[hit]))]
    days = _days(bars)
    texts = [_text(cells, i, RULES[codes[i]], float(ratios[i]), str(days[cells.rows[i]]), str(days[cells.rows[i] - 1]))
             for i in hit]
    return _Found(cells.rows[hit], cells.cols[hit], codes[hit], ratios[hit], texts)


# --- the API ------------------------------------------------------------------------------------------------------

def events(bars: Panel, *, since: int | None = None) -> list[Event]:
    """Every event on rows `since` and later (all rows when None; negative counts from the end), oldest first.

    The baselines still use the rows before `since`, so an event is the same whatever `since` is.
    """
    start = 0 if since is None else (since if since >= 0 else max(len(bars.dates) + since, 0))
    found = _detect(bars, start)
    days = _days(bars)
    return [Event(bars.symbols[col], str(days[row]), KIND_OF_RULE[RULES[code]], RULES[code], round(float(ratio), 6),
                  text)
            for row, col, code, ratio, text in zip(found.rows, found.cols, found.codes, found.ratios, found.texts)]


def recent_reasons(bars: Panel, lookback: int) -> np.ndarray:
    """Per symbol (object array): None, or the reason of its latest event within the last `lookback` rows."""
    reasons = np.full(len(bars.symbols), None, dtype=object)
    found = _detect(bars, max(len(bars.dates) - lookback, 0))
    for col, text in zip(found.cols, found.texts):  # oldest first: a symbol's latest event is written last
        reasons[col] = text
    return reasons


def adjust_splits(bars: Panel) -> Panel:
    """The bars with the history before each detected split or reverse split back-adjusted by its exact factor
    (prices times the factor, volume divided by it), so the whole column reads in today's shares.

    A symbol with any distribution or bad print in the panel is left as it is: its moves are not all understood.
    Back-adjustment reads the whole panel, as every vendor's does: pass bars that end at the moment of the decision.
    """
    found = _detect(bars, 0)
    is_split = np.isin(found.codes, (_RULE["split"], _RULE["reverse_split"]))
    untrusted = set(found.cols[~is_split].tolist())
    factor = np.ones(np.shape(bars.close))
    for row, col, ratio in zip(found.rows[is_split], found.cols[is_split], found.ratios[is_split]):
        if col not in untrusted:
            factor[:row, col] *= ratio
    prices = {name: np.asarray(getattr(bars, name), dtype=float) * factor for name in ("open", "high", "low", "close")}
    return Panel(bars.dates, list(bars.symbols), **prices, volume=np.asarray(bars.volume, dtype=float) / factor)
