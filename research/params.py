"""The parameters of a study: `--param NAME=SPEC`, where NAME is a strategy setting (an .env variable in lower case
or a runtime setting's key, config.strategy_setting) and SPEC is a range `LOW:HIGH[:STEP]` or a list `A,B,C`.

Every value a study may try is checked by the setting's own parser before anything runs, so a bad name, an
out-of-range end or an unknown choice is one line and exit 2, not a failed trial an hour later."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError
from config import StrategySetting, strategy_setting

OBJECTIVES = {
    # name: (how it is read from a trial's metrics, what it means)
    "sharpe": "annualised Sharpe ratio of daily returns (no risk-free rate)",
    "sortino": "annualised Sortino ratio of daily returns",
    "cagr": "compound annual growth rate, %",
    "calmar": "CAGR over the absolute max drawdown",
    "total_return": "total return over the window, %",
    "max_drawdown": "max drawdown, % (negative: closer to 0 is better)",
}


@dataclass(frozen=True)
class Param:
    setting: StrategySetting
    choices: tuple[Any, ...] = ()  # a list: every value as the setting parses it
    low: float | None = None  # a range: both ends included
    high: float | None = None
    step: float | None = None

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def is_list(self) -> bool:
        return bool(self.choices)

    def distribution(self):
        """Optuna's description of the values (imported here: only a study loads Optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.is_list:
            return CategoricalDistribution(list(self.choices))
        if self.setting.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), step=self.step)

    def spec(self) -> str:
        if self.is_list:
            return ",".join(str(value) for value in self.choices)
        return f"{_num(self.low)}:{_num(self.high)}" + (f":{_num(self.step)}" if self.step else "")


def _num(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""


def parse_param(text: str) -> Param:
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"--param: expected NAME=LOW:HIGH[:STEP] or NAME=A,B,C, got {text!r}")
    setting = strategy_setting(name)
    spec = spec.strip()
    if ":" in spec:
        if setting.kind not in ("int", "float"):
            raise ConfigError(f"--param {setting.name}: a {setting.kind} setting takes a list (A,B,C), not a range")
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--param {setting.name}: expected LOW:HIGH or LOW:HIGH:STEP, got {spec!r}")
        try:
            low, high, *step = (float(part) for part in parts)
        except ValueError:
            raise ConfigError(f"--param {setting.name}: range ends must be numbers, got {spec!r}") from None
        if setting.kind == "int" and any(value != int(value) for value in (low, high, *step)):
            raise ConfigError(f"--param {setting.name}: an integer setting takes whole numbers, got {spec!r}")
        for end in (low, high):  # both ends within the setting's own limits
            setting.parse(str(int(end)) if setting.kind == "int" else repr(end))
        if not low < high:
            raise ConfigError(f"--param {setting.name}: LOW must be below HIGH, got {spec!r}")
        if step and (step[0] <= 0 or step[0] > high - low):
            raise ConfigError(f"--param {setting.name}: STEP must be above 0 and at most HIGH - LOW, got {spec!r}")
        return Param(setting, low=low, high=high, step=step[0] if step else None)
    values = [part.strip() for part in spec.split(",")]
    if any(not value for value in values):
        raise ConfigError(f"--param {setting.name}: empty value in {spec!r}")
    parsed = tuple(dict.fromkeys(setting.parse(value) for value in values))  # in order, each once
    return Param(setting, choices=parsed)


def parse_params(texts: tuple[str, ...] | list[str]) -> list[Param]:
    params = [parse_param(text) for text in texts]
    names = [param.name for param in params]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise ConfigError(f"--param {duplicate}: given twice")
    if not params:
        raise ConfigError("research: give at least one --param NAME=SPEC")
    return params


def is_grid(params: list[Param]) -> bool:
    """Every parameter a list: the study tries every combination (a grid) instead of sampling."""
    return all(param.is_list for param in params)


def grid(params: list[Param]) -> list[dict[str, Any]]:
    return [dict(zip([p.name for p in params], values)) for values in itertools.product(*(p.choices for p in params))]


def assignments(values: dict[str, Any]) -> list[str]:
    """The values as `backtest --set` arguments."""
    return [f"{name}={_text(value)}" for name, value in values.items()]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return f"{value:g}"
    return str(value)


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise ConfigError(f"--objective: unknown objective {name!r} (one of {', '.join(OBJECTIVES)})")
    return name


def objective_value(name: str, metrics: dict[str, Any]) -> float | None:
    """The objective read from a trial's metrics block (metrics.json's "metrics"); None when undefined (a Sharpe
    with no trades, a Calmar with no drawdown)."""
    if name == "calmar":
        cagr, drawdown = metrics.get("cagr_pct"), metrics.get("max_drawdown_pct")
        return cagr / abs(drawdown) if cagr is not None and drawdown else None
    key = {"sharpe": "sharpe", "sortino": "sortino", "cagr": "cagr_pct", "total_return": "total_return_pct",
           "max_drawdown": "max_drawdown_pct"}[name]
    value = metrics.get(key)
    return float(value) if value is not None and value == value else None
