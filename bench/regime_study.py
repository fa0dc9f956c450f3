"""Regime study on the real SPY/VIX history: how every number of core/regime/classify.py was chosen, the options
measured against each other, and the model's figures before and after, on 1995-2006 and on 2007-2018.

Run as `python bench/regime_study.py [PATH_TO_spy_vix_daily_1993_2018.csv]` (default `../shared/data/...`); it takes
a few minutes (one pass of the online model per penalty and per option). `--quick` skips the selection grids and
the options and prints the before/after figures only.

Every label is made online (each day from data up to that day only); every choice is made on
`classify.SELECTION_PERIOD` (1995-2006) and 2007-2018 is shown as out of sample.
1. CRASH rule: the VIX spikes of 1993-2006 with VIX's percentile of its own history and SPY's drawdown from its
   63-session high, then a grid of both thresholds: CRASH days in the calm years and the known shocks caught.
2. Trend: for every penalty in `classify.PENALTY_GRID` and warm-up in `classify.WARMUP_GRID`, a 0/1 SPY strategy
   (long in the bull state, the fallback rule before the model labels, cash otherwise, traded the next session);
   the pair with the best Sharpe ratio over 1995-2006 wins. With it, every NEUTRAL threshold in
   `classify.NEUTRAL_GRID` is tried on the allocation-factor strategy (position = the day's factor); the best Sharpe
   over 1995-2006 wins. The chosen constants are checked against the ones in classify.py.
3. Options measured against each other with the same figures: the seed model, the chosen one, rolling
   standardisation windows, the `jumpmodels` library's own online prediction (refitted yearly on the trailing ten
   years, standardised on its fit window as in the library's example), other penalties.
4. Before (`classify.SEED_SETTINGS`) and after (`classify.Settings()`): the issue's targets, CRASH days per year and
   the 0/1 and allocation-factor strategies beside buy-and-hold, for 1995-2006 and 2007-2018.
The reference for agreement: the `jumpmodels` library's JumpModel (penalty 50) fitted on the model's features
(those of the paper it follows) of 1993-2006, clipped and standardised on that period as in the library's example,
and its online prediction over 2007-2018. Sharpe ratios are annualised from daily returns with a zero risk-free
rate; cash earns nothing.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.regime import classify  # noqa: E402
from core.regime.classify import FACTORS, Settings  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "spy_vix_daily_1993_2018.csv"
SELECTION = classify.SELECTION_PERIOD
OUT_OF_SAMPLE = (date(2007, 1, 1), date(2018, 12, 31))
PERIODS = {"1995-2006": SELECTION, "2007-2018": OUT_OF_SAMPLE}
BEAR_OR_CRASH = ("TREND_BEAR", "CRASH")

# The targets: window -> (first day, last day, the bound on the bear-or-crash share, ">=" or "<=")
CRISIS = {"2002-07-01..2002-10-09": (date(2002, 7, 1), date(2002, 10, 9), 0.90),
          "2008-09-15..2009-03-09": (date(2008, 9, 15), date(2009, 3, 9), 0.90),
          "2011-08-01..2011-10-03": (date(2011, 8, 1), date(2011, 10, 3), 0.70)}
CALM = {"1995-1996": (date(1995, 1, 1), date(1996, 12, 31), 0.20),
        **{str(y): (date(y, 1, 1), date(y, 12, 31), 0.10) for y in (2004, 2005, 2006, 2013, 2014, 2017)}}
CALM_CRASH_YEARS = (2004, 2005, 2006, 2013, 2014, 2017)
MAX_CALM_CRASH_DAYS = 5
SWITCH_PERIOD = (date(1997, 1, 1), date(2018, 12, 31))
MAX_SWITCHES = 1.5
MIN_AGREEMENT, MIN_KAPPA = 0.80, 0.5
REFERENCE_PENALTY = 50.0
KNOWN_SHOCKS = (date(1997, 10, 27), date(1998, 8, 27), date(2001, 9, 17), date(2002, 9, 3), date(2008, 9, 29),
                date(2010, 5, 6), date(2011, 8, 8), date(2015, 8, 24), date(2018, 2, 5))
PERCENTILE_GRID = (0.80, 0.85, 0.90, 0.95, 0.99)
DRAWDOWN_GRID = (0.0, 0.03, 0.05, 0.075, 0.10)
ROLLING_WINDOWS = (1260, 2520)


# ---------------------------------------------------------------- measures

def load_series(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["date"], index_col="date")


def between(frame: pd.DataFrame | pd.Series, period: tuple[date, date]):
    return frame.loc[pd.Timestamp(period[0]):pd.Timestamp(period[1])]


def strategy_returns(close: pd.Series, position: pd.Series) -> pd.Series:
    """Daily returns of holding `position` (decided at a close) over the NEXT session."""
    spy = close.pct_change()
    return (position.reindex(close.index).shift(1) * spy).dropna()


def sharpe(returns: pd.Series) -> float:
    std = returns.std()
    return float(returns.mean() / std * math.sqrt(252)) if std > 0 else math.nan


def max_drawdown(returns: pd.Series) -> float:
    equity = (1.0 + returns).cumprod()
    return float((equity / equity.cummax() - 1.0).min())


def cagr(returns: pd.Series) -> float:
    years = len(returns) / 252.0
    return float((1.0 + returns).prod() ** (1.0 / years) - 1.0) if years > 0 else math.nan


def bearish(labels: pd.Series) -> pd.Series:
    """The two-state reading of a label: True on TREND_BEAR or CRASH."""
    return labels.isin(BEAR_OR_CRASH)


def switches_per_year(flags: pd.Series, period: tuple[date, date] | None = None) -> float:
    part = flags if period is None else between(flags, period)
    changes = int((part != part.shift(1)).iloc[1:].sum())
    years = (part.index[-1] - part.index[0]).days / 365.25
    return changes / years if years > 0 else math.nan


def kappa(a: pd.Series, b: pd.Series) -> float:
    """Cohen's kappa of two 0/1 series: agreement beyond what their shares alone would give."""
    a, b = a.astype(bool).to_numpy(), b.astype(bool).to_numpy()
    observed = float(np.mean(a == b))
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return (observed - chance) / (1 - chance) if chance < 1 else math.nan


