"""The file log: created by the first record, so a refused command leaves nothing; an unwritable folder is a warning."""
import json
import logging
import subprocess
import sys
from pathlib import Path

from common.logs import JsonLines, LazyFile

ROOT = Path(__file__).resolve().parents[1]


def test_the_log_file_and_its_folder_appear_with_the_first_record(tmp_path):
    path = tmp_path / "logs" / "momentum.jsonl"
    handler = LazyFile(path)
    handler.setFormatter(JsonLines())
    assert not path.parent.exists()
    handler.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "first %s", ("record",), None))
    handler.close()
    assert json.loads(path.read_text())["message"] == "first record"


def test_a_log_folder_that_cannot_be_made_is_one_warning_and_the_command_still_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MOMENTUM_HOME": str(tmp_path),
           "LOG_DIR": str(blocker / "logs"), "MOMENTUM_DB": str(tmp_path / "trades.db")}
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--asof", "2024-06-12T11:00", "scan", "--cap",
                             "small", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"warning: cannot write logs to {blocker / 'logs'} (Not a directory)") == 1
    assert "Traceback" not in result.stderr and "small:" in result.stdout
