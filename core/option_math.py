"""Options, the pure part (SPEC section 12): OCC symbols, Black-Scholes, the simulated chain, contract choice, sizing.

No I/O and no clock here: dates come in as arguments.

- OCC symbol: root (1-6 letters) + expiry YYMMDD + C|P + strike x 1000 in 8 digits, e.g. AAPL240126P00050000 is
  an AAPL put expiring 2024-01-26 with strike $50.000. `parse_occ` refuses anything else (bad date, strike, side or
  root); `format_occ` builds one and refuses a strike that is not a whole number of tenths of a cent.
- Black-Scholes (European, no dividends) prices the simulated market's options and gives deltas where a data
  source has none. The risk-free rate is RISK_FREE_RATE; time is calendar days to expiry / 365.
- Simulated chain: Friday expiries (weekly; the third Friday is the monthly), a Friday that is no session moves to
  the session before it; strikes at a price-dependent increment within +-STRIKE_RANGE of the underlying.
- Contract choice: 7-21 calendar days to expiry, |delta| 0.40-0.55, calls for bullish and puts for bearish signals,
  one contract affordable within the capital per trade; among those the |delta| nearest the middle of the band, then
  the nearer expiry, then the strike nearest the underlying.
- Sizing: whole contracts, floor(capital / (limit x 100)); a limit is rounded UP to the option tick for a buy.
- The contract multiplier (100 shares per contract) is the one place where an option's premium becomes dollars:
  cash, market value and P&L of a us_option position are premium x quantity x 100.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Callable, Iterable, Sequence

OPTION_MULTIPLIER = 100
EQUITY, OPTION = "us_equity", "us_option"
CALL, PUT = "call", "put"
RISK_FREE_RATE = 0.04
DAYS_PER_YEAR = 365.0
MIN_DTE, MAX_DTE = 7, 21
MIN_ABS_DELTA, MAX_ABS_DELTA = 0.40, 0.55
STRIKE_RANGE = 0.20  # strikes listed within +-20% of the underlying
CHAIN_HORIZON_DAYS = 63  # weeklies and monthlies listed up to about three months out
MAX_OCC_STRIKE = 99_999.999

_OCC = re.compile(r"^(?P<root>[A-Z]{1,6})(?P<yymmdd>\d{6})(?P<side>[CP])(?P<strike>\d{8})$")


class OccError(ValueError):
    """A text that is not a valid OCC option symbol."""


@dataclass(frozen=True)
class OccSymbol:
    root: str
    expiry: date
    kind: str  # CALL or PUT
    strike: float

    @property
    def symbol(self) -> str:
        return format_occ(self.root, self.expiry, self.kind, self.strike)


def parse_occ(text: str) -> OccSymbol:
    """The parts of an OCC symbol; OccError naming what is wrong otherwise."""
    raw = (text or "").strip().upper()
    match = _OCC.match(raw)
    if match is None:
        raise OccError(f"not an OCC option symbol: {text!r} (root 1-6 letters + YYMMDD + C|P + 8-digit strike)")
    yymmdd = match["yymmdd"]
    try:
        expiry = date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        raise OccError(f"{text!r}: {yymmdd} is not a date") from None
    strike_units = int(match["strike"])
    if strike_units <= 0:
        raise OccError(f"{text!r}: the strike must be positive")
    return OccSymbol(match["root"], expiry, CALL if match["side"] == "C" else PUT, strike_units / 1000.0)


def format_occ(root: str, expiry: date, kind: str, strike: float) -> str:
    """The OCC symbol of a contract; OccError for a bad root, side or strike."""
    root = (root or "").strip().upper()
    if not re.fullmatch(r"[A-Z]{1,6}", root):
        raise OccError(f"OCC root must be 1-6 letters, not {root!r}")
    side = {CALL: "C", PUT: "P", "c": "C", "p": "P", "C": "C", "P": "P"}.get(kind)
    if side is None:
        raise OccError(f"option side must be call or put, not {kind!r}")
    if not (isinstance(strike, (int, float)) and math.isfinite(strike) and 0 < strike <= MAX_OCC_STRIKE):
        raise OccError(f"strike must be between 0 and {MAX_OCC_STRIKE}, not {strike!r}")
    units = Decimal(repr(float(strike))) * 1000
    if units != units.to_integral_value():
        raise OccError(f"strike {strike!r} is not a whole number of tenths of a cent")
    if not 2000 <= expiry.year <= 2099:
        raise OccError(f"expiry {expiry} cannot be written as YYMMDD")
    return f"{root}{expiry:%y%m%d}{side}{int(units):08d}"


def is_occ(symbol: str) -> bool:
    """Whether `symbol` is a valid OCC option symbol (stock tickers never match: they have no digits)."""
    if not _OCC.match(symbol or ""):
        return False
    try:
        parse_occ(symbol)
    except OccError:
        return False
    return True


def multiplier(symbol_or_asset_class: str | None) -> int:
    """Dollars per unit of price and quantity: 100 for an option (by asset class or OCC symbol), else 1."""
    value = symbol_or_asset_class or ""
    return OPTION_MULTIPLIER if value == OPTION or is_occ(value) else 1


def quantity_text(symbol: str, qty: int) -> str:
    """A position's size as a trader says it: '100 sh' of a stock, '2 contracts' (or '1 contract') of an option."""
    if multiplier(symbol) != 1:
        return f"{qty} contract{'' if qty == 1 else 's'}"
    return f"{qty} sh"


