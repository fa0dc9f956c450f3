"""The point-in-time universe: each day's index members, tiered on the dollar volume before each period, never after.

The crafted year (business days of 2015; the first tiers need 60 sessions, so the universe starts 2015-03-26):
A..F members throughout (dollar volume 6000..1000 a day), L a member that leaves on 2015-05-20 (3500), J one that
joins on 2015-05-13 (3200), N listed on 2015-07-01 that joins on 2015-08-10 (10000), W one that joins on Saturday
2015-09-05 (1500), X with bars but never a member, Z a member without bars, OLD a member gone before 2015.
"""
from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from common.clock import NY
from common.errors import ConfigError
from common.universe import (ClockedUniverse, Period, PointInTimeUniverse, Universe, build_universe, load_universe,
                             on_the_clock, summary, write_universe)

from conftest import require_shared_data

DAYS = pd.bdate_range("2015-01-01", "2015-12-31")
VOLUME = {"A": 600, "B": 500, "C": 400, "D": 300, "E": 200, "F": 100, "L": 350, "J": 320, "N": 1000, "W": 150,
          "X": 5000}
LISTED = {"N": "2015-07-01"}
MEMBERS = """ticker,start_date,end_date
A,2000-01-03,
B,2000-01-03,
C,2000-01-03,
D,2000-01-03,
E,2000-01-03,
F,2000-01-03,
L,2000-01-03,2015-05-20
J,2015-05-13,
N,2015-08-10,
W,2015-09-05,
Z,2000-01-03,
OLD,2000-01-03,2014-12-01
"""
EXPECTED_PERIODS = [
    ("2015-03-26", {"large": ["A", "B", "C"], "mid": ["L", "D"], "small": ["E", "F"]}),
    ("2015-05-13", {"large": ["A", "B", "C"], "mid": ["L", "J", "D"], "small": ["E", "F"]}),
    ("2015-05-20", {"large": ["A", "B", "C"], "mid": ["J", "D"], "small": ["E", "F"]}),
    ("2015-09-07", {"large": ["A", "B", "C"], "mid": ["J", "D"], "small": ["E", "W", "F"]}),
    ("2015-10-01", {"large": ["N", "A", "B"], "mid": ["C", "J", "D"], "small": ["E", "W", "F"]}),
]


def write_bars(path: Path, volume_of=lambda symbol, day: VOLUME[symbol]) -> Path:
    rows = [(day.date().isoformat(), symbol, 10.0, volume_of(symbol, day))
            for day in DAYS for symbol in VOLUME if day >= pd.Timestamp(LISTED.get(symbol, "2015-01-01"))]
    frame = pd.DataFrame(rows, columns=["date", "symbol", "close", "volume"])
    frame.assign(open=10.0, high=10.0, low=10.0)[["date", "symbol", "open", "high", "low", "close", "volume"]].to_csv(
        path, index=False)
    return path


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    members = tmp_path / "members.csv"
    members.write_text(MEMBERS)
    return write_bars(tmp_path / "bars.csv"), members


def build(files) -> PointInTimeUniverse:
    bars, members = files
    return build_universe(bars, "dollar-volume", point_in_time=True, members_file=members)


def periods_of(universe: PointInTimeUniverse) -> list[tuple[str, dict]]:
    return [(period.start.isoformat(), period.universe.caps) for period in universe.periods]


# ------------------------------------------------------------------------------------------------------- building

def test_periods_follow_membership_and_quarterly_tiers(files):
    universe = build(files)
    assert periods_of(universe) == EXPECTED_PERIODS
    # Z is a member without bars; OLD left before the universe starts; X was never a member
    assert universe.members_left_out == ["Z"]
    assert "X" not in universe.symbols_in_any_period()
    assert universe.built_by == "dollar-volume, point-in-time"


@pytest.mark.parametrize("symbol, before, on_or_after, cap", [
    ("J", "2015-05-12", "2015-05-13", "mid"),  # joins: placed by its own volume against the quarter's boundaries
    ("W", "2015-09-04", "2015-09-07", "small"),  # joins on a Saturday: a member from the next session
])
def test_a_joiner_is_a_member_from_its_start_date(files, symbol, before, on_or_after, cap):
    universe = build(files)
    assert universe.cap_of(symbol, date.fromisoformat(before)) is None
    assert universe.cap_of(symbol, date.fromisoformat(on_or_after)) == cap
    assert symbol in universe.symbols(cap, date.fromisoformat(on_or_after))


