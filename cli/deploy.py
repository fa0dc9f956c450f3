"""Command line of the files that start the product on a server: `deploy crontab` and `deploy systemd`.

Thin: check the two paths the files will hold (a project folder with main.py, an executable python), generate the
text (core/deploy.py) and print or write it. The defaults are this checkout and the interpreter running the command,
so run from the project's virtualenv the files start the product exactly as it was just started.

What the deploying command was given travels into the files (core.deploy.Launch): MOMENTUM_HOME when it is set, and
the global options given on the command line (--db, --data, --market, --broker, --universe) as absolute paths, since
cron and systemd start in the project folder. A schedule runs in real time, so deploying with --asof or MOMENTUM_ASOF
set is refused.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from cli.app import cli
from cli.options_check import nonempty_path
from common.errors import ConfigError
from core.deploy import Launch

PROJECT = Path(__file__).resolve().parent.parent  # the folder of main.py


def _home(home: str | None) -> str:
    path = Path(home).expanduser().resolve() if home else PROJECT
    if not (path / "main.py").is_file():
        raise ConfigError(f"--home {home or path}: no main.py there (expected the project folder)")
    return str(path)


def _python(python: str | None) -> str:
    """Absolute but not resolved: a virtualenv's python is a link to the system one, which would bypass the venv."""
    path = Path(os.path.expanduser(python)).absolute() if python else Path(sys.executable)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(f"--python {python or path}: not an executable file")
    return str(path)


# The global options a deployment carries (cli.app.GLOBAL_OPTIONS but --asof); the paths among them are made absolute.
CARRIED_OPTIONS = ("db", "data", "market", "broker", "universe")
PATH_OPTIONS = ("db", "market", "universe")


def _launch(ctx: click.Context) -> Launch:
    """What the deploying command was given, for the started commands to get the same (see the module's text)."""
    from config import home as configured_home

    root = ctx.find_root()
    config = root.obj.config
    asof = root.params.get("asof")
    if asof is not None:
        raise ConfigError(f"deploy: --asof {asof} would start every run at a simulated time; a schedule runs in real "
                          f"time, so leave --asof out")
    if config.momentum_asof:
        raise ConfigError(f"deploy: MOMENTUM_ASOF is set ({config.momentum_asof!r}); a schedule runs in real time, "
                          f"so unset it (environment or .env) before deploying")
    options: list[str] = []
    for name in CARRIED_OPTIONS:
        value = root.params.get(name)
        if value is None:
            continue
        value = value.strip()
        if name in PATH_OPTIONS:
            value = os.path.abspath(value)
        elif name == "data" and value.startswith("csv:"):
            value = "csv:" + os.path.abspath(value[4:].strip())
        options += [f"--{name}", value]
    environment: tuple[tuple[str, str], ...] = ()
    log_dir = None
    if os.environ.get("MOMENTUM_HOME", "").strip():
        environment = (("MOMENTUM_HOME", str(configured_home())),)
        log_dir = os.path.abspath(config.log_dir)  # cron.log beside the home's JSON log, where the cleanup rolls it
    return Launch(environment, tuple(options), log_dir)


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same folder, then a rename: systemd never reads half a unit."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # unit files are read by systemd and listed by users, like the ones it ships
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@cli.group(name="deploy")
def deploy_group() -> None:
    """Files that start the product every minute on a server (cron or systemd): `tick` and `bot poll`."""


HOME_HELP = "Project folder holding main.py [default: this one]."
PYTHON_HELP = "Interpreter to run it with [default: the one running this command, e.g. the virtualenv's]."


@deploy_group.command(name="crontab")
@click.option("--home", help=HOME_HELP)
@click.option("--python", help=PYTHON_HELP)
@click.pass_context
def crontab_command(ctx: click.Context, home: str | None, python: str | None) -> None:
    """Print a crontab running `main.py tick` and `main.py bot poll` every minute, output in logs/cron.log (the
    home's logs folder when MOMENTUM_HOME is set). MOMENTUM_HOME and the global options given (--db, --data, --market,
    --broker, --universe) are passed on to both. Install with `python main.py deploy crontab | crontab -` (replaces
    this user's crontab)."""
    from core.deploy import crontab_text

    launch = _launch(ctx)
    click.echo(crontab_text(_home(home), _python(python), launch), nl=False)


@deploy_group.command(name="systemd")
@click.option("--out", required=True, callback=nonempty_path,
              help="Folder to write the four unit files into (created if missing).")
@click.option("--home", help=HOME_HELP)
@click.option("--python", help=PYTHON_HELP)
@click.option("--user", help="User the services run as [default: none given, so root for system units].")
@click.pass_context
def systemd_command(ctx: click.Context, out: str, home: str | None, python: str | None, user: str | None) -> None:
    """Write momentum-tick and momentum-bot .service and .timer units into OUT: oneshot services started by timers
    at second 0 of every minute, output in the journal. MOMENTUM_HOME (Environment=) and the global options given
    (--db, --data, --market, --broker, --universe) are passed on to both. Install: copy them to /etc/systemd/system,
    then `systemctl daemon-reload && systemctl enable --now momentum-tick.timer momentum-bot.timer`."""
    from core.deploy import systemd_units

    launch = _launch(ctx)
    units = systemd_units(_home(home), _python(python), user, launch)
    folder = Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            _write_atomically(folder / name, text)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write the units ({err.strerror or err})") from None
    for name in units:
        click.echo(folder / name)
