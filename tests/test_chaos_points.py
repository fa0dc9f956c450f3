"""Chaos at chosen I/O points: commands SIGKILLed as a chosen journal write or broker order call starts
(tests/kill_at.py), through the embedded sim broker and the local fake Alpaca server, each followed by a re-run of
the command and the next monitor run, then checked against the journal and the broker (tests/book_invariants.py).

Scenarios, on crafted price paths, each in a journal of its own set up without kills:
- scan: a trading scan buys BRK on its breakout (the entry, then its stop);
- exits: a monitor run exits TGT at its target (MEDIUM: a limit at mid) and STP at its hard stop (CRITICAL: market),
  each after cancelling the stop that holds its shares;
- walk: the next monitor run walks FLAT's early exit (LOW), a limit above mid the price never reached: the limit is
  cancelled and a lower one sent;
- close: `close CLS`;
- reconcile: after the broker filled GAP's stop, lost PRT's stop and holds EXT shares the journal never ordered:
  the stop fill is applied, EXT adopted, and protect_all places stops for PRT and EXT.
A census run of each scenario lists its events; the events that write orders, exit_attempts, exits or trades, or
surround a broker submit or cancel, are the kill points, one kill for the events that leave the same journal and
broker (`kill_points`; a seeded sample when a scenario has more than MAX_KILLS_PER_SCENARIO). With the fake Alpaca
server a market order, or a limit the price reaches, fills as it is posted (so a command in another process sees
its fill in the answer, as with the sim broker); its clock and prices stand at the scenario's moment.
"""
from __future__ import annotations

import copy
import json
import queue
import random
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest

import executor
from common.clock import Clock, calendar, parse_asof
from common.types import OrderRequest
from config import load_config
from flows.runtime import Runtime
from ports.market_sources import CsvMarket
from ports.sim_broker import SimBroker

import book_invariants
from conftest import ROOT
from crafted import ENTRY, flat, ramp, sessions_after, write_market
from fake_alpaca import FakeAlpaca
from realdata import process_env

pytestmark = pytest.mark.slow  # about 160 commands killed, each re-run and followed: four minutes on two cores

KILL_AT = Path(__file__).resolve().parent / "kill_at.py"
SEED = 20160601
MAX_KILLS_PER_SCENARIO = 60
WORKERS = 2
ORDER_TABLES = {"orders", "exit_attempts", "exits", "trades"}
# Daily bars: a run during a session sees today's open and the sessions before it, so each move is in an open.
RISE = [ramp(50.0 + 0.6 * i, 50.6 + 0.6 * i) for i in range(9)] + [ramp(55.4, 56.0, 3_000_000)]  # up 1.2% a day
MARKET = {
    "BRK": RISE + [(57.5, 59.0, 57.4, 58.8, 3_000_000), flat(58.8)],  # opens above its range after heavy volume
    "TGT": [(52.6, 52.7, 52.5, 52.6, 1_000_000), flat(52.6)],          # opens above its target of 52.50
    "STP": [(48.40, 48.45, 48.35, 48.40, 1_000_000), flat(48.4)],      # opens -3.2% with a 3% hard stop
    "CLS": [flat(50.1)] * 2,
    "GAP": [ramp(50.0, 55.0), (51.0, 51.2, 50.8, 51.0, 1_000_000)],       # its trailing stop gapped through
    "PRT": [flat(50.2)] * 2,
    "EXT": [flat(50.3)] * 2,
    "FLAT": [flat(50.5)] * 11,                                            # ten sessions going nowhere: LOW exit
}
ALPACA_KEYS = {"ALPACA_API_KEY": "PKCHAOSKEY123456", "ALPACA_SECRET_KEY": "chaossecret1234567890",
               "ALPACA_REQUESTS_PER_MIN": "10000"}


def at(session: int, hhmm: str) -> str:
    return f"{sessions_after(session)[-1] if session else ENTRY}T{hhmm}"


