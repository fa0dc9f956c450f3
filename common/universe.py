"""The cap-tiered stock universe: `data/universe.json` = {"symbols": {"large": [...], "mid": [...], "small": [...]}}.

Loading validates strictly (exact keys, symbol format, no duplicates anywhere) and fails with one line naming the
file and the problem. `build_universe` derives a universe from data: by median daily dollar volume (terciles) or by
market capitalisation (> $10B large, $2-10B mid, < $2B small).
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import ConfigError

log = logging.getLogger(__name__)

CAPS = ("large", "mid", "small")
SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
LARGE_CAP_MIN = 10e9
MID_CAP_MIN = 2e9
DOLLAR_VOLUME_ROWS = 250  # about a year of sessions: recent liquidity, not the liquidity of years ago


@dataclass
class Universe:
    caps: dict[str, list[str]]
    _cap_by_symbol: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # First listing wins, matching the order in which symbols("all") walks the caps.
        self._cap_by_symbol = {}
        for name in reversed(CAPS):
            self._cap_by_symbol.update({symbol: name for symbol in self.caps.get(name, [])})

    def symbols(self, cap: str) -> list[str]:
        """The symbols of one cap, or of all caps ("all": large, then mid, then small)."""
        if cap == "all":
            return [symbol for name in CAPS for symbol in self.caps.get(name, [])]
        if cap not in CAPS:
            raise ConfigError(f"--cap: unknown cap {cap!r} (use large, mid, small or all)")
        return list(self.caps.get(cap, []))

    def cap_of(self, symbol: str) -> str | None:
        """The cap a symbol belongs to, or None when it is not in the universe."""
        return self._cap_by_symbol.get(symbol)


def load_universe(path: str | Path) -> Universe:
    """Read and validate a universe file; any problem is one ConfigError line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: universe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read universe file ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return Universe(_validated_caps(path, document))


def _validated_caps(path: Path, document: object) -> dict[str, list[str]]:
    if not isinstance(document, dict) or set(document) != {"symbols"}:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise ConfigError(f"{path}: expected an object with exactly the key \"symbols\" (found {found})")
    tiers = document["symbols"]
    if not isinstance(tiers, dict):
        raise ConfigError(f"{path}: \"symbols\" must be an object with keys large, mid, small")
    unknown = sorted(set(tiers) - set(CAPS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} in \"symbols\" (allowed: large, mid, small)")
    caps: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for cap in CAPS:
        caps[cap] = _validated_tier(path, cap, tiers.get(cap, []), seen)
    if not seen:
        raise ConfigError(f"{path}: the universe has no symbols")
    return caps


def _validated_tier(path: Path, cap: str, entries: object, seen: dict[str, str]) -> list[str]:
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: \"{cap}\" must be a list of symbols")
    for symbol in entries:
        if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
            raise ConfigError(f"{path}: invalid symbol {symbol!r} in {cap} (expected e.g. AAPL or BRK.B)")
        if symbol in seen:
            where = cap if seen[symbol] == cap else f"{seen[symbol]} and {cap}"
            raise ConfigError(f"{path}: duplicate symbol {symbol!r} ({where})")
        seen[symbol] = cap
    return list(entries)