def test_a_leaver_is_out_on_its_end_date(files):
    universe = build(files)
    assert universe.cap_of("L", date(2015, 5, 19)) == "mid"
    assert universe.cap_of("L", date(2015, 5, 20)) is None
    assert "L" not in universe.symbols("all", date(2015, 5, 20))


def test_a_joiner_with_too_few_sessions_waits_for_the_next_re_tier(files):
    universe = build(files)  # N: 28 sessions of bars when it joins on 2015-08-10, 66 at the 2015-10-01 re-tier
    assert universe.cap_of("N", date(2015, 8, 10)) is None and universe.cap_of("N", date(2015, 9, 30)) is None
    assert universe.cap_of("N", date(2015, 10, 1)) == "large"


def test_tiers_use_only_the_bars_before_the_period_start(files, tmp_path):
    """F trades 100 times its volume from the 2015-07-01 re-tier on: that period's tiers must not move. The same
    change made to the sessions before that day does move them, so this test could fail."""
    members = files[1]
    reference = build(files)
    after = write_bars(tmp_path / "after.csv",
                       lambda s, day: VOLUME[s] * (100 if s == "F" and day >= pd.Timestamp("2015-07-01") else 1))
    before = write_bars(tmp_path / "before.csv",
                        lambda s, day: VOLUME[s] * (100 if s == "F" and day < pd.Timestamp("2015-07-01") else 1))
    changed_after = build_universe(after, "dollar-volume", point_in_time=True, members_file=members)
    changed_before = build_universe(before, "dollar-volume", point_in_time=True, members_file=members)
    for day in (date(2015, 7, 1), date(2015, 8, 31)):
        assert changed_after.symbols("all", day) == reference.symbols("all", day)
        assert [changed_after.cap_of(s, day) for s in "ABCDEFJ"] == [reference.cap_of(s, day) for s in "ABCDEFJ"]
    assert reference.cap_of("F", date(2015, 7, 1)) == "small"
    assert changed_before.cap_of("F", date(2015, 7, 1)) == "large"


def test_too_short_a_bars_file_is_one_line(tmp_path, files):
    _, members = files
    short = tmp_path / "short.csv"
    short.write_text("date,symbol,close,volume\n" + "".join(f"2015-01-{d:02d},A,1,1\n" for d in range(1, 30)))
    with pytest.raises(ConfigError, match=r"only 29 sessions; a point-in-time universe needs more than 60"):
        build_universe(short, "dollar-volume", point_in_time=True, members_file=members)


def test_members_without_any_bars_are_one_line(files, tmp_path):
    members = tmp_path / "others.csv"
    members.write_text("ticker,start_date,end_date\nZ,2000-01-03,\n")
    with pytest.raises(ConfigError, match=r"bars.csv: no index member of .*others.csv has 60 sessions of bars"):
        build_universe(files[0], "dollar-volume", point_in_time=True, members_file=members)


@pytest.mark.parametrize("content, problem", [
    ("ticker,start_date,end_date\nA,2000-01-03,\nB,2015-02-30,\n",
     "line 3: bad membership interval 'B,2015-02-30,'"),
    ("ticker,start_date,end_date\nA,2015-05-01,2015-04-01\n",
     "line 2: bad membership interval 'A,2015-05-01,2015-04-01'"),
    ("ticker,start_date,end_date\nbad$,2015-05-01,\n", "line 2: bad membership interval 'bad$,2015-05-01,'"),
    ("ticker,start_date\nA,2015-05-01\n", "end_date"),
])
def test_bad_membership_files_fail_in_one_line(files, tmp_path, content, problem):
    bars, _ = files
    members = tmp_path / "bad_members.csv"
    members.write_text(content)
    with pytest.raises(ConfigError) as caught:
        build_universe(bars, "dollar-volume", point_in_time=True, members_file=members)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{members}: ")
    assert problem in str(caught.value)


def test_the_members_file_defaults_to_the_one_beside_the_bars(files):
    bars, members = files
    members.rename(bars.with_name("sp500_membership_intervals.csv"))
    assert periods_of(build_universe(bars, "dollar-volume", point_in_time=True)) == EXPECTED_PERIODS


