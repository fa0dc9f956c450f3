"""Checks of option values every command shares: an option given empty is refused, never read as "the default".

`--out ''` or `--asof ''` is almost always a shell variable that was not set (`--out "$DIR"`). Read as the current
folder or as real time, it would write a backtest into the working directory or trade on today's prices when a
replay was meant; refused, it costs one line and exit code 2. A value left out keeps its default.

Raised as ConfigError, so the command line's error handling (cli/app.py) shows one line and exits 2, where a click
usage error would print the usage text too.
"""
from __future__ import annotations

from datetime import date

import click

from common.errors import ConfigError


def refuse_empty(option: str, value: str | None, example: str, default: str | None = None) -> str | None:
    """`value` as given, or ConfigError when it was given but is empty or blank (None: the option was left out).
    `default` says what leaving the option out means, for an option that may be left out."""
    if value is not None and not value.strip():
        fallback = f", or leave {option} out for {default}" if default else ""
        raise ConfigError(f"{option}: empty value; give {example}{fallback}")
    return value


def nonempty_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback for a path option (--out, --chart): refuses an empty path, in one line, exit code 2."""
    name = max(param.opts, key=len) if param.opts else f"--{param.name}"
    return refuse_empty(name, value, "a path", None if param.required else "its default")


# What each global option takes, and what leaving it out means, for its one-line error when it is given empty.
GLOBAL_EXAMPLES = {
    "db": ("a journal file such as data/trades.db", "MOMENTUM_DB or data/trades.db"),
    "data": ("sim, csv:PATH or alpaca", "DATA_SOURCE or sim"),
    "market": ("a SPY/VIX daily CSV", "MARKET_DATA or the data source's own"),
    "broker": ("sim or alpaca", "BROKER or sim"),
    "asof": ("a time such as 2016-11-09T10:30", "real time"),
    "universe": ("a universe JSON such as data/universe.json", "UNIVERSE_FILE or data/universe.json"),
}


def check_globals(options: dict[str, str | None]) -> None:
    """The global options: one given explicitly but empty (an unset shell variable, `--db "$DB"`) is refused rather
    than silently replaced by the default, which could be another journal or the simulated market. An empty variable
    in the environment or .env keeps its meaning (an empty MOMENTUM_ASOF is real time: a variable kept in a .env file
    and cleared is how a deployment goes live)."""
    for name, value in options.items():
        example, default = GLOBAL_EXAMPLES[name]
        refuse_empty(f"--{name}", value, example, default)


def parse_day(text: str, option: str) -> date:
    """A YYYY-MM-DD option as a date, or one line naming the option (exit 2)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: expected a date YYYY-MM-DD, got {text!r}") from None