class FillingAlpaca(FakeAlpaca):
    """The fake Alpaca server as an exchange that trades at once: a market order, or a limit the current price
    reaches, fills as it is posted. Every POST of a client_order_id the server already holds is kept in `resent`."""

    def __init__(self) -> None:
        super().__init__()
        self.resent: list[str] = []
        self.initial = self.state()  # as started: the state a world's setup begins from

    def handle(self, method, path, query, body, headers):
        posted = method == "POST" and path == "/v2/orders" and isinstance(body, dict)
        if posted:
            with self.lock:
                if any(o["client_order_id"] == body.get("client_order_id") for o in self.orders.values()):
                    self.resent.append(body["client_order_id"])
        (status, payload, extra), stall = super().handle(method, path, query, body, headers)
        if posted and status == 200 and isinstance(payload, dict) and payload.get("id") in self.orders:
            payload = self._trade_on_arrival(payload["id"])
        return (status, payload, extra), stall

    def _trade_on_arrival(self, order_id: str) -> dict:
        with self.lock:
            order = self.orders[order_id]
            price = self.price(order["symbol"])
            if order["type"] == "market":
                return self.fill(order_id, price=price)
            if order["type"] == "limit":
                limit = float(order["limit_price"])
                if (limit <= price) if order["side"] == "sell" else (limit >= price):
                    return self.fill(order_id, price=limit)
            return dict(order)

    def state(self) -> dict:
        """What the server holds, order ids to come included, for `restore`."""
        with self.lock:
            return copy.deepcopy({"orders": self.orders, "positions": self.positions, "account": self.account,
                                  "prices": self.prices, "_seq": self._seq, "_pending_reads": self._pending_reads})

    def restore(self, state: dict) -> None:
        with self.lock:
            for name, value in copy.deepcopy(state).items():
                setattr(self, name, value)
            self.requests.clear()
            self.resent.clear()

    def at(self, asof: str, prices: dict[str, float]) -> None:
        """The exchange at a simulated moment: its clock (order and fill times) and the csv prices of then."""
        moment = parse_asof(asof)
        with self.lock:
            self.clock = lambda: moment
            self.prices.update(prices)


# --- scenarios ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]  # the killed command's main.py arguments after --asof
    asof: str
    setup: Callable  # setup(world): the journal and the broker before the command, made without kills
    census_shows: tuple[str, ...]  # what an undisturbed run must do ("event<TAB>detail" fragments)
    rerun_may_say: str = ""  # a re-run may exit 2 with this line when the first run already did the work

    @property
    def next_monitor(self) -> str:
        return (parse_asof(self.asof) + timedelta(minutes=5)).isoformat()


def _open(world: "World", *symbols: str, **fields) -> None:
    rt = world.runtime(at(0, "15:00"))
    for symbol in symbols:
        trade = executor.open_position(rt, symbol=symbol, cap="large", qty=100, session=str(ENTRY),
                                       scan_type="close", fill_timeout=1,
                                       trade_fields={"strategy": "momentum", "composite_score": 14, **fields})
        assert trade["status"] == "open", trade
    rt.close()


def _nothing(world: "World") -> None:
    return None


def _exits(world: "World") -> None:
    _open(world, "TGT", "STP", target_price=52.5)


def _close(world: "World") -> None:
    _open(world, "CLS")


def _walking_exit(world: "World") -> None:
    """FLAT's early exit (LOW) working as a limit above mid that the price never reaches."""
    _open(world, "FLAT")
    world.run("--asof", at(10, "15:50"), "monitor")


def _broker_changes(world: "World") -> None:
    """GAP's stop filled (in the sim, its gap through the stop does it), PRT's stop gone, EXT bought by hand."""
    _open(world, "GAP", "PRT")
    if world.fake is None:
        broker = SimBroker(world.folder / "sim_broker.db", world.market, Clock(parse_asof(at(2, "10:55"))))
        broker.cancel(next(o.id for o in broker.orders("open", ["PRT"])))
        broker.submit(OrderRequest("manual-EXT-1", "EXT", "buy", "market", 40))
        broker.close()
        return
    fake = world.fake
    fake.at(at(2, "10:55"), world.prices(at(2, "10:55")))
    with fake.lock:
        stops = {o["symbol"]: o for o in fake.orders.values() if o["type"] == "trailing_stop"}
        fake.fill(stops["GAP"]["id"], price=51.0)
        stops["PRT"]["status"] = "canceled"
        fake.set_position("EXT", 40, 50.3)