def days_to_expiry(symbol: str, today: date) -> int:
    """Calendar days from `today` to the contract's expiry (0 on the expiry day, negative after it)."""
    return (parse_occ(symbol).expiry - today).days


# --- Black-Scholes ------------------------------------------------------------------------------------------------

def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def black_scholes(kind: str, spot: float, strike: float, years: float, vol: float,
                  rate: float = RISK_FREE_RATE) -> tuple[float, float]:
    """(price, delta) of a European option. At or after expiry (years <= 0) it is worth its intrinsic value."""
    if not (spot > 0 and strike > 0):
        return float("nan"), float("nan")
    if years <= 0 or vol <= 0:
        intrinsic = max(spot - strike, 0.0) if kind == CALL else max(strike - spot, 0.0)
        in_the_money = spot > strike if kind == CALL else spot < strike
        return intrinsic, (1.0 if kind == CALL else -1.0) if in_the_money else 0.0
    root_t = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2.0) * years) / (vol * root_t)
    d2 = d1 - vol * root_t
    discount = math.exp(-rate * years)
    if kind == CALL:
        return spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2), _norm_cdf(d1)
    return strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1), _norm_cdf(d1) - 1.0


def years_to_expiry(expiry: date, day: date) -> float:
    """Calendar time from a session to expiry; a contract is priced with at least one day left until it expires."""
    days = (expiry - day).days
    return max(days, 1) / DAYS_PER_YEAR if days >= 0 else 0.0


def realised_vol(closes: Sequence[float], window: int = 20, floor: float = 0.10, cap: float = 2.0) -> float | None:
    """Annualised standard deviation of the last `window` daily log returns, kept within [floor, cap]."""
    values = [c for c in closes if c is not None and math.isfinite(c) and c > 0]
    if len(values) < window + 1:
        return None
    tail = values[-(window + 1):]
    returns = [math.log(b / a) for a, b in zip(tail, tail[1:])]
    mean = sum(returns) / len(returns)
    variance = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    return min(max(math.sqrt(variance * 252.0), floor), cap)


# --- the simulated chain ------------------------------------------------------------------------------------------

def strike_increment(price: float) -> float:
    """Listed strike spacing by underlying price (the usual US listing practice, simplified)."""
    for limit, step in ((25.0, 0.5), (100.0, 1.0), (250.0, 2.5), (500.0, 5.0)):
        if price < limit:
            return step
    return 10.0


def strikes_around(price: float, width: float = STRIKE_RANGE) -> list[float]:
    step = strike_increment(price)
    low = math.ceil(price * (1 - width) / step) * step
    count = int(math.floor(price * (1 + width) / step) - math.ceil(price * (1 - width) / step)) + 1
    return [round(low + i * step, 3) for i in range(max(count, 0)) if low + i * step > 0]


def friday_expiries(today: date, is_session: Callable[[date], bool], horizon_days: int = CHAIN_HORIZON_DAYS,
                    weekly_days: int = 42) -> list[date]:
    """Expiry dates after today: every Friday for six weeks, then the monthly (third) Fridays to the horizon.

    A Friday that is not a session (Good Friday) expires on the session before it.
    """
    expiries = []
    day = today + timedelta(days=(4 - today.weekday()) % 7 or 7)
    while (day - today).days <= horizon_days:
        if (day - today).days <= weekly_days or 15 <= day.day <= 21:
            expiry = day
            while not is_session(expiry):
                expiry -= timedelta(days=1)
            if expiry > today:
                expiries.append(expiry)
        day += timedelta(days=7)
    return expiries


