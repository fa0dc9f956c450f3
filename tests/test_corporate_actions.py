"""Corporate actions and bad prints (core/corporate_actions.py) on crafted panels, on the real S&P 500 file, and in
the `strat scan` that must skip them (the ARNC spin-off of 2016-11-01)."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from common.types import Panel
from core import corporate_actions as ca
from core import strat_signals

from crafted import BASE_VOLUME, flat, ramp, use_csv_journal
from crafted import run_ok as run
from realdata import BARS, rows

BASE = 80  # bars of history before the scenario bars: the event lands on row BASE
START = np.datetime64("2016-01-04")


def history(seed: int, last_close: float = 50.0, volume: float = BASE_VOLUME, sessions: int = BASE) -> list[tuple]:
    """A random walk (1% a day, 0.3% overnight) scaled to end on `last_close`, as (open, high, low, close, volume)."""
    rng = np.random.default_rng(seed)
    close = np.exp(np.cumsum(rng.normal(0.0, 0.01, sessions)))
    open_ = np.r_[1.0, close[:-1]] * np.exp(rng.normal(0.0, 0.003, sessions))
    high = np.maximum(open_, close) * (1 + rng.uniform(0.0, 0.005, sessions))
    low = np.minimum(open_, close) * (1 - rng.uniform(0.0, 0.005, sessions))
    scale = last_close / close[-1]
    return [(o * scale, h * scale, lo * scale, c * scale, volume * v)
            for o, h, lo, c, v in zip(open_, high, low, close, rng.lognormal(0.0, 0.2, sessions))]


def panel(columns: dict[str, list[tuple]]) -> Panel:
    length = max(len(bars) for bars in columns.values())
    fields = np.full((5, length, len(columns)), np.nan)
    for j, bars in enumerate(columns.values()):
        fields[:, :len(bars), j] = np.array(bars, dtype=float).T
    return Panel(START + np.arange(length), list(columns), *fields)


def cut(bars: Panel, rows_kept: int) -> Panel:
    return Panel(bars.dates[:rows_kept], bars.symbols, *(getattr(bars, n)[:rows_kept] for n in
                                                          ("open", "high", "low", "close", "volume")))


def day(row: int) -> str:
    return str(START + row)


MISSING = (np.nan,) * 5
SCENARIOS = {
    # 2:1: opens at 0.502x, closes at 0.498x the previous close, on twice the shares
    "SPLIT": history(1) + [ramp(25.1, 24.9, 2_200_000), ramp(24.9, 25.2, 2_000_000), flat(25.2, 2_000_000)],
    # 1:10 from $3: opens at 10.1x and closes at 9.9x on a tenth of the shares
    "REVERSE": history(2, 3.0) + [ramp(30.3, 29.7, 150_000), flat(29.7, 120_000), flat(29.8, 120_000)],
    # a spin-off: opens 30% lower on 1.2x the usual volume and trades there
    "SPINOFF": history(3) + [ramp(35.0, 34.5, 1_200_000), ramp(34.5, 34.8), flat(34.8)],
    # an earnings gap: 12% lower on 4x the usual volume is real news, not a distribution
    "EARNINGS": history(4) + [ramp(44.0, 43.0, 4_000_000), flat(43.0, 2_000_000), flat(43.2)],
    # a low 40% below both open and close
    "SPIKE": history(5) + [(50.1, 50.6, 30.0, 50.3, BASE_VOLUME), flat(50.3), flat(50.4)],
    # a close of half the day's range, put right the next day
    "BADCLOSE": history(6) + [(50.0, 50.5, 49.6, 25.0, BASE_VOLUME), flat(50.0), flat(50.1)],
    # a close 15% up inside its own range, undone the next day on ordinary volume
    "UNDONE": history(7) + [(50.0, 57.6, 50.0, 57.5, BASE_VOLUME), (50.1, 50.4, 49.8, 50.2, BASE_VOLUME),
                            flat(50.2)],
    "QUIET": history(8, sessions=BASE + 3),
    # three missing sessions and a missing open in a quiet series
    "GAPPY": [MISSING if 40 <= i < 43 else ((np.nan, *bar[1:]) if i == 60 else bar)
              for i, bar in enumerate(history(9, sessions=BASE + 3))],
    # a spin-off after two missing sessions: measured from the last close present
    "GAPDROP": history(10, sessions=BASE - 2) + [MISSING, MISSING, ramp(35.0, 34.5), flat(34.5), flat(34.6)],
    "EMPTY": [MISSING] * (BASE + 3),
}


@pytest.fixture(scope="module")
def crafted() -> Panel:
    return panel(SCENARIOS)


def test_each_scenario_gives_exactly_its_events(crafted):
    found = [(e.symbol, e.day, e.kind, e.rule, e.ratio) for e in ca.events(crafted)]
    assert found == [
        ("SPLIT", day(BASE), "split", "split", 0.5),
        ("REVERSE", day(BASE), "reverse_split", "reverse_split", 10.0),
        ("SPINOFF", day(BASE), "distribution", "distribution", 0.7),
        ("SPIKE", day(BASE), "bad_print", "spike", round(30.0 / 50.3, 6)),
        ("BADCLOSE", day(BASE), "bad_print", "inconsistent", 0.5),
        ("GAPDROP", day(BASE), "distribution", "distribution", 0.7),
        ("BADCLOSE", day(BASE + 1), "bad_print", "undone", 0.5),
        ("UNDONE", day(BASE + 1), "bad_print", "undone", 1.15),
    ]


def test_reasons_say_what_happened(crafted):
    text = {(e.symbol, e.rule): e.text for e in ca.events(crafted)}
    usual_volume = np.median(crafted.volume[BASE - 20:BASE, 0])
    assert text["SPLIT", "split"] == (f"split 2:1 on {day(BASE)}: opened at 0.502x and closed at 0.498x the previous "
                                      f"close 50.00 on {crafted.volume[BASE, 0] / usual_volume:.1f}x its usual volume")
    assert text["REVERSE", "reverse_split"].startswith(f"reverse split 1:10 on {day(BASE)}: opened at 10.100x")
    assert text["SPINOFF", "distribution"].startswith(
        f"spin-off or special dividend on {day(BASE)}: opened -30.0% below the previous close (50.00 -> 35.00, ")
    assert text["SPINOFF", "distribution"].endswith("and stayed there (high 35.00)")
    assert text["SPIKE", "spike"].startswith(f"bad print on {day(BASE)}: low 30.00 is 40% beyond both open 50.10 and "
                                             "close 50.30")
    assert text["BADCLOSE", "inconsistent"] == (f"bad print on {day(BASE)}: close 25.00 outside the day's range "
                                                "49.60-50.50")
    assert text["UNDONE", "undone"] == (f"bad print on {day(BASE)}: its close 57.50 (+15.0%) was undone on "
                                        f"{day(BASE + 1)} (close 50.20)")


@pytest.mark.parametrize("drop, volume, flagged", [
    (0.12, 4.0, False),  # an earnings gap: heavy volume
    (0.12, 2.0, True),  # the same drop on ordinary volume: a distribution
    (0.25, 6.0, True),  # a large drop may come with up to 7.5x (index funds and arbitrage: NI, XRX, DHR)
    (0.25, 10.0, False),  # beyond that it is news
    (0.05, 1.0, False),  # too small to be told from the market
])
def test_a_drop_is_a_distribution_by_its_size_and_volume(drop, volume, flagged):
    price = 50.0 * (1 - drop)
    bars = panel({"X": history(11) + [ramp(price, price * 0.995, int(volume * BASE_VOLUME))]})
    assert [e.rule for e in ca.events(bars)] == (["distribution"] if flagged else [])


def test_a_drop_that_the_day_buys_back_is_no_distribution():
    # opens 20% down on ordinary volume but trades back above the middle of the gap: a bad open or a flash crash
    bars = panel({"X": history(12) + [(40.0, 47.0, 39.8, 46.5, BASE_VOLUME)]})
    assert ca.events(bars) == []


def test_a_jump_up_on_ordinary_volume_is_a_bad_print_and_on_news_volume_is_not():
    quiet = panel({"X": history(13) + [ramp(60.0, 60.3, BASE_VOLUME)]})
    assert [(e.kind, e.rule) for e in ca.events(quiet)] == [("bad_print", "jump")]
    news = panel({"X": history(13) + [ramp(60.0, 60.3, 5 * BASE_VOLUME)]})
    assert ca.events(news) == []


def test_inconsistent_bars_are_flagged_from_the_first_bar():
    bars = panel({"HL": [(10.2, 10.0, 10.4, 10.1, 100.0), (10.0, 10.5, 9.5, 10.2, 100.0)],
                  "ZERO": [(10.0, 10.5, 9.5, 10.2, 100.0), (10.2, 10.4, 0.0, 10.1, 100.0)]})
    assert [(e.symbol, e.day, e.text) for e in ca.events(bars)] == [
        ("HL", day(0), f"bad print on {day(0)}: high 10.00 below low 10.40"),
        ("ZERO", day(1), (f"bad print on {day(1)}: a non-positive price (open 10.20, high 10.40, low 0.00, "
                          "close 10.10)"))]


def test_a_quiet_market_flags_nothing():
    rng = np.random.default_rng(21)
    shape = (250, 300)
    close = rng.uniform(8, 300, shape[1]) * np.exp(np.cumsum(rng.normal(0, 0.02, shape), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.01, shape))
    high, low = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.99
    volume = rng.uniform(2e5, 5e6, shape[1]) * rng.lognormal(0, 0.4, shape)
    bars = Panel(START + np.arange(shape[0]), [f"S{j}" for j in range(shape[1])], open_, high, low, close, volume)
    assert ca.events(bars) == []
    assert all(reason is None for reason in ca.recent_reasons(bars, 250))


def test_no_look_ahead_appending_rows_never_changes_an_earlier_flag(crafted):
    full = ca.events(crafted)
    for kept in range(1, len(crafted.dates) + 1):
        last_day = str(crafted.dates[kept - 1])
        assert ca.events(cut(crafted, kept)) == [e for e in full if e.day <= last_day]


def test_since_keeps_the_baselines_and_drops_earlier_rows(crafted):
    full = ca.events(crafted)
    assert ca.events(crafted, since=BASE + 1) == [e for e in full if e.day >= day(BASE + 1)]
    assert ca.events(crafted, since=-2) == [e for e in full if e.day >= day(BASE + 1)]
    assert ca.events(crafted, since=BASE + 3) == []


def test_recent_reasons_give_the_latest_event_within_the_lookback(crafted):
    reasons = dict(zip(crafted.symbols, ca.recent_reasons(crafted, 3)))
    assert reasons["BADCLOSE"].startswith(f"bad print on {day(BASE)}: its close 25.00")  # the undone one, a day later
    assert reasons["SPLIT"].startswith(f"split 2:1 on {day(BASE)}")
    assert [s for s, r in reasons.items() if r is None] == ["EARNINGS", "QUIET", "GAPPY", "EMPTY"]
    # two rows back the events of row BASE are out of the window, those of BASE + 1 still in
    reasons = dict(zip(crafted.symbols, ca.recent_reasons(crafted, 2)))
    assert [s for s, r in reasons.items() if r is not None] == ["BADCLOSE", "UNDONE"]


def test_recent_reasons_are_the_same_for_a_symbol_alone_or_among_all(crafted):
    together = ca.recent_reasons(crafted, 10)
    for j, symbol in enumerate(crafted.symbols):
        assert ca.recent_reasons(crafted.select([symbol]), 10)[0] == together[j]


def test_recent_reasons_over_500_symbols_and_120_sessions_find_the_one_planted_event():
    # the scanners' size (timing: bench/corporate_actions_study.py, about 1 ms)
    rng = np.random.default_rng(5)
    shape = (120, 500)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, shape), axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.004, shape))
    high, low = np.maximum(open_, close) * 1.005, np.minimum(open_, close) * 0.995
    volume = np.full(shape, 1e6)
    prev = close[99, 321]
    open_[100:, 321], close[100:, 321] = open_[100:, 321] * 0.75, close[100:, 321] * 0.75
    high[100:, 321], low[100:, 321] = high[100:, 321] * 0.75, low[100:, 321] * 0.75
    bars = Panel(START + np.arange(120), [f"S{j}" for j in range(500)], open_, high, low, close, volume)
    reasons = ca.recent_reasons(bars, 60)
    assert np.flatnonzero(~np.equal(reasons, None)).tolist() == [321]
    assert reasons[321].startswith(f"spin-off or special dividend on {day(100)}: opened "
                                   f"{open_[100, 321] / prev - 1:+.1%} below the previous close")
    assert ca.recent_reasons(bars, 19)[321] is None


# --- back-adjusting splits -----------------------------------------------------------------------------------------

def test_adjust_splits_back_adjusts_history_by_the_exact_ratio(crafted):
    adjusted = ca.adjust_splits(crafted)
    for symbol, factor in (("SPLIT", 0.5), ("REVERSE", 10.0)):
        j = crafted.column(symbol)
        for name in ("open", "high", "low", "close"):
            np.testing.assert_array_equal(getattr(adjusted, name)[:BASE, j], getattr(crafted, name)[:BASE, j] * factor)
            np.testing.assert_array_equal(getattr(adjusted, name)[BASE:, j], getattr(crafted, name)[BASE:, j])
        np.testing.assert_array_equal(adjusted.volume[:BASE, j], crafted.volume[:BASE, j] / factor)
    others = [j for j, s in enumerate(crafted.symbols) if s not in ("SPLIT", "REVERSE")]
    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(adjusted, name)[:, others], getattr(crafted, name)[:, others])
    assert [e.symbol for e in ca.events(adjusted) if e.kind in ("split", "reverse_split")] == []


def test_adjust_splits_leaves_a_symbol_with_a_bad_print_alone():
    bars = panel({"X": history(14) + [ramp(25.1, 24.9, 2_200_000), (25.0, 25.2, 15.0, 25.1, 2_000_000)]})
    assert [e.rule for e in ca.events(bars)] == ["split", "spike"]
    adjusted = ca.adjust_splits(bars)
    np.testing.assert_array_equal(adjusted.close, bars.close)
    np.testing.assert_array_equal(adjusted.volume, bars.volume)


# --- the STRAT scan ------------------------------------------------------------------------------------------------

def test_data_faults_cover_the_bars_the_last_signal_reads(crafted):
    # daily: the last BARS_READ (22) rows; the SPINOFF event on row BASE is 3 rows from the end
    faults = strat_signals.data_faults(crafted, crafted)
    assert sorted(faults) == ["BADCLOSE", "GAPDROP", "REVERSE", "SPIKE", "SPINOFF", "SPLIT", "UNDONE"]
    assert faults["SPINOFF"].startswith(f"spin-off or special dividend on {day(BASE)}")
    # 19 more bars: the event is the 22nd bar from the end, still read; one more and it is not
    longer = panel({"SPINOFF": SCENARIOS["SPINOFF"] + [flat(34.8)] * 19})
    assert list(strat_signals.data_faults(longer, longer)) == ["SPINOFF"]
    longer = panel({"SPINOFF": SCENARIOS["SPINOFF"] + [flat(34.8)] * 20})
    assert strat_signals.data_faults(longer, longer) == {}


# --- the real file -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parsed_cache(tmp_path_factory):
    """One cache of the parsed real file for the panel and the commands of this module."""
    if not BARS.exists():
        pytest.skip(f"real data file {BARS} is not present")
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def real_panel(parsed_cache) -> Panel:
    from ports.market_sources import CsvMarket

    market = CsvMarket(BARS, cache_dir=parsed_cache)
    return market.bars(market.known_symbols(), market.first_date, market.last_date)


@pytest.mark.slow
def test_real_file_flags_and_known_events(real_panel):
    found = ca.events(real_panel)
    # the calibration of the module docstring: 110 stock-days of 619,040
    assert len(found) == 110
    assert collections.Counter(e.rule for e in found) == {"distribution": 50, "jump": 26, "undone": 15,
                                                          "inconsistent": 9, "spike": 9, "split": 1}
    by_day = {(e.symbol, e.day): e for e in found}
    assert by_day["ARNC", "2016-11-01"].text == (
        "spin-off or special dividend on 2016-11-01: opened -22.6% below the previous close (28.72 -> 22.24, 53x its "
        "usual overnight move) on 1.9x its usual volume and stayed there (high 22.64)")
    known = {("ARNC", "2016-11-01"): "distribution", ("YUM", "2016-11-01"): "distribution",
             ("EBAY", "2015-07-20"): "distribution", ("NI", "2015-07-02"): "distribution",
             ("TDG", "2013-07-11"): "distribution", ("KLAC", "2014-11-26"): "distribution",
             ("DISCK", "2014-08-07"): "split", ("LNT", "2016-05-19"): "inconsistent",
             ("LNT", "2016-05-20"): "undone", ("AOS", "2014-05-19"): "inconsistent", ("XL", "2015-08-24"): "spike",
             ("NWL", "2017-09-15"): "undone"}
    assert {key: by_day[key].rule for key in known if key in by_day} == known
    assert by_day["DISCK", "2014-08-07"].ratio == 0.5
    # earnings gaps on heavy volume are not corporate actions
    for key in (("BBY", "2014-01-16"), ("UAA", "2017-01-31"), ("EVHC", "2017-11-01"), ("ILMN", "2016-10-11")):
        assert key not in by_day


@pytest.mark.slow
def test_real_arnc_signals_read_the_spin_off(real_panel):
    arnc = real_panel.select(["ARNC"])
    weekly = strat_signals.weekly_panel(cut(arnc, int(np.searchsorted(arnc.dates, np.datetime64("2016-11-19")))))
    signals = strat_signals.find_signals(weekly.dates, weekly.symbols, weekly.open, weekly.high, weekly.low,
                                         weekly.close, "1W")
    # without the check this is what options trading would have bought
    assert [(s.bar_date, s.magnitude_pct, s.reward_risk) for s in signals] == [("2016-11-18", 53.8015, 4.653)]


@pytest.fixture
def arnc_env(tmp_path, monkeypatch, parsed_cache):
    env = use_csv_journal(monkeypatch, tmp_path, BARS)
    monkeypatch.setenv("CACHE_DIR", str(parsed_cache))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("asof, timeframe", [("2016-11-19T12:00", "1W"), ("2016-11-15T17:00", "1D")])
def test_strat_scan_skips_arnc_after_its_spin_off_and_says_why(arnc_env, asof, timeframe):
    out = run("--asof", asof, "strat", "scan", "--timeframe", timeframe, "--symbols", "ARNC")
    assert "0 signal(s)" in out and f"STRAT {timeframe} ARNC" not in out
    assert "skipped ARNC: spin-off or special dividend on 2016-11-01: opened -22.6% below the previous close" in out
    assert rows(arnc_env, "SELECT COUNT(*) AS n FROM strat_signals")[0]["n"] == 0
    recorded = rows(arnc_env, "SELECT level, message, detail FROM events WHERE kind = 'data_quality'")
    assert len(recorded) == 1 and recorded[0]["level"] == "info"
    assert recorded[0]["message"].startswith(f"strat scan {timeframe}: ARNC skipped: spin-off or special dividend")
    assert json.loads(recorded[0]["detail"])["symbol"] == "ARNC"
    data = json.loads(run("--asof", asof, "strat", "scan", "--timeframe", timeframe, "--symbols", "ARNC", "--json"))
    assert data["signals"] == [] and list(data["skipped"]) == ["ARNC"]