SCENARIOS = [
    Scenario("scan", ("scan", "--type", "open", "--cap", "large"), at(11, "10:30"), _nothing,
             ("broker:submit:before\tma-e-BRK-", "broker:submit:before\tma-s-1-1 sell trailing_stop 173 BRK")),
    Scenario("exits", ("monitor",), at(1, "15:30"), _exits,
             ("broker:cancel:before", "broker:submit:before\tma-x-1-1 sell limit 100 TGT",
              "broker:submit:before\tma-x-2-1 sell market 100 STP")),
    Scenario("walk", ("monitor",), at(10, "15:55"), _walking_exit,
             ("broker:cancel:before", "broker:submit:before\tma-x-1-2 sell limit 100 FLAT")),
    Scenario("close", ("close", "CLS"), at(1, "11:00"), _close,
             ("broker:cancel:before", "broker:submit:before\tma-x-1-1 sell market 100 CLS"),
             rerun_may_say="close: no open position in CLS"),
    Scenario("reconcile", ("reconcile",), at(2, "11:00"), _broker_changes,
             ("journal:insert:exits", "journal:insert:trades", "broker:submit:before\tma-s-2-2 sell trailing_stop "
              "100 PRT", "broker:submit:before\tma-s-3-1 sell trailing_stop 40 EXT")),
]
# Every order and exit write point must be killed at (or at an event leaving the same journal and broker).
MUST_COVER = {f"journal:{kind}:{table}" for kind in ("insert", "update") for table in ORDER_TABLES} | {
    f"broker:{method}:{moment}" for method in ("submit", "cancel") for moment in ("before", "after")}


# --- worlds: one scenario on one broker ---------------------------------------------------------------------------

@dataclass
class World:
    scenario: Scenario
    broker: str  # sim | alpaca
    folder: Path  # the state before the command
    market_env: dict[str, str]
    market: CsvMarket
    cache: Path  # the parsed market-data cache every command shares
    fake: FillingAlpaca | None = None
    fake_state: dict | None = None
    step_prices: dict[str, float] = field(default_factory=dict)
    census: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.broker}/{self.scenario.name}"

    def values(self, folder: Path, fake_url: str | None) -> dict[str, str]:
        values = {**self.market_env, "MOMENTUM_DB": str(folder / "trades.db"), "LOG_DIR": str(folder / "logs"),
                  "CACHE_DIR": str(self.cache), "HARD_STOP_PCT": "3",
                  "BROKER": self.broker}
        if self.broker == "alpaca":
            values.update(ALPACA_KEYS, ALPACA_TRADING_URL=fake_url)
        return values

    def runtime(self, asof: str) -> Runtime:
        url = self.fake.url if self.fake is not None else None
        if self.fake is not None:
            self.fake.at(asof, self.prices(asof))
        return Runtime(load_config({**self.values(self.folder, url), "MOMENTUM_ASOF": asof}, environ={}), "setup")

    def run(self, *args: str) -> None:
        """A main.py command of the setup, run to completion in a process of its own."""
        if self.fake is not None:
            self.fake.at(args[1], self.prices(args[1]))
        url = self.fake.url if self.fake is not None else None
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                              env=process_env(self.values(self.folder, url)), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def prices(self, asof: str) -> dict[str, float]:
        session, fraction = calendar().current_or_last_session(parse_asof(asof))
        snap = self.market.snapshot(sorted(MARKET), session.day, fraction)
        return {s: round(float(p), 2) for s, p in zip(snap.symbols, snap.price)}


@dataclass
class Outcome:
    world: str
    kill: int  # 0 for the census run
    event: str
    exits: list = field(default_factory=list)  # of the command, its re-run and the next monitor run
    checks: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    output: str = ""


