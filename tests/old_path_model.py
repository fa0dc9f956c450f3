"""The replay's former intraday view of a daily bar, kept ONLY as a test of the leak test (tests/test_leak.py) and
for the fake Alpaca server's live snapshots. The product never uses it: it leaks the rest of the day.

It drew one fixed path through each daily bar: open -> the extreme nearer the open -> the other extreme -> close,
reaching the three later points at 1/3, 2/3 and 1 of the session, so the price at 10:00 told how the day would end.
"""
from __future__ import annotations

import numpy as np

from core.volume_profile import volume_fraction

VERTEX_TIMES = np.array([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])


def vertices(open_, high, low, close) -> np.ndarray:
    """Path prices at VERTEX_TIMES, shape (..., 4). Works on scalars or arrays of any matching shape."""
    o, h, lo, c = (np.asarray(x, dtype=float) for x in (open_, high, low, close))
    # Bad rows (open or close outside the range) are clamped so the path stays inside [low, high].
    h_fixed = np.maximum.reduce([h, lo, o, c])
    lo_fixed = np.minimum.reduce([h, lo, o, c])
    low_first = (o - lo_fixed) < (h_fixed - o)
    first = np.where(low_first, lo_fixed, h_fixed)
    second = np.where(low_first, h_fixed, lo_fixed)
    return np.stack([o, first, second, c], axis=-1)


def _aligned(open_, high, low, close, fraction) -> tuple[np.ndarray, np.ndarray]:
    """Path vertices and fractions broadcast to one common leading shape."""
    f = np.clip(np.asarray(fraction, dtype=float), 0.0, 1.0)
    o, h, lo, c, f = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (open_, high, low, close)), f)
    return vertices(o, h, lo, c), f


def price_at(open_, high, low, close, fraction) -> np.ndarray:
    """The path price at session fraction f (vectorised over symbols; f may be a scalar or an array)."""
    return _price_on(*_aligned(open_, high, low, close, fraction))


def _price_on(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    seg = np.minimum((f * 3.0).astype(int), 2)  # segment 0, 1 or 2
    t0 = seg / 3.0
    w = (f - t0) * 3.0
    p0 = np.take_along_axis(v, seg[..., None], axis=-1)[..., 0]
    p1 = np.take_along_axis(v, (seg + 1)[..., None], axis=-1)[..., 0]
    return p0 + (p1 - p0) * w


def range_so_far(open_, high, low, close, fraction) -> tuple[np.ndarray, np.ndarray]:
    """(high so far, low so far) along the path up to session fraction f."""
    return intraday_view(open_, high, low, close, fraction)[1:]


def intraday_view(open_, high, low, close, fraction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(price, high so far, low so far) at session fraction f: `price_at` and `range_so_far` from one path."""
    v, f = _aligned(open_, high, low, close, fraction)
    now = _price_on(v, f)
    passed = VERTEX_TIMES <= f[..., None]  # vertices already reached
    masked_hi = np.where(passed, v, -np.inf)
    masked_lo = np.where(passed, v, np.inf)
    return now, np.maximum(masked_hi.max(axis=-1), now), np.minimum(masked_lo.min(axis=-1), now)


# --- one bar in plain floats -------------------------------------------------------------------------------------
# The sim broker walks every held symbol's bar at every call that moves its clock; numpy costs some forty times more
# than float arithmetic on single values. These perform the same IEEE operations in the same order as the array
# functions above, so they give the same bits (tests/test_sim_broker.py holds them equal on many bars). The bar
# must be complete (no NaN).

def bar_vertices(open_: float, high: float, low: float, close: float) -> tuple[float, float, float, float]:
    """`vertices` of one bar: open, the extreme nearer the open, the other extreme, close."""
    top, bottom = max(high, low, open_, close), min(high, low, open_, close)  # bad rows clamped into the range
    if (open_ - bottom) < (top - open_):
        return open_, bottom, top, close
    return open_, top, bottom, close


def _on_path(points: tuple[float, float, float, float], fraction: float) -> float:
    segment = min(int(fraction * 3.0), 2)
    weight = (fraction - segment / 3.0) * 3.0
    start, end = points[segment], points[segment + 1]
    return start + (end - start) * weight


def bar_price(open_: float, high: float, low: float, close: float, fraction: float) -> float:
    """`price_at` for one bar."""
    return _on_path(bar_vertices(open_, high, low, close), max(0.0, min(1.0, fraction)))


def path_points(open_: float, high: float, low: float, close: float, f_from: float, f_to: float
                ) -> list[tuple[float, float]]:
    """The path of one bar between two session fractions as (fraction, price) points, both ends included.

    The sim broker walks these straight segments to find where a stop or limit is crossed.
    """
    f_from, f_to = max(0.0, min(1.0, f_from)), max(0.0, min(1.0, f_to))
    points = bar_vertices(open_, high, low, close)
    path = [(f_from, _on_path(points, f_from))]
    path += [(float(t), p) for t, p in zip(VERTEX_TIMES, points) if f_from < t < f_to]
    if f_to > f_from:
        path.append((f_to, _on_path(points, f_to)))
    return path


class OldPathMarket:
    """A market-data port that shows a daily source's sessions through the old path, as the replay once did: the
    price, range and volume so far at a fraction come from the path drawn through the day's own bar."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def snapshot(self, symbols, session, fraction):
        from common.types import INTRADAY, Snapshot

        whole = self.inner.snapshot(symbols, session, 1.0)
        o, h, lo, c = whole.open, whole.high, whole.low, whole.price
        price, high, low = intraday_view(o, h, lo, c, fraction)
        share = 1.0 if fraction >= 1.0 else float(volume_fraction(fraction))
        return Snapshot(session, fraction, list(symbols), o, high, low, price, whole.volume * share,
                        whole.prev_close, price * 0.9995, price * 1.0005, view=INTRADAY)
