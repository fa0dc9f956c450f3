"""AlpacaBroker and AlpacaMarket through the real alpaca-py SDK against the local fake Alpaca server."""
from __future__ import annotations

import logging
import math
from datetime import date, datetime, timezone

import numpy as np
import pytest

from common.errors import (
    BrokerUnavailable,
    ConfigError,
    DataError,
    DataUnavailable,
    DuplicateClientOrderId,
    InsufficientQty,
    OrderNotFound,
    OrderRejected,
)
from common.types import DAILY, OrderRequest
from ports.alpaca.broker import AlpacaBroker
from ports.alpaca.market import AlpacaMarket
from ports.request_budget import RequestBudget

from conftest import FakeTime
from fake_alpaca import FakeAlpaca, fixture

SESSION = date(2024, 6, 14)  # the fake's default "today", a Friday
PREVIOUS = date(2024, 6, 13)
DURING_SESSION = datetime(2024, 6, 14, 15, 0, tzinfo=timezone.utc)  # 11:00 New York
AFTER_CLOSE = datetime(2024, 6, 14, 21, 0, tzinfo=timezone.utc)  # 17:00 New York
KEY, SECRET = "AKFAKEKEY0123456789X", "SeCrEtFaKe0123456789abcdefghij"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def broker(fake_alpaca, fake_time) -> AlpacaBroker:
    return AlpacaBroker("k", "s", url_override=fake_alpaca.url, sleep=fake_time.sleep, unix_time=fake_time.now)


def make_market(fake: FakeAlpaca, fake_time: FakeTime, now: datetime = DURING_SESSION, **kwargs) -> AlpacaMarket:
    return AlpacaMarket("k", "s", url_override=fake.url, sleep=fake_time.sleep, unix_time=fake_time.now,
                        now=lambda: now, **kwargs)


def market_buy(client_order_id: str = "mom-AAPL-20240614-1", symbol: str = "AAPL", qty: int = 10) -> OrderRequest:
    return OrderRequest(client_order_id, symbol, "buy", "market", qty)


def one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text


# -- account and positions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture_name", ["account.json", "account_no_pdt_fields.json"])
def test_account_parses_with_and_without_pdt_fields(fake_alpaca, broker, fixture_name):
    fake_alpaca.use_account_fixture(fixture_name)
    account = broker.account()
    assert (account.equity, account.cash, account.buying_power, account.last_equity) == (
        100000.0, 100000.0, 40001.0, 100000.0)
    assert (account.status, account.trading_blocked, account.currency) == ("ACTIVE", False, "USD")


@pytest.mark.parametrize("flag", ["trading_blocked", "account_blocked", "trade_suspended_by_user"])
def test_any_block_flag_blocks_trading(fake_alpaca, broker, flag):
    fake_alpaca.account[flag] = True
    assert broker.account().trading_blocked is True


def test_positions_from_the_fixture_body(fake_alpaca, broker):
    fake_alpaca.load_fixture_positions("positions.json")
    first, second = broker.positions()
    assert (first.symbol, first.qty, first.qty_available, first.avg_entry_price) == ("AAPL", 2, 2, 174.78)
    assert (first.current_price, first.market_value, first.unrealized_pl) == (174.29, 348.58, -0.98)
    assert (second.qty, second.qty_available, second.avg_entry_price, second.market_value) == (5, 4, 100.0, 600.0)


# -- orders ------------------------------------------------------------------------------------------------------

