"""The one number convention every terminal table and summary follows (common/render.py)."""
import json

from common import render


def test_a_change_is_signed_and_a_level_is_not():
    assert render.pct(1.5) == "+1.50%"
    assert render.pct(-12.345, 1) == "-12.3%"
    assert render.level(41) == "41.0%"
    assert render.level(7.25, 2) == "7.25%"

def test_nothing_and_a_loss_that_rounds_to_nothing_have_no_sign():
    assert render.pct(-0.001) == "0.00%" and render.pct(0) == "0.00%" and render.pct(0.004) == "0.00%"
    assert render.signed_money(0) == "$0.00" and render.signed_money(0.2) == "+$0.20"
    assert render.signed_money(-3.2) == "-$3.20"
    assert render.level(-0.01) == "0.0%"
    assert render.money(-0.001) == "$0.00"

def test_missing_or_not_finite_figures_are_a_dash():
    for value in (None, float("nan"), float("inf")):
        assert render.pct(value) == "-"
        assert render.level(value) == "-"
        assert render.money(value) == "-"
        assert render.as_pct(value) is None

def test_money_puts_the_sign_before_the_dollar():
    assert render.money(-1234.5) == "-$1,234.50"
    assert render.money(1234.567) == "$1,234.57"

def test_tables_print_percentages_with_their_sign_right_aligned():
    rows = [{"symbol": "A", "chg": render.as_pct(0.0142, fraction=True), "weight": render.as_level(5)},
            {"symbol": "BBBB", "chg": render.as_pct(-12.5), "weight": None}]
    lines = render.table(rows, ["symbol", "chg", "weight"]).splitlines()
    assert lines[0].split() == ["symbol", "chg", "weight"]
    assert lines[2].endswith("+1.42%    5.0%")
    assert lines[3].endswith("-12.50%       -")

def test_a_percentage_is_still_a_plain_number_to_json_and_arithmetic():
    value = render.as_pct(1.5)
    assert json.loads(json.dumps({"v": value})) == {"v": 1.5}
    assert value * 2 == 3.0
    assert render.key_values([("return", value)]) == "return  +1.50%"
