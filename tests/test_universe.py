"""The cap-tiered universe: strict loading, atomic writing, building from bars or market caps."""
from __future__ import annotations

import json
import logging
import re
from datetime import date
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.universe import Universe, build_universe, load_universe, on_the_clock, write_universe

from conftest import ROOT, require_shared_data

SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")


def write_json(path: Path, document) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_default_universe_is_about_200_valid_unique_names():
    universe = load_universe(ROOT / "data" / "universe.json")
    sizes = {cap: len(universe.symbols(cap)) for cap in ("large", "mid", "small")}
    assert 60 <= sizes["large"] <= 80 and 60 <= sizes["mid"] <= 80 and 50 <= sizes["small"] <= 70
    everything = universe.symbols("all")
    assert len(everything) == len(set(everything)) == sum(sizes.values())
    assert all(SYMBOL.match(symbol) for symbol in everything)
    assert everything[:2] == ["AAPL", "MSFT"] and everything[-1] == universe.symbols("small")[-1]
    assert (universe.cap_of("AAPL"), universe.cap_of("ETSY"), universe.cap_of("JBLU")) == ("large", "mid", "small")
    assert universe.cap_of("NOTHERE") is None


def test_unknown_cap_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown cap 'huge'"):
        Universe({"large": ["AAPL"]}).symbols("huge")