def test_order_round_trip(fake_alpaca, broker):
    order = broker.submit(market_buy())
    assert (order.symbol, order.side, order.type, order.qty, order.status) == ("AAPL", "buy", "market", 10, "accepted")
    assert order.client_order_id == "mom-AAPL-20240614-1" and order.is_open
    posted = [r for r in fake_alpaca.requests if r.method == "POST"]
    assert len(posted) == 1
    assert {k: posted[0].body[k] for k in ("symbol", "qty", "side", "type", "time_in_force", "client_order_id")} == {
        "symbol": "AAPL", "qty": 10, "side": "buy", "type": "market", "time_in_force": "day",
        "client_order_id": "mom-AAPL-20240614-1"}

    assert broker.get_order(order.id) == order
    assert broker.get_order_by_client_id("mom-AAPL-20240614-1") == order
    assert [o.id for o in broker.orders("open")] == [order.id]
    assert broker.orders("open", ["MSFT"]) == []
    assert fake_alpaca.requests[-1].query["limit"] == "500"

    broker.cancel(order.id)
    canceled = broker.get_order(order.id)
    assert canceled.status == "canceled" and not canceled.is_open and canceled.canceled_at is not None
    assert broker.orders("open") == []
    assert [o.id for o in broker.orders("closed", ["AAPL"])] == [order.id]


def test_trailing_stop_carries_trail_percent_and_hwm_back(fake_alpaca, broker):
    fake_alpaca.set_price("AAPL", 100.0)
    bought = broker.submit(market_buy())
    fake_alpaca.fill(bought.id, price=100.0)
    stop = broker.submit(OrderRequest("mom-AAPL-20240614-stop", "AAPL", "sell", "trailing_stop", 10, "gtc",
                                      trail_percent=5.0))
    assert (stop.type, stop.time_in_force, stop.trail_percent, stop.hwm, stop.stop_price) == (
        "trailing_stop", "gtc", 5.0, 100.0, 95.0)
    assert fake_alpaca.requests[-1].body["trail_percent"] == 5.0
    assert broker.get_order(stop.id).trail_percent == 5.0


def test_buy_stop_close_cycle_with_shares_held_by_the_stop(fake_alpaca, broker):
    fake_alpaca.set_price("AAPL", 50.0)
    bought = broker.submit(market_buy())
    filled = fake_alpaca.fill(bought.id, price=50.0)
    assert broker.get_order(bought.id).filled_qty == 10 and filled["status"] == "filled"
    stop = broker.submit(OrderRequest("c-stop", "AAPL", "sell", "trailing_stop", 10, "gtc", trail_percent=5.0))
    (position,) = broker.positions()
    assert (position.qty, position.qty_available, position.avg_entry_price) == (10, 0, 50.0)

    with pytest.raises(InsufficientQty) as refused:
        broker.submit(OrderRequest("c-close", "AAPL", "sell", "market", 10))
    assert (refused.value.status_code, refused.value.code) == (403, 40310000)
    assert "insufficient qty available" in str(refused.value)

    broker.cancel(stop.id)
    assert broker.get_order(stop.id).status == "canceled"
    close = broker.submit(OrderRequest("c-close-2", "AAPL", "sell", "market", 10))
    fake_alpaca.fill(close.id, price=55.0)
    assert broker.get_order(close.id).filled_avg_price == 55.0
    assert broker.positions() == []


def test_other_403_refusals_are_not_insufficient_qty(fake_alpaca, broker):
    with pytest.raises(OrderRejected) as short:
        broker.submit(OrderRequest("c-short", "AAPL", "sell", "market", 1))
    assert not isinstance(short.value, InsufficientQty)
    assert (short.value.status_code, short.value.code) == (403, 40310000)
    assert "not allowed to short" in str(short.value)
    fake_alpaca.set_price("AAPL", 1000.0)
    with pytest.raises(OrderRejected, match="insufficient buying power") as poor:
        broker.submit(market_buy(qty=100))
    assert not isinstance(poor.value, InsufficientQty)


def test_unknown_orders(fake_alpaca, broker):
    unknown = "00000000-0000-4000-8000-000000000999"
    with pytest.raises(OrderNotFound):
        broker.get_order(unknown)
    with pytest.raises(OrderNotFound):
        broker.get_order("not-a-uuid")
    with pytest.raises(OrderNotFound):
        broker.cancel(unknown)
    assert broker.get_order_by_client_id("never-sent") is None


