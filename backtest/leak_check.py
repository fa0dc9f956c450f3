"""The leak check: can anything a decision sees at a replay moment tell how the rest of the day goes?

At each moment the replay decides (the scan, rebalance and monitor times of backtest/replay.py), a market-data
source shows a snapshot. If the source reveals only what was knowable then, the rest-of-day return (the session's
close over the snapshot price) must not depend on what the snapshot shows: its mean among the snapshots that show a
price above the open must equal its mean among those below, among those near the high of the range so far, among
those with heavy volume so far, and so on, up to noise. A source that draws the day's path through its own high,
low and close fails this at once: at 10:00 a rising path is followed by a fall to the close.

`rest_of_day_bias` measures, through the source's own `snapshot` and `bars` (the code the scans use), the mean
rest-of-day return per bucket of each visible feature beside the unconditional mean at the same moment; `leaks`
keeps the buckets that differ by more than a tolerance (0.05% of price by default) among those with enough
observations to measure that (the standard error of a bucket's mean must be well under the tolerance).

Features (what a decision could see so far today):
- direction: the price against today's open (up, down, flat);
- range: where the price sits in the range so far, in quarters (or "empty" when the range is a single price);
- volume: volume so far scaled to a day (core/volume_profile.py) over the 20-session average, in three buckets
  (below 0.8, 0.8-1.25, above 1.25), or "unknown" when the snapshot has no volume so far.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Iterable, Sequence

import numpy as np

from common.clock import NY, calendar
from core.volume_profile import volume_fraction

TOLERANCE = 0.0005  # 0.05% of price
MIN_COUNT = 2000  # observations a bucket needs before its mean is compared
MAX_STANDARD_ERROR = TOLERANCE / 2.0  # and its mean must be known at least this well
MAX_ABS_RETURN = 0.5  # a rest-of-day move beyond 50% is a bad print or a corporate action, not a return
VOLUME_AVERAGE_SESSIONS = 20


@dataclass(frozen=True)
class Bias:
    """The mean rest-of-day return of one bucket of one feature at one moment, beside the moment's mean."""

    moment: time
    feature: str
    bucket: str
    count: int
    mean: float
    overall: float
    standard_error: float

    @property
    def gap(self) -> float:
        return self.mean - self.overall

    def text(self) -> str:
        return (f"{self.moment:%H:%M} {self.feature}={self.bucket}: rest of day {self.mean:+.3%} against "
                f"{self.overall:+.3%} for all ({self.gap:+.3%}, n={self.count})")


def _direction(price: np.ndarray, open_: np.ndarray) -> np.ndarray:
    return np.where(price > open_, "up", np.where(price < open_, "down", "flat"))


def _range_position(price: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.nan_to_num(np.where(span > 0, (price - low) / span, 0.0))
    quarter = np.clip(np.floor(np.clip(position, 0.0, 1.0) * 4), 0, 3).astype(int)
    names = np.array(["q1 (low)", "q2", "q3", "q4 (high)"])
    return np.where(span > 0, names[quarter], "empty")


def _volume_bucket(volume: np.ndarray, fraction: float, average: np.ndarray) -> np.ndarray:
    share = max(float(volume_fraction(fraction)), float(volume_fraction(1.0 / 390.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = volume / share / average
    bucket = np.where(relative < 0.8, "low", np.where(relative <= 1.25, "normal", "high"))
    return np.where(np.isfinite(relative), bucket, "unknown")


class _Sums:
    def __init__(self) -> None:
        self.n = defaultdict(int)
        self.total = defaultdict(float)
        self.squares = defaultdict(float)

    def add(self, key: tuple, returns: np.ndarray) -> None:
        self.n[key] += int(returns.size)
        self.total[key] += float(returns.sum())
        self.squares[key] += float((returns ** 2).sum())

    def stats(self, key: tuple) -> tuple[int, float, float]:
        n = self.n[key]
        mean = self.total[key] / n
        variance = max(self.squares[key] / n - mean ** 2, 0.0)
        return n, mean, (variance / n) ** 0.5


def rest_of_day_bias(market, days: Sequence[date], moments: Iterable[time], symbols: Sequence[str]) -> list[Bias]:
    """The bias table of `market` over sessions `days` at New York `moments`, for `symbols` (see the module doc)."""
    cal = calendar()
    symbols, moments = list(symbols), sorted(set(moments))
    first = cal.sessions_back(days[0], VOLUME_AVERAGE_SESSIONS + 1)
    panel = market.bars(symbols, first, days[-1])
    row_of = {day: i for i, day in enumerate(panel.dates.astype("datetime64[D]").astype(date))}
    volume = np.where(panel.volume > 0, panel.volume, np.nan)
    sums = _Sums()
    for day in days:
        i = row_of.get(day)
        if i is None or i < VOLUME_AVERAGE_SESSIONS:
            continue
        session = cal.session(day)
        with warnings.catch_warnings():  # a symbol without volume in the window has no average: NaN, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            average = np.nanmean(volume[i - VOLUME_AVERAGE_SESSIONS:i], axis=0)
        close = panel.close[i]
        for moment in moments:
            at = datetime.combine(day, moment, tzinfo=NY)
            if at >= session.close:
                continue
            fraction = session.fraction(at)
            snap = market.snapshot(symbols, day, fraction)
            price = np.asarray(snap.price, dtype=float)
            with np.errstate(invalid="ignore", divide="ignore"):
                returns = close / price - 1.0
            usable = np.isfinite(returns) & (price > 0) & (np.abs(returns) < MAX_ABS_RETURN)
            if not usable.any():
                continue
            kept = returns[usable]
            sums.add((moment, "all", "all"), kept)
            features = {
                "direction": _direction(price, np.asarray(snap.open, dtype=float)),
                "range": _range_position(price, np.asarray(snap.high, dtype=float), np.asarray(snap.low, dtype=float)),
                "volume": _volume_bucket(np.asarray(snap.volume, dtype=float), fraction, average),
            }
            for feature, labels in features.items():
                labels = labels[usable]
                for bucket in np.unique(labels):
                    sums.add((moment, feature, str(bucket)), kept[labels == bucket])
    table = []
    for key in sorted(k for k in sums.n if k[1] != "all"):
        moment, feature, bucket = key
        n, mean, error = sums.stats(key)
        overall = sums.stats((moment, "all", "all"))[1]
        table.append(Bias(moment, feature, bucket, n, mean, overall, error))
    return table


def leaks(table: Sequence[Bias], tolerance: float = TOLERANCE) -> list[Bias]:
    """The measurable buckets whose mean differs from the moment's mean by more than `tolerance`."""
    return [b for b in table if b.count >= MIN_COUNT and b.standard_error <= MAX_STANDARD_ERROR
            and abs(b.gap) > tolerance]