def chain(world: World, spec: str, folder: Path, fake: FillingAlpaca | None) -> Outcome:
    """The scenario's command under `spec`, its re-run and the next monitor run, in a copy of the world's state;
    then every invariant."""
    scenario = world.scenario
    shutil.copytree(world.folder, folder)
    if fake is not None:
        fake.restore(world.fake_state)
        fake.at(scenario.asof, world.step_prices)
    record = folder / "record.jsonl"
    command = ["--asof", scenario.asof, *scenario.args]
    argv = [sys.executable, str(KILL_AT), spec, "--record", str(record), "--", *command, "--then", *command,
            "--then", "--asof", scenario.next_monitor, "monitor"]
    env = process_env(world.values(folder, fake.url if fake is not None else None))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    kill = int(spec.split(":")[1]) if spec.startswith("kill:") else 0
    killed = next((line for line in lines if "killed_at" in line), None)
    outcome = Outcome(world.name, kill, killed["event"] if killed else "",
                      [line["exit"] for line in lines if "exit" in line])
    _judge_run(outcome, world, done, kill)
    book = (book_invariants.fake_book(fake) if fake is not None
            else book_invariants.sim_book(folder / "sim_broker.db"))
    sent = [line["sent"] for line in lines if "sent" in line]
    resent = list(fake.resent) if fake is not None else [line["sent"] for line in lines if line.get("held")]
    checker = book_invariants.check(folder / "trades.db", book, sent, resent)
    outcome.checks.update(checker.counts)
    outcome.violations += checker.violations
    outcome.output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return outcome


def _judge_run(outcome: Outcome, world: World, done: subprocess.CompletedProcess, kill: int) -> None:
    first, rerun, monitor = (outcome.exits + [None] * 3)[:3]
    if kill:
        outcome.checks["killed_at_point"] += 1
        expected = world.census[kill - 1][0]
        if first != "SIGKILL" or outcome.event != expected:
            outcome.violations.append(f"killed_at_point: meant to kill at event {kill} ({expected}), the command "
                                      f"ended {first} at {outcome.event or 'no event'}")
    else:
        outcome.checks["command_exit"] += 1
        if first != 0:
            outcome.violations.append(f"command_exit: the command exited {first}")
    outcome.checks["rerun_exit"] += 1
    may_say = world.scenario.rerun_may_say
    if not (rerun == 0 or (may_say and rerun == 2 and may_say in done.stderr + done.stdout)):
        outcome.violations.append(f"rerun_exit: the re-run of {' '.join(world.scenario.args)} exited {rerun}")
    outcome.checks["monitor_exit"] += 1
    if monitor != 0:
        outcome.violations.append(f"monitor_exit: the next monitor run exited {monitor}")


PREFERENCE = ("broker", "commit", "committed")  # which event names a kill point, among events it stands for


def _weight(name: str) -> int:
    parts = name.split(":")
    kind = parts[0] if parts[0] == "broker" else parts[1]
    return PREFERENCE.index(kind) if kind in PREFERENCE else len(PREFERENCE)


def kill_points(census: list[tuple[str, str]]) -> dict[int, list[int]]:
    """The kill points of a census: {event index to kill at: indices of the events that kill stands for}.

    The candidates are the events that write orders, exit_attempts, exits or trades, or surround a broker order
    call. A kill at any event leaves, durably, exactly the commits and broker calls that started before it (a
    write statement is undone with its transaction, a broker call that started is the broker's), so candidates
    with the same durable prefix leave the same journal and broker, and one kill stands for them all: a broker
    event if there is one, else a commit ("before the write"), else a "committed" ("after the write").
    """
    groups: dict[int, list[int]] = {}
    durable = 0
    for index, (name, _) in enumerate(census, start=1):
        parts = name.split(":")
        if parts[0] == "broker" or (parts[0] == "journal" and ORDER_TABLES & set(parts[2].split("+"))):
            groups.setdefault(durable, []).append(index)
        if parts[1] == "commit" or (parts[0] == "broker" and parts[2] == "before"):
            durable += 1
    points = {min(group, key=lambda i: (_weight(census[i - 1][0]), i)): group for group in groups.values()}
    if len(points) > MAX_KILLS_PER_SCENARIO:
        kept = random.Random(SEED).sample(sorted(points), MAX_KILLS_PER_SCENARIO)
        points = {index: points[index] for index in kept}
    return dict(sorted(points.items()))


# --- the test -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def market_env(tmp_path_factory) -> dict[str, str]:
    return write_market(tmp_path_factory.mktemp("crafted"), MARKET)


@pytest.fixture
def fakes():
    started = [FillingAlpaca().start() for _ in range(WORKERS + 1)]
    yield started
    for fake in started:
        fake.stop()