def test_cancel_of_a_filled_order_is_rejected(fake_alpaca, broker):
    order = broker.submit(market_buy())
    fake_alpaca.fill(order.id)
    with pytest.raises(OrderRejected, match="not cancelable") as refused:
        broker.cancel(order.id)
    assert refused.value.status_code == 422


@pytest.mark.parametrize("request_", [
    OrderRequest("c1", "AAPL", "buy", "market", 0),
    OrderRequest("c1", "AAPL", "buy", "limit", 5),
    OrderRequest("c1", "AAPL", "sell", "trailing_stop", 5, "gtc"),
    OrderRequest("c1", "AAPL", "buy", "market", 5, "ioc"),
    OrderRequest("x" * 49, "AAPL", "buy", "market", 5),
])
def test_invalid_orders_are_refused_before_sending(fake_alpaca, broker, request_):
    with pytest.raises(OrderRejected, match="invalid order"):
        broker.submit(request_)
    assert fake_alpaca.count("POST") == 0


def test_limit_and_stop_orders_send_their_prices(fake_alpaca, broker):
    fake_alpaca.set_price("AAPL", 100.0)
    fake_alpaca.set_position("AAPL", 10, 90.0)
    limit = broker.submit(OrderRequest("c-limit", "AAPL", "buy", "limit", 5, limit_price=99.5))
    stop = broker.submit(OrderRequest("c-stop", "AAPL", "sell", "stop", 10, "gtc", stop_price=91.25))
    assert (limit.type, limit.limit_price, stop.type, stop.stop_price) == ("limit", 99.5, "stop", 91.25)


# -- idempotent submission ---------------------------------------------------------------------------------------

def test_duplicate_client_order_id_returns_the_existing_order(fake_alpaca, broker):
    first = broker.submit(market_buy())
    again = broker.submit(market_buy())
    assert again.id == first.id
    assert len(fake_alpaca.orders) == 1
    assert fake_alpaca.count("POST", "/v2/orders") == 2  # the second POST was refused with 422 by the server
    assert fake_alpaca.count("GET", "/v2/orders:by_client_order_id") == 1


def test_client_order_id_reused_for_another_intent_is_refused(fake_alpaca, broker):
    broker.submit(market_buy(client_order_id="reused"))
    with pytest.raises(DuplicateClientOrderId, match="already used by buy AAPL") as refused:
        broker.submit(market_buy(client_order_id="reused", symbol="MSFT"))
    assert (refused.value.status_code, refused.value.code) == (422, 40010001)
    assert len(fake_alpaca.orders) == 1


def test_504_on_an_accepted_submission_returns_the_order_with_one_post(fake_alpaca, broker):
    fake_alpaca.gateway_timeout("/v2/orders", method="POST", accept=True)
    order = broker.submit(market_buy())
    assert order.client_order_id == "mom-AAPL-20240614-1" and order.status == "accepted"
    assert fake_alpaca.count("POST", "/v2/orders") == 1
    assert [r.path for r in fake_alpaca.requests] == ["/v2/orders", "/v2/orders:by_client_order_id"]
    assert len(fake_alpaca.orders) == 1


def test_504_on_a_lost_submission_is_unavailable_and_not_resent(fake_alpaca, broker):
    fake_alpaca.gateway_timeout("/v2/orders", method="POST")
    with pytest.raises(BrokerUnavailable, match="HTTP 504") as unavailable:
        broker.submit(market_buy())
    assert one_line(str(unavailable.value)) and "not resent" in str(unavailable.value)
    assert fake_alpaca.count("POST", "/v2/orders") == 1
    assert fake_alpaca.orders == {}


def test_500_with_empty_body_on_submission_looks_the_order_up(fake_alpaca, broker):
    fake_alpaca.server_error("/v2/orders", method="POST", accept=True)
    order = broker.submit(market_buy())
    assert order.symbol == "AAPL" and fake_alpaca.count("POST") == 1