def share(labels: pd.Series, first: date, last: date) -> float:
    return float(bearish(between(labels, (first, last))).mean())


def figures(labels: pd.Series, reference: pd.Series | None) -> dict[str, float]:
    """Every target figure of one label series."""
    out = {name: share(labels, first, last) for name, (first, last, _) in {**CRISIS, **CALM}.items()}
    for year in CALM_CRASH_YEARS:
        out[f"crash days {year}"] = float((between(labels, (date(year, 1, 1), date(year, 12, 31))) == "CRASH").sum())
    flags = bearish(labels)
    out["switches 1997-2018"] = switches_per_year(flags, SWITCH_PERIOD)
    for name, period in PERIODS.items():
        out[f"switches {name}"] = switches_per_year(flags, period)
    if reference is not None:
        ours = flags.reindex(reference.index)
        out["agreement 2007-2018"] = float((ours == reference.astype(bool)).mean())
        out["kappa 2007-2018"] = kappa(ours, reference)
    return out


def target_met(name: str, value: float) -> bool | None:
    if name in CRISIS:
        return value >= CRISIS[name][2]
    if name in CALM:
        return value <= CALM[name][2]
    if name.startswith("crash days"):
        return value <= MAX_CALM_CRASH_DAYS
    if name == "switches 1997-2018":
        return value <= MAX_SWITCHES
    if name.startswith("agreement"):
        return value >= MIN_AGREEMENT
    if name.startswith("kappa"):
        return value >= MIN_KAPPA
    return None


# ---------------------------------------------------------------- the jumpmodels library

