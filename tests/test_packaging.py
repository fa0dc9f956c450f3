"""The project as a newcomer installs it: a version, an installable `momentum` command, and a module list that
cannot drift from the files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]


def test_every_module_and_package_is_packaged_and_nothing_else():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert sorted(setuptools["py-modules"]) == sorted(path.stem for path in ROOT.glob("*.py"))
    packages = sorted(".".join(init.parent.relative_to(ROOT).parts) for init in ROOT.glob("**/__init__.py")
                      if not {"tests", "bench", "build"} & set(init.relative_to(ROOT).parts))
    assert sorted(setuptools["packages"]) == packages


def test_runtime_requirements_are_what_the_product_imports():
    ranges = [line.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-")
              for line in (ROOT / "requirements.in").read_text().splitlines() if line and not line.startswith("#")]
    assert "pytest" not in ranges and "freezegun" not in ranges and "requests-mock" not in ranges
    assert "jumpmodels" not in ranges


def test_version_from_a_checkout():
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"momentum-agent {VERSION}"


@pytest.mark.slow
def test_installed_momentum_command_runs_a_scan_from_its_own_home(tmp_path):
    # a copy of what the distribution is built from, so the build leaves nothing in the checkout
    source = tmp_path / "source"
    source.mkdir()
    for name in PYPROJECT["tool"]["setuptools"]["py-modules"]:
        shutil.copy2(ROOT / f"{name}.py", source)
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        folder = source.joinpath(*package.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        for module in ROOT.joinpath(*package.split(".")).glob("*.py"):
            shutil.copy2(module, folder)
    for package, patterns in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        for pattern in patterns:
            for data in ROOT.joinpath(*package.split(".")).glob(pattern):
                target = source.joinpath(*package.split("."), data.relative_to(ROOT.joinpath(*package.split("."))))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(data, target)
    for name in ("pyproject.toml", "requirements.in", "README.md"):
        shutil.copy2(ROOT / name, source)
    (source / "data").mkdir()
    shutil.copy2(ROOT / "data" / "universe.json", source / "data")

    # a scratch environment that borrows this one's packages (the dependencies and the build backend)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--no-index", str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MOMENTUM_", "UNIVERSE_"))}
    env["MOMENTUM_HOME"] = str(home)
    momentum = venv / "bin" / "momentum"
    version = subprocess.run([str(momentum), "--version"], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"momentum-agent {VERSION}"

    scan = subprocess.run([str(momentum), "--asof", "2024-06-14T11:00", "scan", "--cap", "small", "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert scan.returncode == 0, scan.stderr
    assert scan.stdout.startswith("mode: SIM")
    assert "\nsmall: " in scan.stdout  # the universe that ships with the product was scanned
    assert (home / "data" / "trades.db").exists()  # the journal is in the command's home, not in site-packages
    assert "<html" in (home / "data" / "dashboard" / "index.html").read_text()  # the templates were installed
    assert not (Path(purelib) / "data").exists()


def test_momentum_home_holds_the_default_paths_and_env_file(tmp_path, monkeypatch):
    import config

    monkeypatch.setenv("MOMENTUM_HOME", str(tmp_path))
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\n")
    settings = config.load_config(environ={})
    assert Path(settings.momentum_db) == tmp_path / "data" / "trades.db"
    assert Path(settings.log_dir) == tmp_path / "logs"
    assert settings.log_level == "DEBUG"  # read from the home's .env
    assert Path(settings.universe_file) == ROOT / "data" / "universe.json"  # the shipped one, until the home has one
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "universe.json").write_text("{}")
    assert Path(config.load_config(environ={}).universe_file) == tmp_path / "data" / "universe.json"