def test_submission_timeout_with_the_order_accepted_returns_it(fake_alpaca, fake_time):
    fake_alpaca.stall("/v2/orders", method="POST", seconds=3.0, accept=True)
    broker = AlpacaBroker("k", "s", url_override=fake_alpaca.url, timeout=0.5, sleep=fake_time.sleep)
    order = broker.submit(market_buy())
    assert order.client_order_id == "mom-AAPL-20240614-1"
    assert fake_alpaca.count("POST") == 1 and len(fake_alpaca.orders) == 1


def test_submission_timeout_without_the_order_is_unavailable(fake_alpaca, fake_time):
    fake_alpaca.stall("/v2/orders", method="POST", seconds=3.0)
    broker = AlpacaBroker("k", "s", url_override=fake_alpaca.url, timeout=0.5, sleep=fake_time.sleep)
    with pytest.raises(BrokerUnavailable, match="no answer within 0.5 s"):
        broker.submit(market_buy())
    assert fake_alpaca.count("POST") == 1 and fake_alpaca.orders == {}


def test_429_on_submission_resends_the_same_client_order_id(fake_alpaca, broker, fake_time):
    fake_alpaca.rate_limit("/v2/orders", method="POST", reset_at=fake_time.now() + 2)
    order = broker.submit(market_buy())
    posts = [r for r in fake_alpaca.requests if r.method == "POST"]
    assert len(posts) == 2 and {p.body["client_order_id"] for p in posts} == {order.client_order_id}
    assert len(fake_alpaca.orders) == 1
    assert fake_time.sleeps == [2.0]


# -- outages and rate limits -------------------------------------------------------------------------------------

def test_429_then_success_waits_for_the_reset_and_records_it(fake_alpaca, fake_time, tmp_path):
    budget = RequestBudget(tmp_path / "budget.db", 180, now=fake_time.now, sleep=fake_time.sleep)
    broker = AlpacaBroker("k", "s", url_override=fake_alpaca.url, budget=budget, sleep=fake_time.sleep,
                          unix_time=fake_time.now)
    fake_alpaca.rate_limit("/v2/account", reset_at=fake_time.now() + 7)
    assert broker.account().equity == 100000.0
    assert fake_time.sleeps == [7.0]  # from X-RateLimit-Reset, waited once (not again inside the budget)
    assert fake_alpaca.count("GET", "/v2/account") == 2
    assert budget.used() == 2  # both attempts took a slot
    other = RequestBudget(tmp_path / "budget.db", 180, now=lambda: fake_time.now() - 5, sleep=fake_time.sleep)
    assert other.acquire() == pytest.approx(5.0)  # the pause is recorded for every process


def test_429_with_retry_after_only(fake_alpaca, broker, fake_time):
    fake_alpaca.rate_limit("/v2/positions", reset_at=False, retry_after=3)
    assert broker.positions() == []
    assert fake_time.sleeps == [3.0]


def test_429_that_persists_becomes_unavailable(fake_alpaca, broker, fake_time):
    fake_alpaca.rate_limit("/v2/account", times=10, reset_at=fake_time.now() + 1)
    with pytest.raises(BrokerUnavailable, match="HTTP 429") as unavailable:
        broker.account()
    assert one_line(str(unavailable.value))
    assert fake_alpaca.count("GET", "/v2/account") == 4  # one try and max_429_retries=3 more


def test_504_html_on_a_read_is_unavailable_after_retries(fake_alpaca, broker, fake_time):
    fake_alpaca.gateway_timeout("/v2/account", times=5)
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker.account()
    assert str(unavailable.value) == "alpaca account: HTTP 504 (504 Gateway Time-out)"
    assert fake_alpaca.count("GET", "/v2/account") == 3
    assert fake_time.sleeps == [0.5, 1.5]


def test_a_read_recovers_after_one_504(fake_alpaca, broker):
    fake_alpaca.gateway_timeout("/v2/positions")
    assert broker.positions() == []
    assert fake_alpaca.count("GET", "/v2/positions") == 2


