"""Momentum Agent command line: `python main.py COMMAND` (or the installed `momentum`). The commands live in
cli/, one module per side of the product; importing them registers them on the group."""
from __future__ import annotations

from cli import (alerts, backtest, dashboard, data, deploy, learn, operator, options,  # noqa: F401 - registers
                 reports, research, schedule)  # noqa: F401
from cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The installed `momentum` command."""
    cli(prog_name="momentum")


if __name__ == "__main__":
    cli(prog_name="main.py")
