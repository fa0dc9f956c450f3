"""The files that start the product on a server, generated as text from two paths: a crontab and systemd units.

Only two commands are ever started, both every minute: `main.py tick`, which runs whatever core/schedule.py says is
due (New York times from the NYSE calendar, so neither the server's time zone nor cron's CRON_TZ support matters,
and a tick that finds another one running exits 75 quietly), and `main.py bot poll` (Telegram commands and alerts a
run missed). Both start through the project's own interpreter (the virtualenv's python), never whatever `python3`
is on cron's PATH. The copies shipped with the code (crontab.txt, deploy/) are this module's output for SHIPPED_HOME
and SHIPPED_PYTHON; tests/test_crontab.py keeps them equal, so they cannot drift from what the command writes.

A deployment that is not the checkout's defaults (a MOMENTUM_HOME, a --db, --data, --market, --broker or --universe
given to `deploy`) is a Launch: the files set the same variables and pass the same global options to both commands,
so the schedule trades the journal the operator set up rather than the checkout's data/trades.db.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from common.errors import ConfigError

SHIPPED_HOME = "/opt/momentum-agent"
SHIPPED_PYTHON = "/opt/momentum-agent/.venv/bin/python"  # `python3 -m venv .venv` inside the checkout
CRON_LOG = "logs/cron.log"
EXIT_LOCKED = 75  # what a tick exits with when another tick is running: not a failure
# name -> (command line after main.py, what it does)
JOBS: dict[str, tuple[tuple[str, ...], str]] = {
    "tick": (("tick",), "run what the schedule says is due"),
    "bot": (("bot", "poll"), "answer Telegram commands and deliver missed alerts"),
}
EVERY_MINUTE = "*-*-* *:*:00"  # systemd calendar: second 0 of every minute, the same in any time zone
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNIT_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")


def _check_path(option: str, path: str) -> None:
    """Paths must be absolute and on one line: cron and systemd both read a line per setting."""
    if not path.startswith("/"):
        raise ConfigError(f"{option}: expected an absolute path, got {path!r}")
    if _CONTROL.search(path) or path != path.strip():
        raise ConfigError(f"{option}: a path with control characters or surrounding blanks cannot be written, "
                          f"got {path!r}")


@dataclass(frozen=True)
class Launch:
    """What every started command gets besides `main.py COMMAND` from the project folder: environment variables
    (MOMENTUM_HOME), global options placed before the command (("--db", "/abs/trades.db"), ...) and the folder of
    cron.log (None: logs/ in the project folder). Values are absolute paths or plain words, checked when written."""
    environment: tuple[tuple[str, str], ...] = ()
    options: tuple[str, ...] = ()
    log_dir: str | None = None

    def words(self) -> list[str]:
        """Every value the files will hold, for the checks of what cron and systemd can carry."""
        return [value for _, value in self.environment] + list(self.options) + [self.log_dir or ""]


NO_LAUNCH = Launch()


def _check_launch(launch: Launch, *, cron: bool) -> None:
    for name, _ in launch.environment:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise ConfigError(f"deploy: {name!r} is not an environment variable name")
    for word in launch.words():
        if _CONTROL.search(word):
            raise ConfigError(f"deploy: a value with control characters cannot be written, got {word!r}")
        if cron and "%" in word:
            raise ConfigError(f"deploy: a value with % cannot be written in a crontab (cron ends a command there), "
                              f"got {word!r}")
    if launch.log_dir is not None:
        _check_path("the log folder", launch.log_dir)


def _generated_by(command: str, home: str, python: str, user: str | None = None, launch: Launch = NO_LAUNCH) -> str:
    words = [*(f"{name}={shlex.quote(value)}" for name, value in launch.environment),
             "python", "main.py", *map(shlex.quote, launch.options), "deploy", command,
             *(["--out", "DIR"] if command == "systemd" else []),
             *map(shlex.quote, ["--home", home, "--python", python, *(["--user", user] if user else [])])]
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------------- cron

def crontab_text(home: str, python: str, launch: Launch = NO_LAUNCH) -> str:
    """A crontab starting tick and bot poll every minute from `home` with `python`, output appended to logs/cron.log
    (or cron.log in launch.log_dir), each with the launch's variables and global options.

    No CRON_TZ (Debian's and Ubuntu's cron ignore it): every minute is the same in every zone, and tick reads New York
    time itself. `mkdir -p logs` first, because logs/ is not in a fresh checkout and a redirection into a missing
    folder would stop the command before it starts. A % would end a cron command, so no path may hold one; the
    variables are assignments on the command line itself (cron's own VAR=value lines take no shell quoting)."""
    for option, path in (("--home", home), ("--python", python)):
        _check_path(option, path)
        if "%" in path:
            raise ConfigError(f"{option}: a path with % cannot be written in a crontab (cron ends a command there), "
                              f"got {path!r}")
    _check_launch(launch, cron=True)
    logs = shlex.quote(launch.log_dir) if launch.log_dir else "logs"
    cron_log = shlex.quote(launch.log_dir.rstrip("/") + "/cron.log") if launch.log_dir else CRON_LOG
    lines = [
        "# Momentum Agent: every minute, `main.py tick` runs whatever the product's schedule says is due (New York",
        "# time from the NYSE calendar, whatever this server's zone) and `main.py bot poll` answers Telegram.",
        f"# Generated by `{_generated_by('crontab', home, python, launch=launch)}`: regenerate, do not edit.",
        "# Install (replaces this user's crontab): `crontab THIS_FILE` or `python main.py deploy crontab | crontab -`.",
        "# Check: `crontab -l`, `python main.py schedule` (the planned runs in New York time and UTC), "
        f"{cron_log}.",
        "SHELL=/bin/sh",
        "",
    ]
    assignments = [f"{name}={shlex.quote(value)}" for name, value in launch.environment]
    for args, _ in JOBS.values():
        command = " ".join([*assignments, shlex.quote(python), "main.py", *map(shlex.quote, launch.options), *args])
        lines.append(f"* * * * * cd {shlex.quote(home)} && mkdir -p {logs} && {command} >> {cron_log} 2>&1")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- systemd

def _unit_value(path: str) -> str:
    """A path as a value systemd takes verbatim (WorkingDirectory=): % starts a specifier, so it is doubled."""
    return path.replace("%", "%%")


def _argument(word: str) -> str:
    """A word of ExecStart= after the executable, read back by systemd as `word`: % doubled (a specifier), $ doubled
    (a variable), and in double quotes with \\ and \\" escaped unless it is plainly safe."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _UNIT_SAFE.fullmatch(word) and "$" not in word:
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment(name: str, value: str) -> str:
    """An Environment= line setting `name` to `value`: quoted, % doubled (specifiers are expanded there too)."""
    text = f"{name}={value}".replace("%", "%%")
    return "Environment=" + ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def _executable(path: str) -> str:
    """The executable of ExecStart=: quoted when it has blanks, % doubled (a specifier); systemd refuses one whose path
    holds a quote or a backslash and substitutes no variables in it, so $ stays as it is."""
    if any(char in path for char in "\"'\\"):
        raise ConfigError(f"--python: systemd runs no executable whose path holds a quote or a backslash, got {path!r}")
    path = path.replace("%", "%%")
    return path if _UNIT_SAFE.fullmatch(path) else f'"{path}"'


def systemd_units(home: str, python: str, user: str | None = None, launch: Launch = NO_LAUNCH) -> dict[str, str]:
    """File name -> text of a oneshot service and its every-minute timer for tick and for bot poll, each service
    with the launch's variables (Environment=) and global options (launch.log_dir is not used: output goes to the
    journal).

    Exit 75 (another tick is running) counts as success; output goes to the journal, which journald rotates. The
    timers fire at second 0 of every minute (AccuracySec=1s, so they do not drift by up to a minute, systemd's
    default) and do not catch up missed minutes after a boot (Persistent=false): tick catches up itself, within each
    run's grace period. A timer never starts its service again while the last start is still running."""
    _check_path("--home", home)
    _check_path("--python", python)
    if user is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", user):
        raise ConfigError(f"--user: expected a user name, got {user!r}")
    _check_launch(launch, cron=False)
    generated = f"# Generated by `{_generated_by('systemd', home, python, user, launch)}`: regenerate, do not edit."
    install = ["# Install: copy the four momentum-* files to /etc/systemd/system, `systemctl daemon-reload`,",
               "# `systemctl enable --now momentum-tick.timer momentum-bot.timer`.",
               "# Check: `systemctl list-timers 'momentum-*'`, `journalctl -u momentum-tick`, `main.py schedule`."]
    units = {}
    for name, (args, purpose) in JOBS.items():
        service, timer = f"momentum-{name}.service", f"momentum-{name}.timer"
        command = " ".join([_executable(python), "main.py", *map(_argument, launch.options), *args])
        units[service] = "\n".join([
            f"# Momentum Agent: `main.py {' '.join(args)}` once ({purpose}), started every minute by {timer}.",
            generated,
            *install,
            *([] if user else ["# No User= line: a system unit runs as root; generate with --user NAME to run as it."]),
            "",
            "[Unit]",
            f"Description=Momentum Agent: {purpose}",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            *([f"User={user}"] if user else []),
            f"WorkingDirectory={_unit_value(home)}",
            *(_environment(name, value) for name, value in launch.environment),
            f"ExecStart={command}",
            f"SuccessExitStatus={EXIT_LOCKED}",
            "StandardOutput=journal",
            "StandardError=journal",
            f"SyslogIdentifier=momentum-{name}",
            "",
        ])
        units[timer] = "\n".join([
            f"# Momentum Agent: starts {service} at second 0 of every minute, whatever the server's time zone.",
            generated,
            *install,
            "",
            "[Unit]",
            f"Description=Momentum Agent: start {service} every minute",
            "",
            "[Timer]",
            f"OnCalendar={EVERY_MINUTE}",
            "AccuracySec=1s",
            "Persistent=false",
            f"Unit={service}",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ])
    return units


def shipped_files() -> dict[str, str]:
    """Path in the checkout -> text of the copies shipped with the code, for a checkout in /opt/momentum-agent."""
    files = {"crontab.txt": crontab_text(SHIPPED_HOME, SHIPPED_PYTHON)}
    files.update({f"deploy/{name}": text for name, text in systemd_units(SHIPPED_HOME, SHIPPED_PYTHON).items()})
    return files