def test_500_with_empty_body_on_a_read(fake_alpaca, broker):
    fake_alpaca.server_error("/v2/orders", times=3, method="GET")
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker.orders()
    assert str(unavailable.value) == "alpaca list open orders: HTTP 500 (empty body)"


@pytest.mark.slow
def test_stalled_server_times_out(fake_alpaca, fake_time):
    fake_alpaca.stall("/v2/account", times=3, seconds=3.0)
    broker = AlpacaBroker("k", "s", url_override=fake_alpaca.url, timeout=0.5, sleep=fake_time.sleep)
    with pytest.raises(BrokerUnavailable) as unavailable:
        broker.account()
    assert str(unavailable.value) == "alpaca account: no answer within 0.5 s (ReadTimeout)"
    assert fake_alpaca.count("GET", "/v2/account") == 3


def test_unreachable_server(fake_time):
    gone = FakeAlpaca().start()
    url = gone.url
    gone.stop()
    broker = AlpacaBroker("k", "s", url_override=url, timeout=0.5, sleep=fake_time.sleep)
    with pytest.raises(BrokerUnavailable, match="connection failed"):
        broker.positions()
    assert fake_time.sleeps == [0.5, 1.5]


def test_refused_keys_are_a_configuration_error(fake_alpaca, broker):
    fake_alpaca.add_route("GET", r"/v2/account", lambda f, m, q, b: (401, {"code": 40110000,
                                                                          "message": "request is not authorized"}, {}))
    with pytest.raises(ConfigError, match="HTTP 401"):
        broker.account()


def test_sdk_retry_loop_is_switched_off(broker):
    assert broker._client._retry == 0


def test_secrets_never_appear_in_messages_or_logs(fake_alpaca, fake_time, caplog):
    caplog.set_level(logging.DEBUG)
    # A misbehaving proxy that echoes the request headers into its error page.
    echo = f"<html><head><title>502 Bad Gateway {KEY} {SECRET}</title></head></html>"
    fake_alpaca.add_route("GET", r"/v2/account", lambda f, m, q, b: (502, echo, {}))
    fake_alpaca.stall("/v2/positions", times=3, seconds=3.0)
    fake_alpaca.gateway_timeout("/v2/orders", method="POST")
    broker = AlpacaBroker(KEY, SECRET, url_override=fake_alpaca.url, timeout=0.5, sleep=fake_time.sleep)
    messages = [repr(broker)]
    for call in (broker.account, broker.positions, lambda: broker.submit(market_buy()),
                 lambda: broker.submit(OrderRequest("c-short", "AAPL", "sell", "market", 1))):
        with pytest.raises(Exception) as raised:
            call()
        messages.append(str(raised.value))
    assert "502 Bad Gateway *** ***" in messages[1]
    for text in messages + [caplog.text]:
        assert KEY not in text and SECRET not in text


# -- market data -------------------------------------------------------------------------------------------------

def test_bars_for_450_symbols_are_batched_and_complete(fake_alpaca, fake_time):
    symbols = [f"S{i:03d}" for i in range(450)]
    market = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE)
    panel = market.bars(symbols, date(2024, 6, 10), SESSION)
    bar_requests = [r for r in fake_alpaca.requests if r.path == "/v2/stocks/bars"]
    assert len(bar_requests) == math.ceil(450 / 200)
    assert [len(r.query["symbols"].split(",")) for r in bar_requests] == [200, 200, 50]
    assert {(r.query["feed"], r.query["adjustment"], r.query["timeframe"]) for r in bar_requests} == {
        ("iex", "split", "1Day")}
    assert panel.symbols == symbols
    assert panel.dates.astype(str).tolist() == ["2024-06-10", "2024-06-11", "2024-06-12", "2024-06-13",
                                                "2024-06-14"]
    assert not np.isnan(panel.close).any()
    expected = fake_alpaca.bar("S321", PREVIOUS)
    j, i = panel.column("S321"), 3
    assert (panel.open[i, j], panel.high[i, j], panel.low[i, j], panel.close[i, j], panel.volume[i, j]) == (
        expected["o"], expected["h"], expected["l"], expected["c"], expected["v"])


