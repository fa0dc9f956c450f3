"""The synthetic market behind the `sim` data source: daily bars for any symbol, SPY and VIX, computed directly.

Model (all returns are log returns, one row per NYSE session counted from EPOCH = 2010-01-04, day index 0):
- Every series is cut into blocks of BLOCK_DAYS sessions, shifted by a per-symbol phase so that symbols do not all
  change regime on the same day. Each block draws a regime (uptrend, flat or downtrend drift), a volatility level,
  its total diffusion move and up to two jumps (earnings-like gaps, more often up than down).
- Inside a block the daily diffusion is a bridge of fat-tailed shocks pinned to the block's total, so the level at
  the start of any block is a short sum over earlier block totals. A window of bars therefore costs O(window), not
  O(days since the epoch), and a symbol's bar on a date is identical whatever window or other symbols are asked.
- Every random number is a counter-based hash of (symbol seed, stream, day or block index); the symbol seed is the
  CRC32 of its name, so the market is the same on every machine and in every process.
- A stock = its own path + beta x SPY's daily moves. SPY uses the same machinery with lower volatility, an upward
  drift, turbulent downtrends and sell-off jumps. VIX is SPY's recent realised volatility (a 60-day weighted
  window, falls counting about twice as much as rises) annualised, times a wandering premium: it hovers around
  15-18 in calm markets and spikes on sell-offs.
- Overnight gaps carry three quarters of a jump and a quarter of the ordinary move; high and low extend beyond the
  open and close. Volume has a per-symbol base level, grows with the size of the move and surges 2-4x on jump days
  and on a few random days.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

BLOCK_DAYS = 40
# Paths start this many sessions before the epoch, so every day a request can touch (the day before the window,
# and VIX's filter history) lies inside block 0 or later.
_ORIGIN = 3 * BLOCK_DAYS
_JUMP_SLOTS = 2
_VIX_TAPS = 60
_RALLY_CALM = 2.5  # log VIX change per unit of recent SPY return (fast 0.85 filter)
_FALL_WEIGHT, _RISE_WEIGHT = 1.3, 0.7  # how much a fall and a rise count in VIX's realised variance
_VARIANCE_DECAY = 0.97
_U64 = np.uint64

# Streams keep every random quantity independent of every other one.
(_S_SHOCK1, _S_SHOCK2, _S_TAIL, _S_GAP1, _S_GAP2, _S_HIGH, _S_LOW, _S_VOLNOISE, _S_SURGE, _S_SURGESIZE,
 _S_VIX1, _S_VIX2, _S_VIXRANGE, _S_VIXNOISE1, _S_VIXNOISE2) = range(1, 16)
(_B_REGIME, _B_DRIFT, _B_VOL, _B_TOTAL1, _B_TOTAL2) = range(101, 106)
_B_SLOT = 200  # slot streams: _B_SLOT + 10 * slot + {0: active, 1: day, 2: size, 3: sign}
_P_SYMBOL = 300  # per-symbol constants: 300 + k


@dataclass(frozen=True)
class _Style:
    """How one kind of series behaves (stocks or the index)."""

    vol_lo: float  # daily volatility range of the symbol's normal regime
    vol_hi: float
    regime_drifts: tuple[float, float, float]  # daily drift of uptrend, flat, downtrend blocks
    regime_odds: tuple[float, float]  # cumulative odds of uptrend, flat (rest: downtrend)
    drift_spread: float  # blocks draw drift x (1 +- spread)
    jump_odds: float  # chance that a jump slot fires in a block
    jump_up_odds: float
    jump_up: tuple[float, float]  # size range of up and down jumps
    jump_down: tuple[float, float]
    reversion: float  # share of the distance to the anchor level closed per block
    downtrend_vol: float  # log volatility uplift in downtrend blocks (sell-offs are turbulent)


_STOCK = _Style(0.009, 0.022, (0.0060, 0.0, -0.0030), (0.50, 0.80), 0.6, 0.45, 0.70,
                (0.025, 0.09), (0.03, 0.10), 0.15, 0.25)
_INDEX = _Style(0.0075, 0.0095, (0.0009, 0.0002, -0.0012), (0.55, 0.85), 0.5, 0.10, 0.25,
                (0.012, 0.025), (0.025, 0.06), 0.0, 0.6)
_SPY_ANCHOR = 105.0
_SPY_VOLUME = 9.0e7
_SPY_TREND = 0.00045  # SPY's average daily log drift under _INDEX


def symbol_seed(symbol: str) -> int:
    """The stable seed of a symbol (CRC32 of its name, never Python's salted hash())."""
    return zlib.crc32(symbol.encode("utf-8"))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: turns a counter into 64 well-mixed bits."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _uniform(seeds: np.ndarray, stream: int, counter: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1) from (seed, stream, counter); shapes broadcast."""
    stream_key = _U64((stream * 0xD1B54A32D192ED03) % 2**64)
    with np.errstate(over="ignore"):  # wrap-around modulo 2**64 is the intended arithmetic
        key = (np.asarray(seeds).astype(_U64) * _U64(0x9E3779B97F4A7C15) + stream_key
               + np.asarray(counter).astype(np.int64).astype(_U64) * _U64(0xA24BAED4963EE407))
        bits = _mix(_mix(key)) >> _U64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(seeds: np.ndarray, stream_a: int, stream_b: int, counter: np.ndarray) -> np.ndarray:
    """Standard normals by Box-Muller from two uniform streams."""
    u1 = _uniform(seeds, stream_a, counter)
    u2 = _uniform(seeds, stream_b, counter)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _symbol_uniform(seeds: np.ndarray, k: int) -> np.ndarray:
    return _uniform(seeds, _P_SYMBOL + k, np.zeros_like(seeds, dtype=np.int64))


@dataclass(frozen=True)
class _Blocks:
    """Per-block draws for blocks 0..K-1 of every symbol, each (K, n)."""

    drift: np.ndarray  # effective daily drift, mean reversion included
    vol: np.ndarray
    diffusion: np.ndarray  # the block's total diffusion move
    base: np.ndarray  # log level at the start of the block
    slot_day: np.ndarray  # (slots, K, n) day offset inside the block, -1 when the slot is idle
    slot_size: np.ndarray  # (slots, K, n)


def _block_draws(seeds: np.ndarray, style: _Style, n_blocks: int, anchor: np.ndarray) -> _Blocks:
    k = np.arange(n_blocks, dtype=np.int64)[:, None]
    s = seeds[None, :]
    regime = _uniform(s, _B_REGIME, k)
    up, flat, down = style.regime_drifts
    drift = np.where(regime < style.regime_odds[0], up, np.where(regime < style.regime_odds[1], flat, down))
    drift = drift * (1.0 + style.drift_spread * (2.0 * _uniform(s, _B_DRIFT, k) - 1.0))
    sym_vol = style.vol_lo + (style.vol_hi - style.vol_lo) * _symbol_uniform(seeds, 1)
    in_downtrend = regime > style.regime_odds[1]
    vol = sym_vol[None, :] * np.exp(0.35 * (_uniform(s, _B_VOL, k) - 0.5) + style.downtrend_vol * in_downtrend)
    diffusion = vol * np.sqrt(BLOCK_DAYS) * _normal(s, _B_TOTAL1, _B_TOTAL2, k)
    slot_day, slot_size = _jump_slots(s, style, k)
    jumps_total = slot_size.sum(axis=0)
    eff_drift, base = _levels(drift, diffusion + jumps_total, style.reversion, anchor)
    return _Blocks(eff_drift, vol, diffusion, base, slot_day, slot_size)


def _jump_slots(s: np.ndarray, style: _Style, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days, sizes = [], []
    for slot in range(_JUMP_SLOTS):
        stream = _B_SLOT + 10 * slot
        active = _uniform(s, stream, k) < style.jump_odds
        day = np.minimum((_uniform(s, stream + 1, k) * BLOCK_DAYS).astype(np.int64), BLOCK_DAYS - 1)
        size_u = _uniform(s, stream + 2, k)
        is_up = _uniform(s, stream + 3, k) < style.jump_up_odds
        size = np.where(is_up, style.jump_up[0] + (style.jump_up[1] - style.jump_up[0]) * size_u,
                        -(style.jump_down[0] + (style.jump_down[1] - style.jump_down[0]) * size_u))
        days.append(np.where(active, day, -1))
        sizes.append(np.where(active, size, 0.0))
    return np.stack(days), np.stack(sizes)


def _levels(drift: np.ndarray, moves: np.ndarray, reversion: float, anchor: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Block start levels, walking block by block so the drift can lean back towards the anchor level.

    The walk always starts at block 0, so a block's level never depends on the window that was asked for.
    """
    eff_drift = np.empty_like(drift)
    base = np.empty_like(drift)
    level = anchor.astype(np.float64).copy()
    for k in range(drift.shape[0]):
        base[k] = level
        eff_drift[k] = drift[k] - reversion * (level - anchor) / BLOCK_DAYS
        level = level + eff_drift[k] * BLOCK_DAYS + moves[k]
    return eff_drift, base


def _own_path(seeds: np.ndarray, style: _Style, anchor: np.ndarray, day_lo: int, day_hi: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(log close level, jump return) for days day_lo..day_hi (rows) of each seed (columns)."""
    if day_lo + _ORIGIN < 0:
        raise ValueError(f"day {day_lo} is before the start of the synthetic paths")
    day_lo, day_hi = day_lo + _ORIGIN, day_hi + _ORIGIN
    n = seeds.shape[0]
    phase = (seeds % BLOCK_DAYS).astype(np.int64)
    k_first = int(((day_lo + phase) // BLOCK_DAYS).min())
    k_last = int(((day_hi + phase) // BLOCK_DAYS).max())
    blocks = _block_draws(seeds, style, k_last + 1, anchor)
    ks = np.arange(k_first, k_last + 1)
    j = np.arange(BLOCK_DAYS, dtype=np.int64)
    day = ks[:, None, None] * BLOCK_DAYS + j[None, :, None] - phase[None, None, :]  # (nb, L, n)
    s = seeds[None, None, :]
    tail = np.where(_uniform(s, _S_TAIL, day) < 0.1, 2.2, 1.0) / np.sqrt(0.9 + 0.1 * 2.2 ** 2)
    shock = _normal(s, _S_SHOCK1, _S_SHOCK2, day) * tail
    walked = np.cumsum(shock, axis=1)
    steps = (j + 1.0)[None, :, None]
    pick = lambda a: a[ks][:, None, :]  # noqa: E731  (block draws for the blocks in view)
    slot_day, slot_size = blocks.slot_day[:, ks][:, :, None, :], blocks.slot_size[:, ks][:, :, None, :]
    jumps_so_far = (slot_size * (slot_day <= j[None, None, :, None]) * (slot_day >= 0)).sum(axis=0)
    jump_today = (slot_size * (slot_day == j[None, None, :, None])).sum(axis=0)
    level = (pick(blocks.base) + pick(blocks.drift) * steps
             + pick(blocks.vol) * (walked - steps / BLOCK_DAYS * walked[:, -1:, :])
             + pick(blocks.diffusion) * steps / BLOCK_DAYS + jumps_so_far)
    return _scatter(day, level, day_lo, day_hi, n), _scatter(day, jump_today, day_lo, day_hi, n)


def _scatter(day: np.ndarray, values: np.ndarray, day_lo: int, day_hi: int, n: int) -> np.ndarray:
    """Move block-ordered values onto a (days, symbols) grid for day_lo..day_hi."""
    out = np.empty((day_hi - day_lo + 1, n))
    inside = (day >= day_lo) & (day <= day_hi)
    cols = np.broadcast_to(np.arange(n)[None, None, :], day.shape)
    out[day[inside] - day_lo, cols[inside]] = values[inside]
    return out


@dataclass(frozen=True)
class DailyBars:
    """Synthetic daily bars for days day_lo..day_hi (rows) and the requested symbols (columns)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    prev_close: np.ndarray


def _spy_path(day_lo: int, day_hi: int) -> tuple[np.ndarray, np.ndarray]:
    seed = np.array([symbol_seed("SPY")], dtype=np.int64)
    return _own_path(seed, _INDEX, np.log(np.array([_SPY_ANCHOR])), day_lo, day_hi)


def daily_bars(symbols: Sequence[str], day_lo: int, day_hi: int) -> DailyBars:
    """Bars of `symbols` for session indices day_lo..day_hi (inclusive); "SPY" gets the index series."""
    if not len(symbols):  # no columns (an empty cap of the universe): empty bars of the right shape
        empty = np.empty((day_hi - day_lo + 1, 0))
        return DailyBars(empty, empty, empty, empty, empty, empty)
    seeds = np.array([symbol_seed(s) for s in symbols], dtype=np.int64)
    spy_level, spy_jump = _spy_path(day_lo - 1, day_hi)
    beta = 0.4 + 0.8 * _symbol_uniform(seeds, 2)
    anchor = np.log(8.0 + 250.0 * _symbol_uniform(seeds, 3) ** 2)
    own_level, own_jump = _own_path(seeds, _STOCK, anchor, day_lo - 1, day_hi)
    # Stocks share SPY's daily moves but not its long-run growth, which would compound into
    # five-figure share prices over the years (real companies split their shares instead).
    spy_days = np.arange(day_lo - 1, day_hi + 1)[:, None]
    spy_dev = spy_level - np.log(_SPY_ANCHOR) - _SPY_TREND * spy_days
    level = own_level + beta[None, :] * spy_dev
    jump = own_jump + beta[None, :] * spy_jump
    base_volume = np.exp(np.log(4e5) + np.log(80.0) * _symbol_uniform(seeds, 4))
    is_spy = np.array([s == "SPY" for s in symbols])
    if is_spy.any():
        level[:, is_spy], jump[:, is_spy] = spy_level, spy_jump
        own_jump[:, is_spy] = spy_jump
        base_volume[is_spy] = _SPY_VOLUME
    return _bars_from_levels(seeds, level, jump, own_jump, base_volume, day_lo)


def _bars_from_levels(seeds: np.ndarray, level: np.ndarray, jump: np.ndarray, own_jump: np.ndarray,
                      base_volume: np.ndarray, day_lo: int) -> DailyBars:
    """OHLCV from close levels (row 0 is the day before day_lo, used for the gap and previous close)."""
    days = np.arange(day_lo, day_lo + level.shape[0] - 1, dtype=np.int64)[:, None]
    s = seeds[None, :]
    ret = np.diff(level, axis=0)
    jump = jump[1:]
    ordinary = ret - jump
    gap = 0.75 * jump + 0.25 * ordinary + 0.002 * _normal(s, _S_GAP1, _S_GAP2, days)
    prev_log = level[:-1]
    log_open = prev_log + gap
    log_close = level[1:]
    day_vol = np.abs(ordinary) + 0.012
    log_high = np.maximum(log_open, log_close) - 0.25 * day_vol * np.log(_uniform(s, _S_HIGH, days))
    log_low = np.minimum(log_open, log_close) + 0.25 * day_vol * np.log(_uniform(s, _S_LOW, days))
    volume = _volume(s, days, ordinary, own_jump[1:], base_volume)
    return DailyBars(_to_cents(log_open), _to_cents(log_high), _to_cents(log_low), _to_cents(log_close), volume,
                     _to_cents(prev_log))


def _to_cents(log_price: np.ndarray) -> np.ndarray:
    """Quoted prices: whole cents, never below one cent (rounding is monotone, so OHLC order survives)."""
    return np.maximum(np.round(np.exp(log_price), 2), 0.01)


def _volume(s: np.ndarray, days: np.ndarray, ordinary: np.ndarray, own_jump: np.ndarray,
            base_volume: np.ndarray) -> np.ndarray:
    """Volume grows with the size of the move and surges on jump days and on a few random days."""
    u = _uniform(s, _S_VOLNOISE, days)
    noise = np.exp(0.18 * np.log(u / (1.0 - u)))
    move = 1.0 + 28.0 * np.maximum(ordinary, 0.0) + 8.0 * np.maximum(-ordinary, 0.0)
    surge_size = 2.0 + 2.0 * _uniform(s, _S_SURGESIZE, days)
    random_surge = _uniform(s, _S_SURGE, days) < 0.02
    surge = np.where((own_jump != 0.0) | random_surge, surge_size, 1.0)
    return np.maximum(np.rint(base_volume[None, :] * noise * move * surge), 1.0)


def market_series(day_lo: int, day_hi: int) -> dict[str, np.ndarray]:
    """SPY OHLCV and VIX OHLC for days day_lo..day_hi, as arrays keyed by column name."""
    spy = daily_bars(["SPY"], day_lo, day_hi)
    spy_level, _ = _spy_path(day_lo - 1 - _VIX_TAPS, day_hi)
    seed = np.array(symbol_seed("VIX"), dtype=np.int64)
    return_days = np.arange(day_lo - _VIX_TAPS, day_hi + 1, dtype=np.int64)
    own_noise = _normal(seed, _S_VIXNOISE1, _S_VIXNOISE2, return_days)
    vix_log = _vix_log_level(np.diff(spy_level[:, 0]), own_noise)  # one value per day from day_lo - 1
    days = np.arange(day_lo, day_hi + 1, dtype=np.int64)
    step = np.diff(vix_log)
    log_open = vix_log[:-1] + 0.4 * step + 0.02 * _normal(seed, _S_VIX1, _S_VIX2, days)
    log_close = vix_log[1:]
    spread = 0.03 + np.abs(step)
    log_high = np.maximum(log_open, log_close) - 0.5 * spread * np.log(_uniform(seed, _S_HIGH, days))
    log_low = np.minimum(log_open, log_close) + 0.5 * spread * np.log(_uniform(seed, _S_VIXRANGE, days))
    out = {f"spy_{name}": getattr(spy, name)[:, 0] for name in ("open", "high", "low", "close", "volume")}
    for name, values in (("open", log_open), ("high", log_high), ("low", log_low), ("close", log_close)):
        out[f"vix_{name}"] = np.round(np.exp(values), 2)
    return out


def _vix_log_level(spy_returns: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Log VIX: SPY's recent realised volatility, annualised, with falls weighted about twice as much as rises,
    times a volatility premium that wanders on its own.

    Both averages are finite filters over the last _VIX_TAPS days (rather than recursions from the epoch), so each
    day's value is the same whatever window is asked for.
    """
    weighted_square = spy_returns ** 2 * np.where(spy_returns < 0.0, _FALL_WEIGHT, _RISE_WEIGHT)
    n_out = spy_returns.shape[0] - _VIX_TAPS + 1
    variance, premium, recent_move = np.zeros(n_out), np.zeros(n_out), np.zeros(n_out)
    weights = _VARIANCE_DECAY ** np.arange(_VIX_TAPS)
    fast_weights = 0.85 ** np.arange(_VIX_TAPS)
    for lag in range(_VIX_TAPS):
        window = slice(_VIX_TAPS - 1 - lag, _VIX_TAPS - 1 - lag + n_out)
        variance = variance + weights[lag] * weighted_square[window]
        premium = premium + fast_weights[lag] * noise[window]
        recent_move = recent_move + fast_weights[lag] * (spy_returns[window] - 0.0004)
    variance = variance / weights.sum()
    premium = premium / np.sqrt((fast_weights ** 2).sum())  # unit variance
    # Rallies calm the market and drops scare it at once, before realised volatility catches up.
    return np.log(100.0 * np.sqrt(252.0 * variance) * 1.15) + 0.05 * premium - _RALLY_CALM * recent_move