def build_worlds(tmp_path: Path, market_env: dict[str, str], setup_fake: FillingAlpaca) -> list[World]:
    cache = tmp_path / "cache"
    market = CsvMarket(market_env["DATA_SOURCE"].removeprefix("csv:"), cache_dir=cache)
    worlds = []
    for broker in ("sim", "alpaca"):
        for scenario in SCENARIOS:
            folder = tmp_path / "worlds" / f"{broker}-{scenario.name}"
            folder.mkdir(parents=True)
            world = World(scenario, broker, folder, market_env, market, cache)
            if broker == "alpaca":
                setup_fake.restore(setup_fake.initial)
                world.fake = setup_fake
            scenario.setup(world)
            world.step_prices = world.prices(scenario.asof)
            if world.fake is not None:
                world.fake_state, world.fake = world.fake.state(), None
            worlds.append(world)
    return worlds


def test_kills_at_every_order_and_exit_write_leave_no_duplicate_no_lost_fill_and_every_position_protected(
        tmp_path, market_env, fakes):
    worlds = build_worlds(tmp_path, market_env, fakes[0])
    pool_of_fakes: queue.Queue = queue.Queue()
    for fake in fakes[1:]:
        pool_of_fakes.put(fake)

    def run(job: tuple[World, str, str]) -> Outcome:
        world, spec, folder = job
        fake = pool_of_fakes.get() if world.broker == "alpaca" else None
        try:
            return chain(world, spec, tmp_path / "runs" / folder, fake)
        finally:
            if fake is not None:
                pool_of_fakes.put(fake)

    census_files = {w.name: tmp_path / f"{w.broker}-{w.scenario.name}.census" for w in worlds}
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(run, [(w, f"census:{census_files[w.name]}", f"{w.broker}-{w.scenario.name}-census")
                                       for w in worlds]))
        for world in worlds:
            world.census = [tuple(line.split("\t", 1)) for line in census_files[world.name].read_text().splitlines()]
            lines = ["\t".join(event) for event in world.census]
            missing = [want for want in world.scenario.census_shows if not any(want in line for line in lines)]
            assert not missing, f"{world.name}: an undisturbed run did not do {missing}"
        outcomes += list(pool.map(run, [(w, f"kill:{n}", f"{w.broker}-{w.scenario.name}-{n}") for w in worlds
                                        for n in kill_points(w.census)]))
    print(_report(worlds, outcomes))
    failed = [o for o in outcomes if o.violations]
    violations = [f"{o.world} kill {o.kill} ({o.event or 'census'}): {v}" for o in failed for v in o.violations]
    print("\n".join(violations))
    for outcome in failed[:3]:
        print(f"--- {outcome.world} kill {outcome.kill}: output of the commands\n{outcome.output}")
    assert not violations, "\n".join(violations[:20])
    assert sum(1 for o in outcomes if o.kill) >= 100
    assert MUST_COVER <= set(_covered(worlds)), MUST_COVER - set(_covered(worlds))


def _covered(worlds: list[World]) -> Counter:
    """How often each event name is covered by a kill (a kill covers the events that leave the same state)."""
    covered: Counter = Counter()
    for world in worlds:
        for group in kill_points(world.census).values():
            covered.update(world.census[i - 1][0] for i in group)
    return covered


def _report(worlds: list[World], outcomes: list[Outcome]) -> str:
    killed = Counter(o.event for o in outcomes if o.kill)
    checks: Counter = Counter()
    for outcome in outcomes:
        checks.update(outcome.checks)
    lines = [f"chaos points: {sum(killed.values())} kills in {len(worlds)} scenarios"]
    for world in worlds:
        points = kill_points(world.census)
        lines.append(f"  {world.name}: {len(world.census)} events, {sum(map(len, points.values()))} order or "
                     f"exit events, {len(points)} kills")
    lines.append("  kills by the event killed at:")
    lines += [f"    {count:4d} {event}" for event, count in sorted(killed.items())]
    lines.append("  events covered (a kill covers the events that leave the same journal and broker):")
    lines += [f"    {count:4d} {event}" for event, count in sorted(_covered(worlds).items())]
    lines.append("  checks: " + ", ".join(f"{kind} {count}" for kind, count in sorted(checks.items())))
    return "\n".join(lines)