@dataclass(frozen=True)
class OptionQuote:
    """One listed contract as a chain shows it."""

    symbol: str
    underlying: str
    kind: str
    strike: float
    expiry: date
    bid: float | None
    ask: float | None
    delta: float | None
    iv: float | None = None

    @property
    def mid(self) -> float | None:
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2.0


def option_half_spread(price: float) -> float:
    """Half the quoted spread of a simulated option: 2% of the premium, at least half a cent."""
    return max(price * 0.02, 0.005)


def simulated_chain(underlying: str, spot: float, vol: float, today: date, is_session: Callable[[date], bool],
                    kinds: Iterable[str] = (CALL, PUT)) -> list[OptionQuote]:
    """The Black-Scholes chain of `underlying` at `spot` with volatility `vol` on `today`."""
    chain = []
    for expiry in friday_expiries(today, is_session):
        years = years_to_expiry(expiry, today)
        for strike in strikes_around(spot):
            for kind in kinds:
                price, delta = black_scholes(kind, spot, strike, years, vol)
                if not math.isfinite(price):
                    continue
                half = option_half_spread(price)
                chain.append(OptionQuote(format_occ(underlying, expiry, kind, strike), underlying, kind, strike,
                                         expiry, round(max(price - half, 0.0), 4), round(price + half, 4),
                                         round(delta, 4), vol))
    return chain


# --- contract choice and sizing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContractRules:
    min_dte: int = MIN_DTE
    max_dte: int = MAX_DTE
    min_abs_delta: float = MIN_ABS_DELTA
    max_abs_delta: float = MAX_ABS_DELTA
    max_capital: float = 300.0  # dollars per trade
    max_positions: int = 5


def option_tick(price: float) -> float:
    """Minimum price increment: $0.01 below $3, $0.05 from $3 (penny-pilot style)."""
    return 0.01 if price < 3.0 else 0.05


def round_up_to_tick(price: float) -> float:
    tick = Decimal(str(option_tick(price)))
    return float((Decimal(repr(price)) / tick).to_integral_value(rounding=ROUND_CEILING) * tick)


def entry_limit(quote: OptionQuote) -> float | None:
    """The DAY limit of a buy: the ask rounded up to the tick (marketable), or None without a usable ask."""
    if quote.ask is None or not math.isfinite(quote.ask) or quote.ask <= 0:
        return None
    return round_up_to_tick(quote.ask)


def contracts_for(capital: float, limit_price: float) -> int:
    """Whole contracts that `capital` buys at `limit_price` (premium per share)."""
    if not (limit_price > 0 and capital > 0):
        return 0
    return int(math.floor(capital / (limit_price * OPTION_MULTIPLIER) + 1e-9))


@dataclass(frozen=True)
class Choice:
    quote: OptionQuote | None
    limit_price: float | None
    qty: int
    reason: str


def choose_contract(chain: Sequence[OptionQuote], bullish: bool, today: date, spot: float,
                    rules: ContractRules = ContractRules()) -> Choice:
    """The contract to buy for a signal, or a Choice with quote None and the reason nothing fits."""
    kind = CALL if bullish else PUT
    in_window = [q for q in chain if q.kind == kind and rules.min_dte <= (q.expiry - today).days <= rules.max_dte]
    if not in_window:
        return Choice(None, None, 0, f"no {kind} with {rules.min_dte}-{rules.max_dte} days to expiry")
    in_band = [q for q in in_window if q.delta is not None and math.isfinite(q.delta)
               and rules.min_abs_delta <= abs(q.delta) <= rules.max_abs_delta]
    if not in_band:
        return Choice(None, None, 0, f"no {kind} with |delta| {rules.min_abs_delta:.2f}-{rules.max_abs_delta:.2f}")
    middle = (rules.min_abs_delta + rules.max_abs_delta) / 2.0
    affordable = []
    for quote in in_band:
        limit = entry_limit(quote)
        if limit is not None and contracts_for(rules.max_capital, limit) >= 1:
            affordable.append((abs(abs(quote.delta) - middle), (quote.expiry - today).days, abs(quote.strike - spot),
                               quote.symbol, quote, limit))
    if not affordable:
        return Choice(None, None, 0, f"no {kind} in the delta band costs under ${rules.max_capital:,.0f} per contract")
    *_, quote, limit = min(affordable, key=lambda row: row[:4])
    qty = contracts_for(rules.max_capital, limit)
    # why this contract; its quantity and limit are the Choice's own fields, shown beside the fill
    return Choice(quote, limit, qty, f"delta {quote.delta:+.2f}, {(quote.expiry - today).days} days to expiry")