@pytest.mark.parametrize("kwargs, problem", [
    ({"by": "market-cap", "point_in_time": True}, "--point-in-time: only with --by dollar-volume"),
    ({"by": "dollar-volume", "members_file": "m.csv"}, "--members: only with --point-in-time"),
])
def test_option_combinations_refused(files, kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        build_universe(files[0], **kwargs)


# ------------------------------------------------------------------------------------------------- asking by day

def test_a_day_picks_its_period_and_no_day_the_last(files):
    universe = build(files)
    assert universe.symbols("mid", date(2015, 5, 12)) == ["L", "D"]
    assert universe.symbols("mid", date(2015, 5, 13)) == ["L", "J", "D"]
    assert universe.symbols("all", date(2015, 12, 31)) == ["N", "A", "B", "C", "J", "D", "E", "W", "F"]
    assert universe.symbols("large") == ["N", "A", "B"] and universe.cap_of("L") is None  # today: the last period
    assert universe.symbols_in_any_period() == ["A", "B", "C", "L", "D", "E", "F", "J", "W", "N"]
    assert universe.symbols_in_any_period("mid") == ["L", "D", "J", "C"]


def test_a_day_before_the_first_period_is_one_line(files):
    universe = build(files)
    with pytest.raises(ConfigError) as caught:
        universe.symbols("all", date(2015, 3, 25))
    assert str(caught.value) == "the point-in-time universe starts on 2015-03-26: no members known on 2015-03-25"
    with pytest.raises(ConfigError, match="unknown cap 'huge'"):
        universe.symbols("huge", date(2015, 5, 1))


def test_describe_says_what_the_universe_holds(files):
    universe = build(files)
    assert universe.describe() == (
        "point-in-time members of members.csv, re-tiered quarterly on trailing dollar volume: 5 periods from "
        "2015-03-26; 1 members of those years have no (or too few) bars in bars.csv and are left out (survivorship "
        "remains for them)")
    assert summary(universe) == ("5 periods, 10 symbols in all; from 2015-03-26: large 3, mid 2, small 2; "
                                 "from 2015-10-01: large 3, mid 3, small 3; 1 index members left out (no or too "
                                 "few bars)")


def test_on_the_clock_answers_for_the_clocks_day(files):
    universe = build(files)
    today = [date(2015, 5, 19)]
    clocked = on_the_clock(universe, lambda: today[0])
    assert isinstance(clocked, ClockedUniverse)
    assert (clocked.symbols("mid"), clocked.cap_of("L")) == (["L", "J", "D"], "mid")
    today[0] = date(2015, 5, 20)
    assert (clocked.symbols("mid"), clocked.cap_of("L")) == (["J", "D"], None)
    assert clocked.symbols("mid", on=date(2015, 4, 1)) == ["L", "D"]  # an explicit day wins over the clock
    assert clocked.symbols_in_any_period() == universe.symbols_in_any_period()
    assert clocked.describe() == universe.describe()
    plain = Universe({"large": ["AAPL"]})
    assert on_the_clock(plain, lambda: today[0]) is plain


def test_the_runtime_universe_follows_the_simulated_clock(private_journal, files):
    from config import load_config
    from flows.runtime import Runtime

    path = private_journal / "pit.json"
    write_universe(build(files), path)
    rt = Runtime(load_config({"UNIVERSE_FILE": str(path), "MOMENTUM_ASOF": "2015-05-19T10:30"}))
    assert rt.universe.symbols("mid") == ["L", "J", "D"] and rt.cap_of("L") == "mid"
    rt.clock.set(datetime(2015, 5, 20, 9, 35, tzinfo=NY))  # what the backtest does before each step
    assert rt.universe.symbols("mid") == ["J", "D"]
    assert rt.cap_of("L") == "small"  # no longer a member: the runtime's fallback cap
    assert rt._universe_symbols() == build(files).symbols_in_any_period()  # the sim market serves every period
    rt.clock.set(datetime(2015, 3, 2, 10, 0, tzinfo=NY))
    with pytest.raises(ConfigError, match="starts on 2015-03-26"):
        rt.universe.symbols("all")


# ----------------------------------------------------------------------------------------- the file and its checks

def test_write_then_load_round_trips(files, tmp_path):
    universe = build(files)
    target = tmp_path / "out" / "pit.json"
    write_universe(universe, target)
    assert load_universe(target) == universe
    document = json.loads(target.read_text())
    assert list(document) == ["point_in_time", "source", "members", "built_by", "members_left_out", "periods"]
    assert document["periods"][1] == {"from": "2015-05-13", "symbols": EXPECTED_PERIODS[1][1]}
    assert [p.name for p in target.parent.iterdir()] == ["pit.json"]


def test_the_written_file_is_readable_json(tmp_path):
    universe = PointInTimeUniverse([Period(date(2015, 1, 2), Universe({"large": ["AAPL"], "small": ["ZION"]})),
                                    Period(date(2015, 4, 1), Universe({"large": ["AAPL", "MSFT"]}))],
                                   "bars.csv", "members.csv", "dollar-volume, point-in-time", ["GONE"])
    write_universe(universe, tmp_path / "pit.json")
    assert (tmp_path / "pit.json").read_text() == """{
  "point_in_time": true,
  "source": "bars.csv",
  "members": "members.csv",
  "built_by": "dollar-volume, point-in-time",
  "members_left_out": [
    "GONE"
  ],
  "periods": [
    {
      "from": "2015-01-02",
      "symbols": {
        "large": [
          "AAPL"
        ],
        "mid": [],
        "small": [
          "ZION"
        ]
      }
    },
    {
      "from": "2015-04-01",
      "symbols": {
        "large": [
          "AAPL", "MSFT"
        ],
        "mid": [],
        "small": []
      }
    }
  ]
}
"""


def test_a_hand_written_file_needs_only_the_flag_and_the_periods(tmp_path):
    path = tmp_path / "pit.json"
    path.write_text(json.dumps({"point_in_time": True, "periods": [
        {"from": "2015-01-02", "symbols": {"large": ["AAPL"]}}]}))
    universe = load_universe(path)
    assert universe.symbols("all", date(2020, 1, 1)) == ["AAPL"] and universe.members_left_out == []
    assert universe.describe() == ("point-in-time members, re-tiered quarterly on trailing dollar volume: 1 periods "
                                   "from 2015-01-02")


def _document(*periods, **extra) -> dict:
    return {"point_in_time": True, "periods": [{"from": day, "symbols": tiers} for day, tiers in periods], **extra}


GOOD = ("2015-01-02", {"large": ["AAPL"]})


@pytest.mark.parametrize("document, problem", [
    (_document(GOOD, ("2015-13-01", {"large": ["MSFT"]})),
     "period 2: bad \"from\" date '2015-13-01' (expected YYYY-MM-DD)"),
    (_document(("2015-4-1", {"large": ["MSFT"]})), "period 1: bad \"from\" date '2015-4-1'"),
    (_document((20150401, {"large": ["MSFT"]})), "period 1: bad \"from\" date 20150401"),
    (_document(("2015-04-01", {"large": ["MSFT"]}), GOOD),
     "period 2 (from 2015-01-02) does not start after period 1 (from 2015-04-01): periods must be in date order"),
    (_document(GOOD, GOOD), "period 2 (from 2015-01-02) does not start after period 1 (from 2015-01-02)"),
    (_document(("2015-01-02", {"large": ["AAPL"], "mid": ["AAPL"]})),
     "period 1 (from 2015-01-02): duplicate symbol 'AAPL' (large and mid)"),
    (_document(("2015-01-02", {"small": ["aapl"]})), "period 1 (from 2015-01-02): invalid symbol 'aapl' in small"),
    (_document(("2015-01-02", {"micro": ["AAPL"]})), "period 1 (from 2015-01-02): unknown key 'micro' in \"symbols\""),
    (_document(("2015-01-02", {"large": []})), "period 1 (from 2015-01-02) has no symbols"),
    (_document(), "\"periods\" must be a non-empty list"),
    ({"point_in_time": True}, "\"periods\" must be a non-empty list"),
    ({**_document(GOOD), "point_in_time": False}, "\"point_in_time\" must be true"),
    (_document(GOOD, version=2), ("unknown key 'version' (a point-in-time universe has the keys point_in_time, "
                                  "periods, source, members, built_by, members_left_out)")),
    ({"point_in_time": True, "periods": [{"from": "2015-01-02"}]},
     "period 1: expected an object with exactly the keys \"from\" and \"symbols\""),
    (_document(GOOD, members_left_out="Z"), "\"members_left_out\" must be a list of symbols"),
    (_document(GOOD, source=5), "\"source\" must be a string"),
])
def test_invalid_point_in_time_files_fail_with_one_line(tmp_path, document, problem):
    path = tmp_path / "pit.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_universe(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert problem in message


# ---------------------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real() -> PointInTimeUniverse:
    bars = require_shared_data("sp500_daily_2013_2018.csv.gz")
    return build_universe(bars, "dollar-volume", point_in_time=True,
                          members_file=require_shared_data("sp500_membership_intervals.csv"))


@pytest.mark.slow
@pytest.mark.parametrize("symbol, day, cap", [
    ("AMD", "2013-09-20", "small"), ("AMD", "2013-09-23", None),  # left the S&P 500 on 2013-09-23 ...
    ("AME", "2013-09-20", None), ("AME", "2013-09-23", "small"),  # ... and AMETEK took its place that day
    ("AMD", "2017-03-17", None), ("AMD", "2017-03-20", "large"),  # AMD back on 2017-03-20
    ("ALGN", "2017-06-16", None), ("ALGN", "2017-06-19", "small"),
    ("DXC", "2017-04-04", None), ("DXC", "2017-06-30", None), ("DXC", "2017-07-03", "mid"),  # bars from 2017-04-03
    ("AAL", "2015-03-20", None), ("AAL", "2015-03-23", "large"),
    ("AAPL", "2013-05-07", "large"), ("AAPL", "2018-02-07", "large"),
])
def test_real_membership_on_both_sides_of_joins_and_leaves(real, symbol, day, cap):
    assert real.cap_of(symbol, date.fromisoformat(day)) == cap


@pytest.mark.slow
def test_real_universe_sizes_and_what_it_leaves_out(real):
    first, last = real.periods[0], real.periods[-1]
    assert (first.start, last.start, len(real.periods)) == (date(2013, 5, 7), date(2018, 1, 3), 90)
    assert [len(first.universe.symbols(cap)) for cap in ("large", "mid", "small")] == [128, 128, 127]
    assert [len(last.universe.symbols(cap)) for cap in ("large", "mid", "small")] == [166, 166, 166]
    # members of those years without bars in the file: leavers (AN left in 2017) and renamed tickers (BKNG is
    # PCLN in the bars file)
    assert len(real.members_left_out) == 117 and {"AN", "BKNG", "APTV"} <= set(real.members_left_out)
    fixed = build_universe(require_shared_data("sp500_daily_2013_2018.csv.gz"), "dollar-volume")
    ever = set(real.symbols_in_any_period())
    assert ever < set(fixed.symbols("all"))  # nothing the bars file lacks can enter
    assert sorted(set(fixed.symbols("all")) - ever) == ["APTV", "CBG", "DPS", "HCN", "LUK", "PCLN", "WYN"]
    assert len(set(fixed.symbols("all")) - set(first.universe.symbols("all"))) == 122


@pytest.mark.slow
def test_universe_build_point_in_time_through_the_command_line(private_journal):
    from main import cli

    bars = require_shared_data("sp500_daily_2013_2018.csv.gz")
    members = require_shared_data("sp500_membership_intervals.csv")
    out = private_journal / "pit.json"
    result = CliRunner().invoke(cli, ["universe", "build", "--from", str(bars), "--by", "dollar-volume",
                                      "--point-in-time", "--members", str(members), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"wrote {out}: 90 periods, 498 symbols in all; from 2013-05-07: large 128, mid 128, "
                             "small 127; from 2018-01-03: large 166, mid 166, small 166; 117 index members left out "
                             "(no or too few bars)\n")
    universe = load_universe(out)
    assert universe.point_in_time and universe.cap_of("AMD", date(2014, 1, 2)) is None


def test_point_in_time_with_market_cap_exits_2(private_journal):
    from main import cli

    result = CliRunner().invoke(cli, ["universe", "build", "--from", "caps.csv", "--by", "market-cap",
                                      "--point-in-time", "--out", str(private_journal / "u.json")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --point-in-time: only with --by dollar-volume (a market-cap list has "
                                     "no history)")


def test_a_backtest_cannot_start_before_the_point_in_time_universe_knows_its_members(tmp_path):
    from datetime import date
    from types import SimpleNamespace

    from backtest import replay
    from common.clock import calendar
    from common.errors import ConfigError
    from common.universe import Period, PointInTimeUniverse, Universe

    universe = PointInTimeUniverse([Period(date(2013, 5, 7), Universe({"large": ["AAA"], "mid": [], "small": []}))])
    rt = SimpleNamespace(universe=universe, calendar=calendar(), market=SimpleNamespace())
    with pytest.raises(ConfigError, match=r"before the point-in-time universe's first period \(2013-05-07\)"):
        replay.check_window(rt, date(2013, 5, 1), date(2013, 6, 28))