def test_bars_follow_next_page_token(fake_alpaca, fake_time):
    market = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE)
    whole = market.bars(["AAPL", "MSFT", "TSLA"], date(2024, 6, 3), SESSION)
    fake_alpaca.bars_page_size = 4
    fake_alpaca.clear_log()
    paged = market.bars(["AAPL", "MSFT", "TSLA"], date(2024, 6, 3), SESSION)
    assert fake_alpaca.count("GET", "/v2/stocks/bars") == math.ceil(3 * 10 / 4)
    np.testing.assert_array_equal(paged.close, whole.close)
    np.testing.assert_array_equal(paged.dates, whole.dates)


def test_symbols_without_bars_are_nan_columns(fake_alpaca, fake_time):
    fake_alpaca.missing_symbols = {"GONE"}
    market = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE)
    panel = market.bars(["AAPL", "GONE"], date(2024, 6, 10), SESSION)
    assert np.isnan(panel.close[:, panel.column("GONE")]).all()
    assert not np.isnan(panel.close[:, panel.column("AAPL")]).any()
    fake_alpaca.missing_symbols = {"AAPL", "GONE"}
    empty = market.bars(["AAPL", "GONE"], date(2024, 6, 10), SESSION)
    assert empty.close.shape == (0, 2)


def test_bars_leave_out_the_session_in_progress(fake_alpaca, fake_time):
    fake_alpaca.fraction = 0.3
    during = make_market(fake_alpaca, fake_time, now=DURING_SESSION).bars(["AAPL"], date(2024, 6, 10), SESSION)
    assert during.dates[-1] == np.datetime64(PREVIOUS)
    fake_alpaca.fraction = 1.0
    after = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE).bars(["AAPL"], date(2024, 6, 10), SESSION)
    assert after.dates[-1] == np.datetime64(SESSION)
    assert after.close[-1, 0] == fake_alpaca.bar("AAPL", SESSION)["c"]


def test_live_snapshot_for_450_symbols(fake_alpaca, fake_time):
    fake_alpaca.fraction = 0.5
    symbols = [f"S{i:03d}" for i in range(450)]
    snap = make_market(fake_alpaca, fake_time).snapshot(symbols, SESSION, 0.5)
    requests_made = [r for r in fake_alpaca.requests if r.path == "/v2/stocks/snapshots"]
    assert len(requests_made) == 3 and {r.query["feed"] for r in requests_made} == {"iex"}
    assert snap.symbols == symbols and (snap.session, snap.fraction) == (SESSION, 0.5)
    for field in ("open", "high", "low", "price", "volume", "prev_close", "bid", "ask"):
        assert not np.isnan(getattr(snap, field)).any(), field
    j = snap.index("S123")
    today, before = fake_alpaca.bar("S123", SESSION), fake_alpaca.bar("S123", PREVIOUS)
    assert (snap.open[j], snap.prev_close[j], snap.price[j]) == (today["o"], before["c"], fake_alpaca.price("S123"))
    assert snap.bid[j] < snap.price[j] < snap.ask[j]
    assert snap.low[j] <= snap.price[j] <= snap.high[j]


def test_live_snapshot_handles_unknown_symbols(fake_alpaca, fake_time):
    fake_alpaca.missing_symbols = {"GONE"}
    snap = make_market(fake_alpaca, fake_time).snapshot(["GONE", "AAPL"], SESSION, 0.5)
    assert np.isnan(snap.price[0]) and not np.isnan(snap.price[1])