@pytest.mark.parametrize("document, problem", [
    ({"symbols": {"large": ["AAPL"], "mid": ["AAPL"]}}, "duplicate symbol 'AAPL' (large and mid)"),
    ({"symbols": {"small": ["XYZ", "XYZ"]}}, "duplicate symbol 'XYZ' (small)"),
    ({"symbols": {"large": ["AAPL"], "micro": ["ABC"]}}, "unknown key 'micro' in \"symbols\""),
    ({"symbols": {"large": ["AAPL"]}, "version": 2}, "expected an object with exactly the key \"symbols\""),
    ({"large": ["AAPL"]}, "expected an object with exactly the key \"symbols\" (found ['large'])"),
    (["AAPL"], "expected an object with exactly the key \"symbols\" (found list)"),
    ({"symbols": ["AAPL"]}, "\"symbols\" must be an object"),
    ({"symbols": {"large": "AAPL"}}, "\"large\" must be a list of symbols"),
    ({"symbols": {"large": ["aapl"]}}, "invalid symbol 'aapl' in large"),
    ({"symbols": {"mid": ["ABCDEFGHIJK"]}}, "invalid symbol 'ABCDEFGHIJK' in mid"),
    ({"symbols": {"mid": ["1ABC"]}}, "invalid symbol '1ABC' in mid"),
    ({"symbols": {"small": [42]}}, "invalid symbol 42 in small"),
    ({"symbols": {"large": [], "mid": [], "small": []}}, "the universe has no symbols"),
    ('{"symbols": {"large": ["AAPL",]}}', "malformed JSON"),
])
def test_invalid_universe_files_fail_with_one_line(tmp_path, document, problem):
    path = write_json(tmp_path / "universe.json", document)
    with pytest.raises(ConfigError) as caught:
        load_universe(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert problem in message


def test_missing_universe_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_universe(tmp_path / "nope.json")
    assert str(caught.value) == f"{tmp_path / 'nope.json'}: universe file not found"


def test_symbols_with_a_class_suffix_and_missing_caps_are_fine(tmp_path):
    universe = load_universe(write_json(tmp_path / "u.json", {"symbols": {"large": ["BRK.B", "BF.B"]}}))
    assert universe.symbols("all") == ["BRK.B", "BF.B"] and universe.symbols("small") == []


def test_write_then_load_round_trips_atomically(tmp_path):
    original = Universe({"large": ["AAPL", "MSFT"], "mid": ["ETSY"], "small": []})
    target = tmp_path / "data" / "universe.json"
    write_universe(original, target)
    assert load_universe(target) == original
    assert [p.name for p in target.parent.iterdir()] == ["universe.json"]  # no temp file left behind


def test_a_fixed_universe_ignores_the_day_and_says_it_is_fixed():
    universe = load_universe(ROOT / "data" / "universe.json")
    assert not universe.point_in_time
    for cap in ("large", "mid", "small", "all"):
        assert universe.symbols(cap, on=date(2014, 1, 2)) == universe.symbols(cap)
    assert universe.symbols_in_any_period() == universe.symbols("all")
    assert universe.cap_of("AAPL", on=date(2014, 1, 2)) == "large"
    assert on_the_clock(universe, date.today) is universe  # the runtime hands a fixed universe on unchanged
    assert universe.describe() == (f"one fixed list of {len(universe.symbols('all'))} symbols for every day "
                                   "(survivorship: a list of today's members trades, in a replay, names known to "
                                   "have survived)")


def test_a_fixed_universe_is_written_as_before(tmp_path):
    write_universe(Universe({"large": ["AAPL", "MSFT"], "mid": [], "small": ["ZION"]}), tmp_path / "u.json")
    assert (tmp_path / "u.json").read_text() == (
        '{\n  "symbols": {\n    "large": [\n      "AAPL", "MSFT"\n    ],\n    "mid": [],\n'
        '    "small": [\n      "ZION"\n    ]\n  }\n}\n')
    shipped = ROOT / "data" / "universe.json"
    write_universe(load_universe(shipped), tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_text() == shipped.read_text()


# --------------------------------------------------------------------------------------------------------- building

def test_build_by_dollar_volume_uses_recent_rows_and_skips_bad_symbols(tmp_path):
    lines = ["date,symbol,open,high,low,close,volume"]
    # Recent dollar volumes: A 600, B 500, C 400, D 300, E 200, F 100.
    for day in range(1, 4):
        for rank, symbol in enumerate("ABCDEF"):
            lines.append(f"2016-01-0{day},{symbol},1,1,1,10,{(6 - rank) * 10}")
        lines.append(f"2016-01-0{day},bad$,1,1,1,10,100000")
        lines.append(f"2016-01-0{day},NANS,,,,,")
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    universe = build_universe(path, "dollar-volume")
    assert universe.caps == {"large": ["A", "B"], "mid": ["C", "D"], "small": ["E", "F"]}


def test_build_by_dollar_volume_from_real_bars():
    path = require_shared_data("sp500_daily_2013_2018.csv.gz")
    universe = build_universe(path, "dollar-volume")
    sizes = [len(universe.symbols(cap)) for cap in ("large", "mid", "small")]
    assert sizes == [169, 168, 168]
    assert len(set(universe.symbols("all"))) == 505  # every symbol in the file passes the symbol format
    assert universe.cap_of("AAPL") == "large" and universe.cap_of("NWS") == "small"


def test_build_by_market_cap_from_the_financials_file(caplog):
    path = require_shared_data("sp500_constituents_financials.csv")
    with caplog.at_level(logging.INFO, logger="universe"):
        universe = build_universe(path, "market-cap")
    sizes = {cap: len(universe.symbols(cap)) for cap in ("large", "mid", "small")}
    assert sizes == {"large": 445, "mid": 22, "small": 2}
    assert "34 row(s) skipped" in caplog.text
    assert universe.symbols("large")[:2] == ["NVDA", "AAPL"]  # ranked by cap, largest first
    assert universe.cap_of("BRK.B") is None  # listed without a market cap


def test_build_by_market_cap_thresholds(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("symbol,Market Cap\nBIG,10000000001\nEDGE,10000000000\nMID,2000000000\n"
                    "SML,1999999999\nNOCAP,\nbad,5000000000\n")
    universe = build_universe(path, "market-cap")
    assert universe.caps == {"large": ["BIG"], "mid": ["EDGE", "MID"], "small": ["SML"]}


@pytest.mark.parametrize("content, by, problem", [
    ("date,symbol,close\n2016-01-04,A,1\n", "dollar-volume", "missing column(s) volume"),
    ("Ticker Name,Cap\nA,1\n", "market-cap", "no symbol column"),
    ("Symbol,Price\nA,1\n", "market-cap", "no market cap column"),
    ("Symbol,Market Cap\nA,1\n", "sector", "--by: unknown method 'sector'"),
])
def test_build_rejects_bad_input_in_one_line(tmp_path, content, by, problem):
    path = tmp_path / "input.csv"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        build_universe(path, by)
    assert "\n" not in str(caught.value) and problem in str(caught.value)


def test_build_from_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        build_universe(tmp_path / "none.csv", "market-cap")
