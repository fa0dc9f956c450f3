"""The check that a test run writes nothing into the checkout (tests/checkout_writes.py, tests/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import checkout_writes
from conftest import ROOT


def git(folder, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def test_new_untracked_and_ignored_files_are_found_and_tool_caches_are_not(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("logs/\ndata/*.db\n")
    (tmp_path / "kept.py").write_text("x = 1\n")
    git(tmp_path, "add", ".gitignore", "kept.py")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "momentum.jsonl").write_text("{}\n")
    before = checkout_writes.snapshot(tmp_path)
    assert before is not None and sorted(before) == ["logs/momentum.jsonl"]
    (tmp_path / "logs" / "momentum.jsonl").write_text("{}\n{}\n")  # appended to: a command run by hand meanwhile
    (tmp_path / "logs" / "trades_2016-11-09.csv").write_text("id\n")  # an audit CSV in an ignored folder
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trades.db").write_bytes(b"journal")
    (tmp_path / "stray.csv").write_text("untracked\n")
    for cache in ("__pycache__", ".pytest_cache", ".ruff_cache"):
        (tmp_path / "logs" / cache).mkdir()
        (tmp_path / "logs" / cache / "entry").write_text("tool cache")
    (tmp_path / "kept.py").write_text("x = 2\n")  # a tracked file: someone's edit, not a test's output
    assert checkout_writes.written(before, checkout_writes.snapshot(tmp_path)) == [
        "data/trades.db", "logs/trades_2016-11-09.csv", "stray.csv"]


def test_outside_a_git_checkout_there_is_nothing_to_compare(tmp_path):
    assert checkout_writes.snapshot(tmp_path / "no-such-folder") is None


def test_a_test_without_its_own_folders_writes_to_temporary_ones():
    from config import load_config
    from ports import market_sources

    for settings in (load_config(), load_config(environ={})):  # from the environment, and from the defaults alone
        for path in (settings.momentum_db, settings.sim_broker_path(), settings.log_dir, settings.cache_dir):
            assert not Path(path).resolve().is_relative_to(ROOT), path
    assert not market_sources.default_cache_dir().resolve().is_relative_to(ROOT)
    assert load_config().universe_file == str(ROOT / "data" / "universe.json")  # the shipped universe is read


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_run_that_writes_into_the_checkout_fails_naming_the_file(tmp_path, workers):
    probe = ROOT / "logs" / f"probe-{uuid.uuid4().hex}.txt"
    (tmp_path / "test_writes.py").write_text(
        "from pathlib import Path\n\n"
        f"def test_escapes():\n    Path({str(probe)!r}).parent.mkdir(exist_ok=True)\n"
        f"    Path({str(probe)!r}).write_text('oops')\n\n"
        "def test_stays_inside(tmp_path):\n    (tmp_path / 'fine.txt').write_text('fine')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "MOMENTUM_TEST_CHECKOUT": "session"}
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                              *workers, str(tmp_path / "test_writes.py")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        probe.unlink(missing_ok=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 passed" in run.stdout and "the tests wrote into the checkout" in run.stdout
    assert f"  {probe.relative_to(ROOT)}" in run.stdout.splitlines()