def test_past_session_snapshot_is_the_daily_view_of_its_bar(fake_alpaca, fake_time):
    snap = make_market(fake_alpaca, fake_time).snapshot(["AAPL", "MSFT"], PREVIOUS, 0.25)
    assert fake_alpaca.count("GET", "/v2/stocks/snapshots") == 0
    bar, prev = fake_alpaca.bar("MSFT", PREVIOUS), fake_alpaca.bar("MSFT", date(2024, 6, 12))
    j = snap.index("MSFT")
    assert snap.view == DAILY  # daily bars: the open is all that was knowable at 25% of the session
    assert (snap.price[j], snap.high[j], snap.low[j], snap.open[j]) == (bar["o"],) * 4
    assert np.isnan(snap.volume[j]) and snap.prev_close[j] == prev["c"]
    assert snap.bid[j] < snap.price[j] < snap.ask[j]
    closed = make_market(fake_alpaca, fake_time).snapshot(["MSFT"], PREVIOUS, 1.0)
    assert (closed.price[0], closed.high[0], closed.low[0], closed.volume[0]) == (bar["c"], bar["h"], bar["l"],
                                                                                bar["v"])


def test_snapshot_of_a_future_session_is_refused(fake_alpaca, fake_time):
    with pytest.raises(DataError):
        make_market(fake_alpaca, fake_time).snapshot(["AAPL"], date(2024, 6, 17), 0.5)


def test_market_series_uses_spy_and_the_vixy_proxy(fake_alpaca, fake_time):
    series = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE).market_series(date(2024, 6, 10), SESSION)
    assert list(series.columns) == ["spy_open", "spy_high", "spy_low", "spy_close", "spy_volume",
                                    "vix_open", "vix_high", "vix_low", "vix_close"]
    assert fake_alpaca.requests[-1].query["symbols"] == "SPY,VIXY"
    assert len(series) == 5 and series.index.name == "date"
    day = series.loc["2024-06-12"]
    assert (day["spy_close"], day["vix_close"]) == (fake_alpaca.bar("SPY", date(2024, 6, 12))["c"],
                                                    fake_alpaca.bar("VIXY", date(2024, 6, 12))["c"])


def test_known_symbols_are_active_tradable_equities_in_one_request(fake_alpaca, fake_time):
    fake_alpaca.add_assets(["MSFT", "XYZ"])
    fake_alpaca.add_assets(["NOPE"], tradable=False)
    fake_alpaca.add_assets(["OLD"], status="inactive")
    fake_alpaca.add_assets(["BTC/USD"], **{"class": "crypto"})
    assert make_market(fake_alpaca, fake_time).known_symbols() == ["AAPL", "MSFT", "XYZ"]
    assert fake_alpaca.count() == 1
    assert fake_alpaca.requests[0].query == {"status": "active", "asset_class": "us_equity"}


def test_market_data_outage_is_data_unavailable(fake_alpaca, fake_time):
    fake_alpaca.gateway_timeout("/v2/stocks/snapshots", times=3)
    with pytest.raises(DataUnavailable, match="HTTP 504"):
        make_market(fake_alpaca, fake_time).snapshot(["AAPL"], SESSION, 0.5)


def test_market_data_429_waits_then_succeeds(fake_alpaca, fake_time):
    fake_alpaca.rate_limit("/v2/stocks/bars", reset_at=fake_time.now() + 4)
    panel = make_market(fake_alpaca, fake_time, now=AFTER_CLOSE).bars(["AAPL"], date(2024, 6, 10), SESSION)
    assert len(panel.dates) == 5 and fake_time.sleeps == [4.0]


def test_unknown_feed_is_a_configuration_error(fake_alpaca, fake_time):
    with pytest.raises(ConfigError, match="feed"):
        make_market(fake_alpaca, fake_time, feed="nasdaq")


def test_malformed_bodies_are_unavailable_not_tracebacks(fake_alpaca, broker, fake_time):
    fake_alpaca.add_route("GET", r"/v2/stocks/bars", lambda f, m, q, b: (200, {"oops": 1}, {}))
    with pytest.raises(DataUnavailable, match="malformed response"):
        make_market(fake_alpaca, fake_time, now=AFTER_CLOSE).bars(["AAPL"], date(2024, 6, 10), SESSION)
    del fake_alpaca.account["equity"]
    with pytest.raises(BrokerUnavailable, match="malformed response"):
        broker.account()


