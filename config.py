"""Settings: from `.env`, then the environment (which wins), then command-line options (which win over both).

Every variable is declared once in VARIABLES with its type, default, allowed range and whether it is a secret.
A bad value ends the command with exit code 2 and one line naming the variable. Secrets are kept out of every
output: `redact()` masks them in any text before it is printed or logged, and `Config.public()` hides them.

Runtime settings (auto-close, thresholds, skip-buy mode, halt) are different: an operator changes them while the
agent runs, so they live in the journal (see RUNTIME_SETTINGS and db.py), not here.
"""
from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from common.errors import ConfigError

ROOT = Path(__file__).resolve().parent  # where the code is: a checkout, or site-packages once installed
# the universe that ships with the product: in a checkout, and where an installed distribution puts it
BUNDLED_UNIVERSES = (ROOT / "data" / "universe.json", Path(sys.prefix) / "share" / "momentum-agent" / "universe.json")


def home() -> Path:
    """Where relative default paths (data/, logs/) and `.env` live.

    MOMENTUM_HOME when set; else the checkout the code runs from (it holds pyproject.toml), so `python main.py` and
    an editable install keep everything beside the code; else, for an installed `momentum`, ~/.momentum. A home
    with no universe.json of its own uses the one that ships with the product.
    """
    configured = os.environ.get("MOMENTUM_HOME", "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    if (ROOT / "pyproject.toml").exists():
        return ROOT
    return Path.home() / ".momentum"


def product_version() -> str:
    """The version in the checkout's pyproject.toml, or the installed distribution's."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.exists():
        return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("momentum-agent")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Var:
    name: str
    kind: str  # str, int, float, bool, choice, path, list, url (http/https), host (http/https, scheme+host only)
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False


def _v(name, kind, default, help, **kw) -> Var:  # noqa: A002 - short table rows read better
    return Var(name, kind, default, help, **kw)


VARIABLES: tuple[Var, ...] = (
    # where things live
    _v("MOMENTUM_DB", "path", "data/trades.db", "journal file (SQLite)"),
    _v("SIM_BROKER_DB", "path", "", "sim broker state file (default: sim_broker.db beside the journal)"),
    _v("UNIVERSE_FILE", "path", "data/universe.json", "cap-tiered universe"),
    _v("LOG_DIR", "path", "logs", "JSON-lines logs and the daily trade audit CSVs"),
    _v("LOG_LEVEL", "choice", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    _v("CACHE_DIR", "path", "data/cache", "parsed market-data cache"),
    _v("DASHBOARD_DIR", "path", "", "browser dashboard written after every journal-changing command (default: "
       "dashboard/ beside the journal; off = none, not even a backtest's tearsheet)"),
    _v("CONSTITUENTS_FILE", "path", "", "GICS sectors for `rebalance --universe SECTOR` (default: "
       "sp500_constituents_sectors.csv beside a csv: source)"),
    # ports
    _v("DATA_SOURCE", "str", "sim", "market data: sim, csv:PATH or alpaca"),
    _v("MARKET_DATA", "path", "", "SPY/VIX daily CSV (default: spy_vix_daily*.csv beside a csv: source)"),
    _v("BROKER", "choice", "sim", "broker", choices=("sim", "alpaca")),
    _v("DECIDER", "choice", "rules", "decision maker", choices=("rules", "llm")),
    _v("MOMENTUM_ASOF", "str", "", "simulated time (ISO; naive = America/New_York); empty = real time"),
    # Alpaca
    _v("ALPACA_API_KEY", "str", "", "Alpaca key id", secret=True),
    _v("ALPACA_SECRET_KEY", "str", "", "Alpaca secret key", secret=True),
    _v("ALPACA_PAPER", "bool", True, "paper account (false = live, which also needs LIVE_TRADING=yes)"),
    _v("LIVE_TRADING", "choice", "no", "second switch for real money", choices=("yes", "no")),
    _v("ALPACA_FEED", "choice", "iex", "market-data feed", choices=("iex", "sip", "delayed_sip")),
    _v("ALPACA_TRADING_URL", "host", "", "override of the trading API host (scheme+host only)"),
    _v("ALPACA_DATA_URL", "host", "", "override of the market-data API host (scheme+host only)"),
    _v("ALPACA_REQUESTS_PER_MIN", "int", 180, "request budget shared by all processes", low=1, high=10000),
    _v("ALPACA_TIMEOUT", "float", 10.0, "seconds per HTTP request", low=0.1, high=120),
    # model API (llm decider)
    _v("ANTHROPIC_API_KEY", "str", "", "Messages API key (DECIDER=llm)", secret=True),
    _v("ANTHROPIC_BASE_URL", "url", "https://api.anthropic.com", "Messages API base URL"),
    _v("ANTHROPIC_MODEL", "str", "claude-sonnet-4-5", "model name"),
    _v("LLM_TIMEOUT", "float", 30.0, "seconds for the one decider call per scan", low=1, high=300),
    # alerts
    _v("ALERT_CHANNELS", "list", "log", "comma list of log, telegram, discord (log is always on)"),
    _v("TELEGRAM_BOT_TOKEN", "str", "", "Telegram bot token", secret=True),
    _v("TELEGRAM_CHAT_ID", "str", "", "chat that receives alerts"),
    _v("TELEGRAM_ALLOWED_USERS", "list", "", "comma list of Telegram user ids allowed to command the bot"),
    _v("TELEGRAM_BASE_URL", "url", "https://api.telegram.org", "Telegram Bot API base URL"),
    _v("DISCORD_WEBHOOK_URL", "url", "", "Discord webhook URL", secret=True),
    _v("ALERT_TIMEOUT", "float", 5.0, "seconds an alert channel may take per request", low=0.1, high=60),
    # portfolio and risk
    _v("POSITION_SIZING", "choice", "fixed", "fixed, atr or kelly", choices=("fixed", "atr", "kelly")),
    _v("POSITION_SIZE_PCT", "float", 10.0, "position size, % of equity", low=0.1, high=100),
    _v("ATR_RISK_PCT", "float", 1.0, "atr sizing: equity % risked with the stop 2 x ATR14 away", low=0.05, high=10),
    _v("MAX_POSITIONS", "int", 6, "open positions in total", low=1, high=100),
    _v("MAX_EXPOSURE_PCT", "float", 60.0, "invested share of equity before the regime factor", low=1, high=100),
    _v("TRAILING_STOP_PCT", "float", 5.0, "broker trailing stop, %", low=0.5, high=50),
    _v("HARD_STOP_PCT", "float", 8.0, "stop loss below entry, %", low=0.5, high=50),
    _v("DAILY_LOSS_LIMIT_PCT", "float", 3.0, "circuit breaker: day loss, % of start-of-day equity", low=0.1, high=50),
    _v("MAX_PORTFOLIO_HEAT_PCT", "float", 6.0, "sum of open risk to stops, % of equity", low=0.1, high=100),
    _v("MAX_CORRELATION", "float", 0.7, "max 60-day return correlation with a held position", low=0, high=1),
    _v("BUY_SCORE_MIN", "int", 12, "composite score needed to buy", low=0, high=20),
    _v("WATCH_SCORE_MIN", "int", 8, "composite score for the watchlist", low=0, high=20),
    _v("FILL_TIMEOUT_S", "float", 60.0, "seconds to wait for sells to fill before buying", low=0, high=600),
    _v("PROFIT_TARGET_R", "float", 6.0, "momentum: profit target at entry x (1 + R x TRAILING_STOP_PCT); 6 x 5% = +30%, "
       "beyond both partial exits; 0 = none", low=0, high=100),
    _v("MAX_HOLDING_PCT", "float", 25.0, "warn when one holding exceeds this share of equity, %", low=1, high=100),
    # the market regime (core/regime/classify.py)
    _v("REGIME_CRASH_RULE", "choice", "shock", "regime: what starts the CRASH override: shock = a VIX spike (+20% in "
       "a session or +50% in three) with VIX in the top decile of its history and SPY 5% under its 63-session high; "
       "seed = any such spike", choices=("shock", "seed")),
    # the 52-week-high rebalance system
    _v("REBALANCE_TOP_N", "int", 20, "rebalance: names held, the top N by previous close / 52-week high", low=1,
       high=100),
    _v("REBALANCE_SLEEVE_PCT", "float", 40.0, "rebalance: share of equity its holdings take, %; beside momentum's "
       "MAX_EXPOSURE_PCT (60) the two sleeves make the whole account (a backtest of the rebalance alone uses 100)",
       low=1, high=100),
    _v("REBALANCE_STOP_PCT", "float", 15.0, "rebalance: its wide protective trailing stop, %", low=0.5, high=90),
    _v("REBALANCE_TIME", "str", "09:45", "rebalance: New York time of its daily run (the month's first session "
       "rebalances, the others refill slots a stop emptied)"),
    # options (STRAT signals executed as options when the runtime setting options_trading is on)
    _v("OPTIONS_MAX_CAPITAL", "float", 300.0, "options: most premium paid per trade, dollars", low=1, high=1_000_000),
    _v("OPTIONS_MAX_POSITIONS", "int", 5, "options: most open option positions", low=0, high=100),
    _v("ALPACA_OPTIONS_FEED", "choice", "indicative", "options market-data feed (opra needs a subscription)",
       choices=("indicative", "opra")),
    *(v for cap in ("LARGE", "MID", "SMALL") for v in (
        _v(f"MAX_POSITIONS_{cap}", "int", 2, f"{cap.lower()} caps: max open positions", low=0, high=100),
        _v(f"MAX_BUYS_{cap}", "int", 2, f"{cap.lower()} caps: max buys per scan", low=0, high=100),
        _v(f"MIN_VOLUME_SURGE_{cap}", "float", 1.5 if cap == "SMALL" else 1.3,
           f"{cap.lower()} caps: min volume surge", low=0, high=100),
        _v(f"MIN_GAP_UP_PCT_{cap}", "float", 3.0 if cap == "SMALL" else 1.0,
           f"{cap.lower()} caps: min gap up, %", low=0, high=100),
        _v(f"MIN_ROC_10D_PCT_{cap}", "float", 5.0 if cap == "SMALL" else 3.0,
           f"{cap.lower()} caps: min 10-day rate of change, %", low=-100, high=1000),
    )),
)
_BY_NAME = {v.name: v for v in VARIABLES}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _time_of_day(text: str) -> time | None:
    """HH:MM as a time of day, None when it is not one."""
    found = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not found or int(found[1]) > 23 or int(found[2]) > 59:
        return None
    return time(int(found[1]), int(found[2]))


def _parse(var: Var, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    bad = lambda why: ConfigError(f"{var.name}: {why} (got {'<hidden>' if var.secret else repr(raw)})")  # noqa
    if var.kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise bad("expected true or false")
    if var.kind in ("int", "float"):
        try:
            value = int(text) if var.kind == "int" else float(text)
        except ValueError:
            raise bad(f"expected {'an integer' if var.kind == 'int' else 'a number'}") from None
        if value != value or (var.low is not None and value < var.low) or (var.high is not None and value > var.high):
            raise bad(f"must be between {var.low:g} and {var.high:g}")
        return value
    if var.kind == "choice":
        match = next((c for c in var.choices if c.lower() == text.lower()), None)
        if match is None:
            raise bad(f"must be one of {', '.join(var.choices)}")
        return match
    if var.kind == "list":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if var.kind in ("url", "host"):
        if not text:
            return var.default  # unset: the service's own address
        problem = _url_problem(text, host_only=var.kind == "host")
        if problem:
            raise bad(problem)
        return text.rstrip("/") if var.kind == "host" else text  # the SDK appends "/v2/..." itself
    return text


def _url_problem(text: str, *, host_only: bool) -> str | None:
    """Why `text` cannot be the address of an HTTP service (None when it can). Caught here, a typo is a setting to
    fix; at the first request it would look like an outage to retry later."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        return "expected an http(s) URL with a host, like https://example.com"
    if host_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "expected scheme and host only, like https://paper-api.alpaca.markets (no path)"
    return None


class Config:
    """Validated settings. Attribute access by lower-case name: `config.max_positions`."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self._validate_cross_field()

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name.upper()]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str) -> Any:
        return self._values[name]

    def public(self) -> dict[str, Any]:
        """Every effective setting with secrets hidden (for `configs` snapshots and display)."""
        return {v.name: ("<set>" if self._values[v.name] else "") if v.secret else self._values[v.name]
                for v in VARIABLES}

    def secrets(self) -> list[str]:
        return [str(self._values[v.name]) for v in VARIABLES if v.secret and self._values[v.name]]

    @property
    def mode(self) -> str:
        """SIM, PAPER or LIVE. Real money needs both ALPACA_PAPER=false and LIVE_TRADING=yes."""
        if self.broker == "sim":
            return "SIM"
        return "LIVE" if (not self.alpaca_paper and self.live_trading == "yes") else "PAPER"

    def sim_broker_path(self) -> Path:
        if self.sim_broker_db:
            return Path(self.sim_broker_db)
        return Path(self.momentum_db).parent / "sim_broker.db"

    @property
    def rebalance_clock(self) -> time:
        """REBALANCE_TIME as a New York time of day (validated when the configuration is loaded)."""
        return _time_of_day(self.rebalance_time)

    def _validate_cross_field(self) -> None:
        moment = _time_of_day(self.rebalance_time)
        if moment is None or not time(9, 30) <= moment < time(16, 0):
            raise ConfigError(f"REBALANCE_TIME: expected HH:MM between 09:30 and 15:59 New York time, "
                              f"got {self.rebalance_time!r}")
        source = self.data_source
        if not (source in ("sim", "alpaca") or (source.startswith("csv:") and len(source) > 4)):
            raise ConfigError(f"DATA_SOURCE/--data: unknown source {source!r} (use sim, csv:PATH or alpaca)")
        unknown = [c for c in self.alert_channels if c not in ("log", "telegram", "discord")]
        if unknown:
            raise ConfigError(f"ALERT_CHANNELS: unknown channel {unknown[0]!r} (use log, telegram, discord)")
        if any(not uid.lstrip("-").isdigit() for uid in self.telegram_allowed_users):
            raise ConfigError("TELEGRAM_ALLOWED_USERS: expected a comma list of numeric user ids")
        if "telegram" in self.alert_channels and not (self.telegram_bot_token and self.telegram_chat_id):
            raise ConfigError("TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID: must be set when ALERT_CHANNELS has telegram")
        if "discord" in self.alert_channels and not self.discord_webhook_url:
            raise ConfigError("DISCORD_WEBHOOK_URL: must be set when ALERT_CHANNELS has discord")
        if self.decider == "llm" and not self.anthropic_api_key:
            raise ConfigError("ANTHROPIC_API_KEY: must be set when DECIDER=llm")
        if self.watch_score_min > self.buy_score_min:
            raise ConfigError("WATCH_SCORE_MIN: must not exceed BUY_SCORE_MIN")


def _default(var: Var) -> Any:
    """Default paths belong to the install, not to whatever directory cron happens to start in."""
    if var.kind == "path" and var.default:
        path = home() / var.default
        if var.name == "UNIVERSE_FILE" and not path.exists():  # a home without a universe of its own
            path = next((bundled for bundled in BUNDLED_UNIVERSES if bundled.exists()), path)
        return str(path)
    return var.default


def universe_target(config: Config) -> Path:
    """Where a universe built for this home goes when no --out names a file (`universe build`): the universe file the
    configuration resolves (UNIVERSE_FILE or --universe, else the home's data/universe.json), except the copy shipped
    with the product, which a home without a universe of its own only reads: that home's own data/universe.json then.
    (A checkout run with no MOMENTUM_HOME is its own home: its data/universe.json is the home's file.)"""
    configured = Path(config.universe_file)
    shipped = {bundled.resolve() for bundled in BUNDLED_UNIVERSES}
    own = home() / "data" / "universe.json"
    return own if configured.resolve() in shipped else configured


def load_config(overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
                dotenv_path: Path | None = None) -> Config:
    """Defaults, then .env, then the environment, then non-empty `overrides` (command-line options)."""
    from dotenv import dotenv_values

    env_file = dotenv_path if dotenv_path is not None else home() / ".env"
    layered: dict[str, Any] = {}
    if env_file.exists():
        layered.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    layered.update(os.environ if environ is None else environ)
    layered.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {var.name: _parse(var, layered[var.name]) if var.name in layered else _default(var)
              for var in VARIABLES}
    for var in VARIABLES:  # list defaults are written as text in the table
        if var.kind == "list" and isinstance(values[var.name], str):
            values[var.name] = _parse(var, values[var.name])
    return Config(values)


# --- secrets ------------------------------------------------------------------------------------------------------

_active_secrets: list[str] = []
_TOKENISH = re.compile(r"(bot)(\d{6,}:[A-Za-z0-9_-]{20,})|((?:api[_-]?key|secret|token)[\"'=: ]+)([^\s\"',&]{6,})",
                       re.IGNORECASE)


def register_secrets(values: list[str]) -> None:
    """Remember the secrets in force so that redact() can mask them anywhere."""
    for value in values:
        if value and len(value) >= 4 and value not in _active_secrets:
            _active_secrets.append(value)


def redact(text: str) -> str:
    """Mask known secret values and anything that looks like a key or bot token."""
    for secret in sorted(_active_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _TOKENISH.sub(lambda m: (m.group(1) + "***") if m.group(1) else (m.group(3) + "***"), text)


# --- runtime settings (stored in the journal) ---------------------------------------------------------------------

def _on_off(raw: str) -> str:
    value = raw.strip().lower()
    if value in _TRUE:
        return "on"
    if value in _FALSE:
        return "off"
    raise ValueError("expected on or off")


def _threshold(raw: str) -> str:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if not 3 <= value <= 10:
        raise ValueError("must be between 3 and 10")
    return str(value)


def _ranking(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("score", "learned"):
        raise ValueError("expected score or learned")
    return value


@dataclass(frozen=True)
class RuntimeSetting:
    default: str
    parse: Callable[[str], str]
    help: str


RUNTIME_SETTINGS: dict[str, RuntimeSetting] = {
    "autoclose": RuntimeSetting("on", _on_off, "close positions whose reversal score reaches the threshold"),
    "autoclose_threshold": RuntimeSetting("5", _threshold, "reversal score (3-10) that triggers auto-close"),
    "alerts": RuntimeSetting("on", _on_off, "send alerts to the configured channels"),
    "skip_buys": RuntimeSetting("on", _on_off, "skip-buy mode: no new buys while every holding is healthy"),
    "halt": RuntimeSetting("off", _on_off, "stop buying (set by `halt`, cleared by `resume`)"),
    "options_trading": RuntimeSetting("off", _on_off, "execute STRAT signals as options (off: alerts only)"),
    "ranking": RuntimeSetting("score", _ranking, "rank candidates by the fixed 0-20 score or by the learned model "
                              "(`learn fit`; used only once a model is usable on the scan's session)"),
}


def parse_runtime_setting(key: str, raw: str) -> str:
    """The normalised stored value, or ConfigError naming the key."""
    setting = RUNTIME_SETTINGS.get(key)
    if setting is None:
        raise ConfigError(f"set: unknown setting {key!r} (known: {', '.join(RUNTIME_SETTINGS)})")
    try:
        return setting.parse(raw)
    except ValueError as why:
        raise ConfigError(f"set {key}: {why} (got {raw!r})") from None


# --- strategy settings: what a backtest may vary -----------------------------------------------------------------

# The settings a trading system reads: sizing, risk, stops, targets, scores, the per-cap scanner thresholds and the
# rebalance's, plus the runtime settings that change decisions. Not where files live, the ports, credentials,
# alerts, timeouts or the decider (a replay never calls the network), nor the options (a replay trades none).
_NOT_STRATEGY = {"FILL_TIMEOUT_S", "MAX_HOLDING_PCT", "REBALANCE_TIME", "OPTIONS_MAX_CAPITAL", "OPTIONS_MAX_POSITIONS",
                 "ALPACA_OPTIONS_FEED"}
STRATEGY_VARIABLES: dict[str, Var] = {
    v.name.lower(): v for v in VARIABLES[[v.name for v in VARIABLES].index("POSITION_SIZING"):]
    if v.name not in _NOT_STRATEGY and v.kind in ("int", "float", "choice", "bool")}
STRATEGY_RUNTIME_SETTINGS = ("autoclose", "autoclose_threshold", "skip_buys", "ranking")


@dataclass(frozen=True)
class StrategySetting:
    """One strategy setting by its research name: an .env variable in lower case or a runtime setting's key."""
    name: str
    var: Var | None  # the .env variable, or None for a runtime setting

    @property
    def runtime(self) -> bool:
        return self.var is None

    @property
    def kind(self) -> str:
        if self.var is not None:
            return self.var.kind
        return "int" if self.name == "autoclose_threshold" else "choice"

    @property
    def default(self) -> Any:
        return self.var.default if self.var is not None else RUNTIME_SETTINGS[self.name].default

    def parse(self, raw: str) -> Any:
        """The value as the product would store it; ConfigError (one line, naming the setting) when it is bad."""
        if self.var is not None:
            return _parse(self.var, str(raw))
        return parse_runtime_setting(self.name, str(raw))


def strategy_setting(name: str) -> StrategySetting:
    key = name.strip().lower()
    if key in STRATEGY_VARIABLES:
        return StrategySetting(key, STRATEGY_VARIABLES[key])
    if key in STRATEGY_RUNTIME_SETTINGS:
        return StrategySetting(key, None)
    known = ", ".join([*STRATEGY_VARIABLES, *STRATEGY_RUNTIME_SETTINGS])
    raise ConfigError(f"unknown strategy setting {name!r} (one of {known})")


def parse_assignment(text: str) -> tuple[StrategySetting, Any]:
    """`name=value` (e.g. trailing_stop_pct=6 or autoclose=off) as the setting and its parsed value."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--set: expected NAME=VALUE, got {text!r}")
    setting = strategy_setting(name)
    return setting, setting.parse(raw)


# --- .env.example -------------------------------------------------------------------------------------------------

_SECTIONS = {"MOMENTUM_DB": "Files", "DATA_SOURCE": "Ports",
             "ALPACA_API_KEY": "Alpaca (paper by default; live needs ALPACA_PAPER=false AND LIVE_TRADING=yes)",
             "ANTHROPIC_API_KEY": "Model API for DECIDER=llm (one call per scan; falls back to the rules decider)",
             "ALERT_CHANNELS": "Alerts (a failing channel never fails a trading run)",
             "POSITION_SIZING": "Portfolio and risk", "OPTIONS_MAX_CAPITAL": "Options (STRAT signals; off until "
             "`set options_trading on`)", "MAX_POSITIONS_LARGE": "Per-cap limits and scanner thresholds"}


def env_example() -> str:
    """The text of .env.example, generated from VARIABLES so the two cannot drift apart (a test compares them)."""
    lines = ["# Momentum Agent settings. Copy to .env and edit; the environment overrides .env, and command-line",
             "# options override both. Every variable is optional: with none set, everything runs on the embedded",
             "# simulated market and broker. Secrets (keys, tokens) are never printed or logged.",
             "# Relative paths are relative to the home folder, where this .env file also lives: MOMENTUM_HOME (an",
             "# environment variable) when set, else the checkout, else ~/.momentum for an installed `momentum`."]
    for var in VARIABLES:
        if var.name in _SECTIONS:
            lines += ["", f"# --- {_SECTIONS[var.name]} ---"]
        allowed = f" [{' | '.join(var.choices)}]" if var.choices else (
            f" [{var.low:g}..{var.high:g}]" if var.low is not None else "")
        default = ("true" if var.default else "false") if isinstance(var.default, bool) else var.default
        lines.append(f"# {var.help}{allowed}{' (secret)' if var.secret else ''}")
        lines.append(f"# {var.name}={default}")
    return "\n".join(lines) + "\n"
