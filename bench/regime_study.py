"""Regime study on the real SPY/VIX history: chooses the jump penalty and NEUTRAL threshold, prints the figures.

Run as `python bench/regime_study.py [PATH_TO_spy_vix_daily_1993_2018.csv]` (default `../shared/data/...`).

Procedure (the one documented in core/regime/classify.py):
1. For every penalty in `classify.PENALTY_GRID`, label every day online and trade a 0/1 SPY strategy: long on the next
   session when the jump model is in its bull state, in cash (0% return) otherwise. The penalty with the best Sharpe
   ratio over `classify.SELECTION_PERIOD` (1995-2006) wins; 2007-2018 is shown as out of sample.
2. With that penalty, every NEUTRAL threshold in `classify.NEUTRAL_GRID` is tried on the allocation-factor strategy
   (position = the day's factor, traded the next session); the best Sharpe over the same period wins.
3. The chosen constants are checked against the ones in core/regime/classify.py and the figures of the final labels
   are printed:
   bear-or-crash shares in stress and calm periods, switches per year, CRASH dates, and the strategies against
   buy-and-hold over 1995-2018, plus the time to label one day and every day.
Sharpe ratios are annualised from daily returns with a zero risk-free rate; cash earns nothing.
"""
from __future__ import annotations

import math
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.regime import classify  # noqa: E402

from core.regime.classify import FACTORS, Settings  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "spy_vix_daily_1993_2018.csv"
EVALUATION = (date(1995, 1, 1), date(2018, 12, 31))
OUT_OF_SAMPLE = (date(2007, 1, 1), date(2018, 12, 31))
STRESS_PERIODS = {"2008-09-15..2009-03-09": (date(2008, 9, 15), date(2009, 3, 9)),
                  "2002-07-01..2002-10-09": (date(2002, 7, 1), date(2002, 10, 9))}
CALM_PERIODS = {"2013-2014": (date(2013, 1, 1), date(2014, 12, 31)), "2017": (date(2017, 1, 1), date(2017, 12, 31))}
CRASH_DATES = (date(2008, 9, 29), date(2011, 8, 8))


def load_series(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["date"], index_col="date")


def _between(frame: pd.DataFrame | pd.Series, period: tuple[date, date]):
    return frame.loc[pd.Timestamp(period[0]):pd.Timestamp(period[1])]


def strategy_returns(close: pd.Series, position: pd.Series) -> pd.Series:
    """Daily returns of holding `position` (decided at a close) over the NEXT session."""
    spy = close.pct_change()
    return (position.shift(1) * spy).dropna()


def sharpe(returns: pd.Series) -> float:
    std = returns.std()
    return float(returns.mean() / std * math.sqrt(252)) if std > 0 else math.nan


def max_drawdown(returns: pd.Series) -> float:
    equity = (1.0 + returns).cumprod()
    return float((equity / equity.cummax() - 1.0).min())


def cagr(returns: pd.Series) -> float:
    years = len(returns) / 252.0
    return float((1.0 + returns).prod() ** (1.0 / years) - 1.0) if years > 0 else math.nan


def switches_per_year(labels: pd.Series) -> float:
    changes = int((labels != labels.shift(1)).iloc[1:].sum())
    years = (labels.index[-1] - labels.index[0]).days / 365.25
    return changes / years if years > 0 else math.nan


def bull_signal(rows: pd.DataFrame) -> pd.Series:
    """1 on days the jump model (or the fallback rule) is in its bull state, else 0; CRASH is ignored here."""
    return rows["params"].map(lambda p: p["model_state"] == "bull").astype(float)


def penalty_table(series: pd.DataFrame) -> pd.DataFrame:
    close = series["spy_close"]
    table = []
    for penalty in classify.PENALTY_GRID:
        rows = classify.compute_regimes(series, settings=Settings(penalty=penalty, neutral_dd_z=None))
        signal = bull_signal(rows)
        returns = strategy_returns(close, signal)
        table.append({"penalty": penalty,
                      "sharpe_select": sharpe(_between(returns, classify.SELECTION_PERIOD)),
                      "sharpe_2007_2018": sharpe(_between(returns, OUT_OF_SAMPLE)),
                      "sharpe_1995_2018": sharpe(_between(returns, EVALUATION)),
                      "maxdd_1995_2018": max_drawdown(_between(returns, EVALUATION)),
                      "bull_bear_switches_per_year": switches_per_year(_between(signal, EVALUATION)),
                      "rows": rows})
    return pd.DataFrame(table).set_index("penalty")


def remap(rows: pd.DataFrame, neutral: float | None) -> pd.Series:
    """The final labels of `rows` under another NEUTRAL threshold (same mapping code, same model states)."""
    settings = Settings(penalty=classify.JUMP_PENALTY, neutral_dd_z=neutral)

    def label(row: pd.Series) -> str:
        if row["crash_override"]:
            return "CRASH"
        z = row["features"]["z_dd_log_20"]
        state = row["params"]["model_state"]
        return classify.trend_regime(None if state is None else state == "bull", z if z is not None else math.nan,
                                   settings)

    return rows.apply(label, axis=1)