# -- a 200 that is not the order ---------------------------------------------------------------------------------

NOT_AN_ORDER = [
    pytest.param({}, id="empty-object"),
    pytest.param([], id="list"),
    pytest.param(None, id="empty-body"),
    pytest.param({"id": "61e69015-8549-4bfd-b9c3-01e75843f47d", "status": "accepted"}, id="missing-fields"),
    pytest.param("order.json", id="another-order"),  # a fixture file, read when the test runs
]


@pytest.mark.parametrize("body", NOT_AN_ORDER)
def test_a_200_that_is_not_the_order_looks_it_up_by_client_order_id(fake_alpaca, broker, body):
    body = fixture(body) if body == "order.json" else body
    fake_alpaca.malformed("/v2/orders", body, method="POST", accept=True)
    order = broker.submit(market_buy())
    assert (order.client_order_id, order.symbol, order.side, order.qty, order.status) == (
        "mom-AAPL-20240614-1", "AAPL", "buy", 10, "accepted")
    assert order.id in fake_alpaca.orders and len(fake_alpaca.orders) == 1
    assert [(r.method, r.path) for r in fake_alpaca.requests] == [
        ("POST", "/v2/orders"), ("GET", "/v2/orders:by_client_order_id")]
    assert fake_alpaca.requests[-1].query == {"client_order_id": "mom-AAPL-20240614-1"}


@pytest.mark.parametrize("body", NOT_AN_ORDER)
def test_a_200_that_is_not_the_order_with_no_order_found_is_unavailable_and_not_resent(fake_alpaca, broker, body):
    body = fixture(body) if body == "order.json" else body
    fake_alpaca.malformed("/v2/orders", body, method="POST")
    with pytest.raises(BrokerUnavailable, match="HTTP 200") as unavailable:
        broker.submit(market_buy())
    assert one_line(str(unavailable.value)) and "not resent" in str(unavailable.value)
    assert fake_alpaca.count("POST", "/v2/orders") == 1 and fake_alpaca.orders == {}
    assert fake_alpaca.count("GET", "/v2/orders:by_client_order_id") == 1


def test_a_200_that_is_not_the_order_and_a_failed_lookup_is_unavailable(fake_alpaca, broker):
    fake_alpaca.malformed("/v2/orders", {}, method="POST", accept=True)
    fake_alpaca.gateway_timeout("/v2/orders:by_client_order_id", times=3)
    with pytest.raises(BrokerUnavailable, match="the lookup by client_order_id failed too") as unavailable:
        broker.submit(market_buy())
    assert one_line(str(unavailable.value))
    assert fake_alpaca.count("POST", "/v2/orders") == 1


def test_the_account_id_is_alpacas_and_asked_once(fake_alpaca, broker):
    assert broker.account().id == "00000000-0000-4000-8000-000000000001"
    fake_alpaca.clear_log()
    assert broker.account_id() == broker.account_id() == "00000000-0000-4000-8000-000000000001"
    assert fake_alpaca.count("GET", "/v2/account") == 1
    del fake_alpaca.account["id"]
    with pytest.raises(BrokerUnavailable, match="no account id"):
        AlpacaBroker("k", "s", url_override=fake_alpaca.url).account_id()


def test_a_trailing_stop_reports_its_stop_as_the_market_rises(fake_alpaca, broker):
    fake_alpaca.set_price("AAPL", 106.73)
    fake_alpaca.set_position("AAPL", 10, 100.0)
    stop = broker.submit(OrderRequest("c-trail", "AAPL", "sell", "trailing_stop", 10, "gtc", trail_percent=5.0))
    assert (stop.hwm, stop.stop_price) == (106.73, 101.39)
    fake_alpaca.trade_at("AAPL", 116.19)
    fake_alpaca.trade_at("AAPL", 112.0)  # a lower price leaves the high-water mark where it was
    (now,) = broker.orders("open", ["AAPL"])
    assert (now.id, now.hwm, now.stop_price) == (stop.id, 116.19, 110.38)