def write_universe(universe: Universe, path: str | Path) -> None:
    """Write atomically (temp file + rename), so a scan never reads half a universe."""
    path = Path(path)
    lines = ["{", '  "symbols": {']
    for i, cap in enumerate(CAPS):
        symbols = universe.caps.get(cap, [])
        comma = "," if i < len(CAPS) - 1 else ""
        lines.append(f'    "{cap}": [' + _wrapped(symbols) + f"]{comma}")
    lines += ["  }", "}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as out:
        out.write("\n".join(lines))
    os.replace(out.name, path)


def _wrapped(symbols: list[str], per_line: int = 12) -> str:
    """A symbol list a person can read and diff: a dozen quoted symbols per line."""
    if not symbols:
        return ""
    quoted = [json.dumps(s) for s in symbols]
    rows = [", ".join(quoted[i:i + per_line]) for i in range(0, len(quoted), per_line)]
    return "\n      " + ",\n      ".join(rows) + "\n    "


def build_universe(source_file: str | Path, by: str) -> Universe:
    """A universe from data: by="dollar-volume" (long-format bars file) or by="market-cap" (constituents file)."""
    if by == "dollar-volume":
        return _by_dollar_volume(Path(source_file))
    if by == "market-cap":
        return _by_market_cap(Path(source_file))
    raise ConfigError(f"--by: unknown method {by!r} (use dollar-volume or market-cap)")


def _read_table(path: Path, usecols: list[str] | None = None, nrows: int | None = None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, usecols=usecols, nrows=nrows)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    except ValueError as exc:  # usecols naming a column the file does not have
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None


def _by_dollar_volume(path: Path) -> Universe:
    """Median daily dollar volume over each symbol's last rows, ranked and split into three equal tiers."""
    header = _read_table(path, nrows=0).columns
    missing = [c for c in ("date", "symbol", "close", "volume") if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} for --by dollar-volume")
    frame = _read_table(path, usecols=["date", "symbol", "close", "volume"])
    frame = frame[frame["symbol"].astype(str).str.match(SYMBOL_PATTERN.pattern)]
    frame = frame.sort_values(["symbol", "date"], kind="stable")
    recent = frame.groupby("symbol", sort=False).tail(DOLLAR_VOLUME_ROWS)
    dollar_volume = (recent["close"] * recent["volume"]).groupby(recent["symbol"]).median().dropna()
    ranked = dollar_volume.sort_values(ascending=False, kind="stable").index.tolist()
    if len(ranked) < len(CAPS):
        raise ConfigError(f"{path}: only {len(ranked)} symbol(s) with usable prices and volumes")
    tiers = np.array_split(np.array(ranked, dtype=object), len(CAPS))
    log.info("universe by dollar volume from %s: %d symbols", path, len(ranked))
    return Universe({cap: [str(s) for s in tier] for cap, tier in zip(CAPS, tiers)})


def _column(path: Path, columns: pd.Index, candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ConfigError(f"{path}: no {what} column (expected one of {', '.join(candidates)})")


def _by_market_cap(path: Path) -> Universe:
    """Tiers by market capitalisation; rows without a cap or with a malformed symbol are skipped and counted."""
    frame = _read_table(path)
    symbol_col = _column(path, frame.columns, ("Symbol", "symbol", "ticker", "Ticker"), "symbol")
    cap_col = _column(path, frame.columns, ("Market Cap", "market_cap", "MarketCap", "marketcap"), "market cap")
    symbols = frame[symbol_col].astype(str).str.strip()
    market_cap = pd.to_numeric(frame[cap_col], errors="coerce")
    usable = symbols.str.match(SYMBOL_PATTERN.pattern) & market_cap.notna() & (market_cap > 0)
    usable &= ~symbols.duplicated(keep="first")
    skipped = int((~usable).sum())
    if skipped:
        log.warning("%s: %d row(s) skipped (no market cap, bad or repeated symbol)", path, skipped)
    caps_by_symbol = market_cap[usable].set_axis(symbols[usable]).sort_values(ascending=False, kind="stable")
    tiers = {
        "large": caps_by_symbol[caps_by_symbol > LARGE_CAP_MIN].index.tolist(),
        "mid": caps_by_symbol[(caps_by_symbol >= MID_CAP_MIN) & (caps_by_symbol <= LARGE_CAP_MIN)].index.tolist(),
        "small": caps_by_symbol[caps_by_symbol < MID_CAP_MIN].index.tolist(),
    }
    log.info("universe by market cap from %s: %d large, %d mid, %d small, %d skipped", path,
             len(tiers["large"]), len(tiers["mid"]), len(tiers["small"]), skipped)
    return Universe(tiers)
