"""Options, the pure part: OCC symbols, Black-Scholes, the simulated chain, contract choice and sizing."""
from __future__ import annotations

from datetime import date

import pytest

from common.clock import calendar
from core import option_math
from core.option_math import CALL, PUT, OccError, OptionQuote

# --- OCC ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("symbol, root, expiry, kind, strike", [
    ("AAPL240126P00050000", "AAPL", date(2024, 1, 26), PUT, 50.0),
    ("AAPL231103C00170000", "AAPL", date(2023, 11, 3), CALL, 170.0),
    ("SPY240621C00542500", "SPY", date(2024, 6, 21), CALL, 542.5),
    ("F240119C00012500", "F", date(2024, 1, 19), CALL, 12.5),
    ("GOOGL240216P00001005", "GOOGL", date(2024, 2, 16), PUT, 1.005),
    ("BRKBXX301231C99999999", "BRKBXX", date(2030, 12, 31), CALL, 99999.999),
])
def test_occ_round_trip(symbol, root, expiry, kind, strike):
    parsed = option_math.parse_occ(symbol)
    assert (parsed.root, parsed.expiry, parsed.kind, parsed.strike) == (root, expiry, kind, strike)
    assert option_math.format_occ(root, expiry, kind, strike) == symbol == parsed.symbol
    assert option_math.is_occ(symbol)


@pytest.mark.parametrize("text, why", [
    ("AAPL240230P00050000", "not a date"),  # 30 February
    ("AAPL241301C00050000", "not a date"),  # month 13
    ("AAPL240126X00050000", "not an OCC"),  # side X
    ("AAPL240126P0005000", "not an OCC"),  # 7-digit strike
    ("AAPL240126P00000000", "positive"),  # zero strike
    ("TOOLONGX240126P00050000", "not an OCC"),  # 8-letter root
    ("AA1240126P00050000", "not an OCC"),  # digit in the root
    ("240126P00050000", "not an OCC"),  # no root
    ("AAPL", "not an OCC"),
    ("", "not an OCC"),
])
def test_occ_rejections(text, why):
    with pytest.raises(OccError, match=why):
        option_math.parse_occ(text)
    assert not option_math.is_occ(text)


@pytest.mark.parametrize("root, kind, strike, why", [
    ("AAPL7", CALL, 50, "root"),
    ("", CALL, 50, "root"),
    ("AAPL", "straddle", 50, "side"),
    ("AAPL", CALL, 0, "strike"),
    ("AAPL", CALL, -5, "strike"),
    ("AAPL", CALL, 100_000, "strike"),
    ("AAPL", CALL, 50.0001, "tenths of a cent"),
    ("AAPL", CALL, float("nan"), "strike"),
])
def test_format_rejections(root, kind, strike, why):
    with pytest.raises(OccError, match=why):
        option_math.format_occ(root, date(2024, 1, 26), kind, strike)


def test_multiplier_and_days_to_expiry():
    assert option_math.multiplier("us_option") == option_math.multiplier("AAPL240126P00050000") == 100
    assert option_math.multiplier("us_equity") == option_math.multiplier("AAPL") == option_math.multiplier(None) == 1
    assert option_math.days_to_expiry("AAPL240126P00050000", date(2024, 1, 23)) == 3


# --- Black-Scholes ----------------------------------------------------------------------------------------------

def test_black_scholes_textbook_values_and_parity():
    # Hull's example: S = K = 100, one year, 20% volatility, 5% rate: call 10.4506, put 5.5735
    call, call_delta = option_math.black_scholes(CALL, 100, 100, 1.0, 0.20, rate=0.05)
    put, put_delta = option_math.black_scholes(PUT, 100, 100, 1.0, 0.20, rate=0.05)
    assert call == pytest.approx(10.4506, abs=1e-4) and put == pytest.approx(5.5735, abs=1e-4)
    assert call_delta == pytest.approx(0.6368, abs=1e-4) and put_delta == pytest.approx(call_delta - 1)
    assert call - put == pytest.approx(100 - 100 * 2.718281828 ** -0.05, abs=1e-6)
    assert option_math.black_scholes(CALL, 105, 100, 0.0, 0.2) == (5.0, 1.0)
    assert option_math.black_scholes(PUT, 105, 100, 0.0, 0.2) == (0.0, 0.0)


def test_realised_vol_is_annualised_and_bounded():
    closes = [100 * (1.01 if i % 2 else 1 / 1.01) ** 0 * (1.01 ** (i % 2)) for i in range(21)]
    # alternating +1% / -1% log-ish moves: daily deviation ~1%, about 16% a year
    assert option_math.realised_vol(closes) == pytest.approx(0.01 * 252 ** 0.5, rel=0.05)
    assert option_math.realised_vol([100.0] * 21) == 0.10  # the floor
    assert option_math.realised_vol([100.0] * 10) is None  # too short