def _library_inputs(series: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    raw = classify.raw_features(series).iloc[classify.FEATURE_WARMUP_DAYS:]
    return raw, classify._log_returns(series).reindex(raw.index)


def _library_fit(train: pd.DataFrame, returns: pd.Series, penalty: float):
    """The library's example workflow: clip at 3 standard deviations, standardise, fit, bull = state 0."""
    from jumpmodels.jump import JumpModel
    from jumpmodels.preprocess import DataClipperStd, StandardScalerPD

    clipper, scaler = DataClipperStd(mul=3.0), StandardScalerPD()
    x = scaler.fit_transform(clipper.fit_transform(train))
    model = JumpModel(n_components=2, jump_penalty=penalty, random_state=0).fit(x, returns.loc[train.index],
                                                                                 sort_by="cumret")
    return model, lambda frame: scaler.transform(clipper.transform(frame))


def reference_bear(series: pd.DataFrame, penalty: float = REFERENCE_PENALTY) -> pd.Series:
    """The reference: 1 where the library's model, fitted on 1993-2006, says bear online over 2007-2018."""
    raw, returns = _library_inputs(series)
    model, transform = _library_fit(between(raw, (date(1900, 1, 1), SELECTION[1])), returns, penalty)
    test = between(raw, OUT_OF_SAMPLE)
    return pd.Series(np.asarray(model.predict_online(transform(test))), index=test.index, name="reference")


def library_online_bull(series: pd.DataFrame, penalty: float) -> pd.Series:
    """An option for the product: the library refitted on the first session of each year on the trailing
    FIT_WINDOW_DAYS feature rows (standardised on them), its online prediction run from the window's start to the
    year's end; NaN before MIN_FIT_ROWS rows. 1.0 = bull."""
    raw, returns = _library_inputs(series)
    bull = pd.Series(np.nan, index=raw.index)
    years = sorted(set(raw.index.year))
    for year in years:
        in_year = np.flatnonzero(raw.index.year == year)
        first = int(in_year[0])
        if first + 1 < classify.MIN_FIT_ROWS:
            continue
        start = max(0, first - classify.FIT_WINDOW_DAYS + 1)
        model, transform = _library_fit(raw.iloc[start:first + 1], returns, penalty)
        states = np.asarray(model.predict_online(transform(raw.iloc[start:int(in_year[-1]) + 1])))
        bull.iloc[first:int(in_year[-1]) + 1] = (states[first - start:] == 0).astype(float)
    return bull.reindex(series.index)


# ---------------------------------------------------------------- labels from the model's rows

def fallback_bull(rows: pd.DataFrame) -> pd.Series:
    """The fallback rule's state per day (None under MIN_RAW_DAYS returns), as classify applies it."""
    sortino = rows["features"].map(lambda f: f["sortino_60"])
    seen = pd.Series(np.arange(len(rows)), index=rows.index)
    return sortino.where(seen >= classify.MIN_RAW_DAYS).map(lambda v: None if v is None or math.isnan(v) else v > 0)


def model_bull(rows: pd.DataFrame) -> pd.Series:
    return rows["params"].map(lambda p: None if p["model_state"] is None else p["model_state"] == "bull")


def with_warmup(series: pd.DataFrame, rows: pd.DataFrame, drawdown: float | None) -> pd.Series:
    """The bull state of rows computed without a warm-up, as a warm-up of `drawdown` would give it: the fallback
    rule until SPY first closes that far under its running high (the fits after it are the same)."""
    done = pd.Series(classify.warmed_up(classify._spy_close(series), drawdown), index=series.index)
    return model_bull(rows).where(done.reindex(rows.index), fallback_bull(rows))


def state(value) -> bool | None:
    """A bull flag as classify reads it: True, False or None (no opinion), from a bool, a 0/1 float or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def labels_from(rows: pd.DataFrame, bull: pd.Series, neutral: float | None, crash: pd.Series) -> pd.Series:
    """Final labels from a bull state per day, the NEUTRAL mapping of classify and a CRASH flag per day."""
    settings = Settings(neutral_dd_z=neutral)
    dd_z = rows["features"].map(lambda f: f["z_dd_log_20"])
    trend = [classify.trend_regime(state(b), z if z is not None else math.nan, settings)
             for b, z in zip(bull.reindex(rows.index), dd_z)]
    return pd.Series(trend, index=rows.index).where(~crash.reindex(rows.index).astype(bool), "CRASH")


def signal(bull: pd.Series) -> pd.Series:
    """1.0 on days in the bull state, else 0.0 (cash)."""
    return bull.map(lambda v: 1.0 if state(v) else 0.0)


# ---------------------------------------------------------------- 1. the CRASH rule

def crash_calibration(series: pd.DataFrame) -> None:
    vix, spy = series["vix_close"], classify._spy_close(series)
    seed = classify.vix_override(vix, spy, "seed")
    spikes = between(seed[seed["trigger"]], (date(1993, 1, 1), SELECTION[1]))
    print("\n1. CRASH rule. The VIX spikes (+20% in a session or +50% in three) of 1993-2006:")
    print(f"  {'day':10s} {'VIX':>6s} {'VIX pct':>8s} {'SPY vs 63d high':>16s}")
    for day, row in spikes.iterrows():
        pct = "-" if math.isnan(row["vix_percentile"]) else f"{row['vix_percentile']:.3f}"
        print(f"  {day.date()} {vix.loc[day]:6.2f} {pct:>8s} {row['spy_drawdown']:16.1%}")
    print("\n  Threshold grid (VIX percentile >= P and SPY >= D under its 63-session high): CRASH days and episodes,"
          " the most CRASH days in one calm year, known shocks caught of "
          f"{len(KNOWN_SHOCKS)}:")
    print(f"  {'P':>5s} {'D':>6s} | {'days 95-06':>10s} {'ep 95-06':>8s} {'days 07-18':>10s} {'ep 07-18':>8s} "
          f"{'calm max':>8s} {'shocks':>6s}")
    for p in PERCENTILE_GRID:
        for d in DRAWDOWN_GRID:
            active = classify.vix_override(vix, spy, "shock", percentile_at_least=p, drawdown_at_least=d)["active"]
            starts = active & ~active.shift(1, fill_value=False)
            calm = max(int(between(active, (date(y, 1, 1), date(y, 12, 31))).sum()) for y in CALM_CRASH_YEARS)
            caught = sum(bool(active.get(pd.Timestamp(day), False)) for day in KNOWN_SHOCKS)
            mark = "  <- chosen" if (p, d) == (classify.VIX_PERCENTILE, classify.SPY_SHOCK_DRAWDOWN) else ""
            print(f"  {p:5.2f} {d:6.1%} | {int(between(active, SELECTION).sum()):10d} "
                  f"{int(between(starts, SELECTION).sum()):8d} {int(between(active, OUT_OF_SAMPLE).sum()):10d} "
                  f"{int(between(starts, OUT_OF_SAMPLE).sum()):8d} {calm:8d} {caught:6d}{mark}")


# ---------------------------------------------------------------- 2. the trend model

def penalty_rows(series: pd.DataFrame) -> dict[float, pd.DataFrame]:
    """The rows of every penalty, without a warm-up (the warm-up only masks them: see with_warmup)."""
    out = {}
    for penalty in classify.PENALTY_GRID:
        started = time.perf_counter()
        out[penalty] = classify.compute_regimes(series, settings=Settings(penalty=penalty, warmup_drawdown=None))
        print(f"  penalty {penalty:g}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def trend_selection(series: pd.DataFrame, by_penalty: dict[float, pd.DataFrame]) -> tuple[float | None, float]:
    close = series["spy_close"]
    table = []
    for warmup in classify.WARMUP_GRID:
        for penalty, rows in by_penalty.items():
            bull = signal(with_warmup(series, rows, warmup))
            returns = strategy_returns(close, bull)
            table.append({"warmup": "none" if warmup is None else f"{warmup:.0%}", "penalty": penalty,
                          "sharpe 1995-2006": sharpe(between(returns, SELECTION)),
                          "sharpe 2007-2018": sharpe(between(returns, OUT_OF_SAMPLE)),
                          "switches 1995-2006": switches_per_year(bull, SELECTION),
                          "switches 2007-2018": switches_per_year(bull, OUT_OF_SAMPLE), "value": warmup})
    frame = pd.DataFrame(table)
    print("\n2. Trend: warm-up x penalty, 0/1 bull-state strategy (switches of the bull signal a year):")
    print(frame.drop(columns="value").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = frame.loc[frame["sharpe 1995-2006"].idxmax()]
    warmup = None if best["value"] is None or (isinstance(best["value"], float) and math.isnan(best["value"])) \
        else float(best["value"])
    print(f"chosen: warm-up {best['warmup']}, penalty {best['penalty']:g} (classify: WARMUP_DRAWDOWN = "
          f"{classify.WARMUP_DRAWDOWN}, JUMP_PENALTY = {classify.JUMP_PENALTY:g})")
    return warmup, float(best["penalty"])


def neutral_selection(series: pd.DataFrame, rows: pd.DataFrame, bull: pd.Series, crash: pd.Series) -> float | None:
    close = series["spy_close"]
    table = []
    for neutral in classify.NEUTRAL_GRID:
        labels = labels_from(rows, bull, neutral, crash)
        returns = strategy_returns(close, labels.map(FACTORS))
        table.append({"neutral_dd_20_z": "off" if neutral is None else neutral,
                      "sharpe 1995-2006": sharpe(between(returns, SELECTION)),
                      "sharpe 2007-2018": sharpe(between(returns, OUT_OF_SAMPLE)),
                      "switches 1995-2006": switches_per_year(bearish(labels), SELECTION),
                      "neutral share": float((between(labels, SELECTION) == "TREND_NEUTRAL").mean()), "value": neutral})
    frame = pd.DataFrame(table)
    print("\n   NEUTRAL threshold, allocation-factor strategy (with the shock CRASH rule):")
    print(frame.drop(columns="value").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = frame.loc[frame["sharpe 1995-2006"].idxmax(), "value"]
    chosen = None if best is None or (isinstance(best, float) and math.isnan(best)) else float(best)
    print(f"chosen threshold {chosen} (classify.NEUTRAL_DD_Z = {classify.NEUTRAL_DD_Z})")
    return chosen


# ---------------------------------------------------------------- 3. options side by side

def options_table(series: pd.DataFrame, by_penalty: dict[float, pd.DataFrame], reference: pd.Series,
                  before: pd.DataFrame, after: pd.DataFrame) -> None:
    close = series["spy_close"]
    crash = after["crash_override"]
    chosen = Settings()
    options: dict[str, pd.Series] = {"seed (before)": before["regime"], "chosen (after)": after["regime"]}
    for penalty in (50.0, 200.0):
        if penalty in by_penalty and penalty != chosen.penalty:
            rows = by_penalty[penalty]
            options[f"warm-up, penalty {penalty:g}"] = labels_from(
                rows, with_warmup(series, rows, chosen.warmup_drawdown), chosen.neutral_dd_z, crash)
    rows = by_penalty.get(chosen.penalty)
    if rows is not None:
        options["no warm-up, chosen penalty"] = labels_from(rows, model_bull(rows), chosen.neutral_dd_z, crash)
    for window in ROLLING_WINDOWS:
        started = time.perf_counter()
        rolled = classify.compute_regimes(series, settings=replace(chosen, standardise_window=window))
        options[f"rolling z {window // 252}y + warm-up"] = rolled["regime"]
        print(f"  rolling {window}: {time.perf_counter() - started:.0f} s", flush=True)
    for penalty in (REFERENCE_PENALTY, chosen.penalty):
        started = time.perf_counter()
        library = library_online_bull(series, penalty).reindex(after.index)
        fallback = fallback_bull(after)
        plain = library.map(state).where(library.notna(), fallback)
        options[f"library online, penalty {penalty:g}"] = labels_from(after, plain, None, crash)
        done = pd.Series(classify.warmed_up(classify._spy_close(series), chosen.warmup_drawdown), index=series.index)
        options[f"library online + warm-up, p {penalty:g}"] = labels_from(after, plain.where(done, fallback), None,
                                                                          crash)
        print(f"  library online {penalty:g}: {time.perf_counter() - started:.0f} s", flush=True)
    print("\n3. Options (all with the shock CRASH rule except the seed; library options: no NEUTRAL):")
    names = [*CRISIS, *CALM, "switches 1997-2018", "agreement 2007-2018", "kappa 2007-2018"]
    header = ["option", *names, "0/1 Sharpe 95-06", "0/1 Sharpe 07-18"]
    print("  " + " | ".join(header))
    for name, labels in options.items():
        values = figures(labels, reference)
        returns = strategy_returns(close, (~bearish(labels)).astype(float))
        cells = [f"{values[n]:.2f}" for n in names] + [f"{sharpe(between(returns, p)):.2f}" for p in PERIODS.values()]
        print("  " + " | ".join([name, *cells]))


# ---------------------------------------------------------------- 4. before and after

def print_targets(before: dict[str, float], after: dict[str, float]) -> None:
    print("\n4. Targets, online labels (before = classify.SEED_SETTINGS, after = classify.Settings()):")
    print(f"  {'figure':28s} {'before':>8s} {'after':>8s}  target")
    for name in after:
        mark = target_met(name, after[name])
        bound = ("" if mark is None else ("met" if mark else "MISSED"))
        print(f"  {name:28s} {before.get(name, math.nan):8.2f} {after[name]:8.2f}  {bound}")


def print_crash_days(before: pd.Series, after: pd.Series) -> None:
    years = sorted(set(after.index.year))
    print("\n  CRASH days a year, before -> after:")
    count = lambda labels, year: int((labels.loc[str(year)] == "CRASH").sum())  # noqa: E731
    print("  " + ", ".join(f"{y}: {count(before, y)}->{count(after, y)}" for y in years))


def print_strategies(series: pd.DataFrame, before: pd.Series, after: pd.Series) -> None:
    close = series["spy_close"]
    print("\n  Strategies, signal at the close traded the next session, cash earns 0 (Sharpe / max drawdown / CAGR):")
    print(f"  {'strategy':38s} " + " ".join(f"{name:>24s}" for name in PERIODS))
    strategies = {"buy-and-hold SPY": pd.Series(1.0, index=close.index)}
    for when, labels in (("before", before), ("after", after)):
        strategies[f"0/1 (in unless BEAR/CRASH), {when}"] = (~bearish(labels)).astype(float)
        strategies[f"allocation factor, {when}"] = labels.map(FACTORS)
    for name, position in strategies.items():
        cells = []
        for period in PERIODS.values():
            returns = between(strategy_returns(close, position), period)
            cells.append(f"{sharpe(returns):5.2f} {max_drawdown(returns):7.1%} {cagr(returns):6.1%}")
        print(f"  {name:38s} " + " ".join(f"{c:>24s}" for c in cells))


def print_timings(series: pd.DataFrame) -> None:
    started = time.perf_counter()
    classify.regime_for_day(series, series.index[-1].date())
    one_day = time.perf_counter() - started
    print(f"\nTimings: one day (latest, full history) {one_day:.2f} s")


def main(path: Path, quick: bool = False) -> None:
    series = load_series(path)
    print(f"SPY/VIX {series.index[0].date()}..{series.index[-1].date()}, {len(series)} sessions")
    started = time.perf_counter()
    after = classify.compute_regimes(series)
    before = classify.compute_regimes(series, settings=classify.SEED_SETTINGS)
    print(f"before and after labels: {time.perf_counter() - started:.0f} s")
    reference = reference_bear(series)
    if not quick:
        crash_calibration(series)
        print("\n2. Trend: one pass per penalty")
        by_penalty = penalty_rows(series)
        warmup, penalty = trend_selection(series, by_penalty)
        rows = by_penalty[penalty]
        neutral = neutral_selection(series, rows, with_warmup(series, rows, warmup), after["crash_override"])
        if (warmup, penalty, neutral) != (classify.WARMUP_DRAWDOWN, classify.JUMP_PENALTY, classify.NEUTRAL_DD_Z):
            print("WARNING: the constants in core/regime/classify.py differ from this selection; update them and "
                  "re-run.")
        options_table(series, by_penalty, reference, before, after)
    print_targets(figures(before["regime"], reference), figures(after["regime"], reference))
    print_crash_days(before["regime"], after["regime"])
    print_strategies(series, before["regime"], after["regime"])
    print_timings(series)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(arguments[0]) if arguments else DEFAULT_DATA, quick="--quick" in sys.argv)