def neutral_table(series: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    close = series["spy_close"]
    table = []
    for neutral in classify.NEUTRAL_GRID:
        labels = remap(rows, neutral)
        returns = strategy_returns(close, labels.map(FACTORS))
        table.append({"neutral_dd_20_z": "off" if neutral is None else neutral,
                      "sharpe_select": sharpe(_between(returns, classify.SELECTION_PERIOD)),
                      "sharpe_2007_2018": sharpe(_between(returns, OUT_OF_SAMPLE)),
                      "switches_per_year": switches_per_year(_between(labels, EVALUATION)),
                      "neutral_share": float((_between(labels, EVALUATION) == "TREND_NEUTRAL").mean()),
                      "value": neutral})
    return pd.DataFrame(table)


def print_period_shares(labels: pd.Series) -> None:
    print("\nShare of days by regime in the target periods:")
    for name, period in {**STRESS_PERIODS, **CALM_PERIODS}.items():
        part = _between(labels, period)
        bear_or_crash = part.isin(["TREND_BEAR", "CRASH"]).mean()
        print(f"  {name:24s} bear-or-crash {bear_or_crash:6.1%}  bear {(part == 'TREND_BEAR').mean():6.1%}  "
              f"crash {(part == 'CRASH').mean():6.1%}  neutral {(part == 'TREND_NEUTRAL').mean():6.1%}  "
              f"({len(part)} days)")


def print_switches(rows: pd.DataFrame, labels: pd.Series) -> None:
    evaluation = _between(labels, EVALUATION)
    trend = _between(rows["params"].map(lambda p: p["trend_regime"]), EVALUATION)
    bull = _between(bull_signal(rows), EVALUATION)
    crash = _between(rows["crash_override"], EVALUATION)
    episodes = int((crash & ~crash.shift(1, fill_value=False)).sum())
    years = (evaluation.index[-1] - evaluation.index[0]).days / 365.25
    print("\nSwitches per year, 1995-2018:")
    print(f"  bull/bear state of the jump model     {switches_per_year(bull):5.2f}")
    print(f"  trend label (BULL/NEUTRAL/BEAR)       {switches_per_year(trend):5.2f}")
    print(f"  final label incl. CRASH override      {switches_per_year(evaluation):5.2f}"
          f"  ({episodes} CRASH episodes, {episodes / years:.2f} a year)")
    print("  regime share 1995-2018: " + ", ".join(f"{k} {v:.1%}" for k, v in
                                                   evaluation.value_counts(normalize=True).items()))


def print_strategies(series: pd.DataFrame, labels: pd.Series) -> None:
    close = series["spy_close"]
    in_market = labels.isin(["TREND_BULL", "TREND_NEUTRAL"]).astype(float)
    strategies = {"buy-and-hold SPY": pd.Series(1.0, index=labels.index),
                  "0/1 (in when BULL or NEUTRAL)": in_market,
                  "allocation factor (1/0.7/0.3/0)": labels.map(FACTORS)}
    print("\nStrategies 1995-01-03..2018-02-07, signal at the close traded the next session, cash earns 0:")
    print(f"  {'strategy':34s} {'Sharpe':>7s} {'max DD':>8s} {'CAGR':>7s} {'exposure':>9s}")
    for name, position in strategies.items():
        returns = _between(strategy_returns(close, position), EVALUATION)
        exposure = _between(position.shift(1), EVALUATION).mean()
        print(f"  {name:34s} {sharpe(returns):7.2f} {max_drawdown(returns):8.1%} {cagr(returns):7.1%} "
              f"{exposure:9.1%}")


def print_timings(series: pd.DataFrame) -> None:
    started = time.perf_counter()
    classify.regime_for_day(series, series.index[-1].date())
    one_day = time.perf_counter() - started
    started = time.perf_counter()
    classify.compute_regimes(series, date(1995, 1, 1))
    every_day = time.perf_counter() - started
    print(f"\nTimings: one day (latest, full history) {one_day:.3f} s; every day 1995-2018 {every_day:.1f} s")


def main(path: Path) -> None:
    series = load_series(path)
    print(f"SPY/VIX {series.index[0].date()}..{series.index[-1].date()}, {len(series)} sessions")
    penalties = penalty_table(series)
    shown = penalties.drop(columns="rows")
    print("\nPenalty selection (0/1 bull-state strategy; selection period "
          f"{classify.SELECTION_PERIOD[0]}..{classify.SELECTION_PERIOD[1]}):")
    print(shown.to_string(float_format=lambda v: f"{v:.3f}"))
    chosen_penalty = float(shown["sharpe_select"].idxmax())
    print(f"chosen penalty {chosen_penalty:g} (classify.JUMP_PENALTY = {classify.JUMP_PENALTY:g})")

    neutral = neutral_table(series, penalties.loc[classify.JUMP_PENALTY, "rows"])
    print("\nNEUTRAL threshold selection (allocation-factor strategy, penalty "
          f"{classify.JUMP_PENALTY:g}):")
    print(neutral.drop(columns="value").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = neutral.loc[neutral["sharpe_select"].idxmax(), "value"]
    chosen_neutral = None if best is None or (isinstance(best, float) and math.isnan(best)) else float(best)
    print(f"chosen threshold {chosen_neutral} (classify.NEUTRAL_DD_Z = {classify.NEUTRAL_DD_Z})")
    if chosen_penalty != classify.JUMP_PENALTY or chosen_neutral != classify.NEUTRAL_DD_Z:
        print("WARNING: the constants in core/regime/classify.py differ from this selection; update them and re-run.")

    rows = classify.compute_regimes(series)
    labels = rows["regime"]
    print_period_shares(labels)
    print_switches(rows, labels)
    print("\nCRASH dates: " + ", ".join(f"{d} {labels.get(pd.Timestamp(d), 'missing')}" for d in CRASH_DATES))
    print_strategies(series, labels)
    print_timings(series)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA)