# --- the simulated chain ------------------------------------------------------------------------------------------

def test_expiries_are_fridays_weekly_then_monthly_and_good_friday_moves_to_thursday():
    cal = calendar()
    expiries = option_math.friday_expiries(date(2024, 3, 20), cal.is_session)
    # 2024-03-29 is Good Friday (no session): that week's contracts expire on Thursday 03-28
    assert expiries[:3] == [date(2024, 3, 22), date(2024, 3, 28), date(2024, 4, 5)]
    weekly = [e for e in expiries if (e - date(2024, 3, 20)).days <= 42]
    assert len(weekly) == 6
    assert [e for e in expiries if (e - date(2024, 3, 20)).days > 42] == [date(2024, 5, 17)]


@pytest.mark.parametrize("price, step, first, last", [
    (20.0, 0.5, 16.0, 24.0), (50.0, 1.0, 40.0, 60.0), (190.0, 2.5, 152.5, 227.5), (542.0, 10.0, 440.0, 650.0),
])
def test_strike_increments(price, step, first, last):
    strikes = option_math.strikes_around(price)
    assert strikes[0] == first and strikes[-1] == last
    assert all(round(b - a, 6) == step for a, b in zip(strikes, strikes[1:]))


def test_simulated_chain_prices_and_deltas():
    chain = option_math.simulated_chain("XYZ", 50.0, 0.30, date(2024, 6, 12), calendar().is_session, kinds=(CALL,))
    by_symbol = {q.symbol: q for q in chain}
    quote = by_symbol["XYZ240628C00050000"]  # 16 days, at the money
    price, delta = option_math.black_scholes(CALL, 50.0, 50.0, 16 / 365, 0.30)
    assert quote.bid == pytest.approx(price * 0.98, abs=1e-4) and quote.ask == pytest.approx(price * 1.02, abs=1e-4)
    assert quote.delta == pytest.approx(delta, abs=1e-4) and quote.iv == 0.30
    assert all(q.kind == CALL for q in chain)


# --- contract choice and sizing -----------------------------------------------------------------------------------

def quote(symbol, delta, ask):
    parsed = option_math.parse_occ(symbol)
    return OptionQuote(symbol, parsed.root, parsed.kind, parsed.strike, parsed.expiry, ask - 0.05, ask, delta)


TODAY = date(2024, 6, 12)


def test_choice_takes_the_window_the_band_and_the_delta_nearest_the_middle():
    chain = [
        quote("XYZ240614C00050000", 0.48, 0.60),  # 2 days: outside 7-21
        quote("XYZ240719C00050000", 0.48, 1.60),  # 37 days: outside
        quote("XYZ240621C00049000", 0.60, 1.20),  # delta above the band
        quote("XYZ240621C00051000", 0.38, 0.40),  # delta below the band
        quote("XYZ240621C00050000", 0.52, 0.80),  # 9 days, 0.045 from the middle
        quote("XYZ240628C00051000", 0.47, 0.95),  # 16 days, 0.005 from the middle: chosen
        quote("XYZ240628P00050000", -0.47, 0.90),  # a put, not for a bullish signal
    ]
    choice = option_math.choose_contract(chain, True, TODAY, 50.0)
    assert choice.quote.symbol == "XYZ240628C00051000"
    assert (choice.limit_price, choice.qty) == (0.95, 3)  # floor(300 / 95)
    put = option_math.choose_contract(chain, False, TODAY, 50.0)
    assert put.quote.symbol == "XYZ240628P00050000" and put.qty == 3


def test_choice_skips_contracts_above_the_capital_and_says_why():
    chain = [quote("XYZ240628C00051000", 0.47, 3.10), quote("XYZ240628C00050000", 0.53, 2.95)]
    choice = option_math.choose_contract(chain, True, TODAY, 50.0)
    assert choice.quote.symbol == "XYZ240628C00050000" and choice.qty == 1  # 3.10 x 100 > $300
    assert option_math.choose_contract(chain[:1], True, TODAY, 50.0).reason.startswith("no call in the delta band costs")
    assert option_math.choose_contract([], True, TODAY, 50.0).reason == "no call with 7-21 days to expiry"
    assert "delta" in option_math.choose_contract([quote("XYZ240628C00060000", 0.2, 0.1)], True, TODAY, 50).reason


@pytest.mark.parametrize("price, up", [(0.953, 0.96), (2.991, 3.0), (3.01, 3.05), (4.40, 4.40)])
def test_option_ticks(price, up):
    assert option_math.round_up_to_tick(price) == up


def test_whole_contracts_within_the_capital():
    assert option_math.contracts_for(300, 0.95) == 3
    assert option_math.contracts_for(300, 1.00) == 3
    assert option_math.contracts_for(300, 3.01) == 0
    assert option_math.contracts_for(300, 0) == 0
