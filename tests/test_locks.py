import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from common.errors import ScanLocked
from common.locks import scan_lock

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from common.locks import scan_lock
    with scan_lock({path!r}):
        print("held", flush=True)
        time.sleep(60)
""")


def _hold_in_child(root, path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(root), path=str(path))],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_holder_is_refused_with_exit_75(tmp_path):
    journal = tmp_path / "trades.db"
    with scan_lock(journal):
        with pytest.raises(ScanLocked) as err:
            with scan_lock(journal):
                pass
    assert err.value.exit_code == 75
    assert str(os.getpid()) in str(err.value)


def test_lock_is_per_journal(tmp_path):
    with scan_lock(tmp_path / "a.db"):
        with scan_lock(tmp_path / "b.db"):
            pass


def test_killed_holder_never_leaves_the_lock_stuck(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    journal = tmp_path / "trades.db"
    child = _hold_in_child(root, journal)
    try:
        with pytest.raises(ScanLocked, match=str(child.pid)):
            with scan_lock(journal):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.05)
    with scan_lock(journal):
        pass


COMMAND_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from common.locks import command_lock
    with command_lock({path!r}, {command!r}):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("args", [("monitor", "--dry-run"), ("jobs", "update-tracking"), ("reconcile",),
                                  ("rebalance", "--universe", "large", "--dry-run")], ids=lambda a: a[0])
def test_a_command_whose_lock_another_process_holds_exits_75_and_does_nothing(private_journal, args):
    from click.testing import CliRunner

    from common.locks import holder
    from conftest import ROOT
    from main import cli

    journal = private_journal / "trades.db"
    child = subprocess.Popen([sys.executable, "-c", COMMAND_HOLDER.format(root=str(ROOT), path=str(journal),
                                                                          command=args[0])],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert holder(journal, args[0]) == str(child.pid)
        result = CliRunner().invoke(cli, ["--asof", "2024-06-14T10:30", *args])
        assert result.exit_code == 75, result.output
        assert f"another {args[0]} is running on this journal (pid {child.pid}); skipped" in result.output
    finally:
        child.kill()
        child.wait()
    assert holder(journal, args[0]) is None  # the kernel released the dead holder's lock
    result = CliRunner().invoke(cli, ["--asof", "2024-06-14T10:30", *args])
    assert result.exit_code == 0, result.output
