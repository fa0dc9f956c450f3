"""Renders the dashboard's pages: Jinja2 templates (ports/templates/), charts drawn here as inline SVG, one HTML file
that works offline (no CDN, no script), replaced atomically so a browser never reads half a page.

Everything from the data is escaped (the environment autoescapes; chart labels are escaped here) and every text
passes config.redact on its way out, so a symbol, a model's reason or a Telegram message containing markup shows as
text and no secret reaches a page. Jinja2 is imported only when a page is written: other commands never pay for it.
"""
from __future__ import annotations

import html
import math
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from common import render
from config import redact

TEMPLATES = Path(__file__).resolve().parent / "templates"
WIDTH = 960  # the viewBox of a full-width chart; half-width ones are drawn narrower so their text stays legible
HALF = 560
MARGIN = {"left": 64, "right": 14, "top": 26, "bottom": 28}
SERIES_CLASSES = ("s0", "s1", "s2", "s3", "s4", "s5")


# --- writing ------------------------------------------------------------------------------------------------------

def write_atomically(path: Path, text: str) -> Path:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader sees the old page or the new
    one, never a half-written file, and a crash leaves no partial page behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_dashboard(path: Path, data: dict[str, Any]) -> Path:
    return write_atomically(path, render_page("dashboard.html", data, charts=dashboard_charts(data)))


def write_tearsheet(path: Path, data: dict[str, Any]) -> Path:
    return write_atomically(path, render_page("tearsheet.html", data, charts=performance_charts(data["performance"])))


def write_study(path: Path, data: dict[str, Any]) -> Path:
    return write_atomically(path, render_page("study.html", data, charts=study_charts(data)))


# --- templates ----------------------------------------------------------------------------------------------------

def _finalize(value: Any) -> Any:
    """Every value printed by a template: None as a dash, text with any secret masked (markup built here, the
    charts, is left as it is: its labels were escaped and redacted when it was drawn)."""
    if value is None:
        return "-"
    if type(value) is str and len(value) >= 4:  # a Markup is a str subclass; shorter text holds no secret
        return redact(value)
    return value


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment: autoescaping, strict about names a template misspells, and with its compiled
    templates kept in Jinja2's per-user cache folder, so a cron run loads them instead of compiling them again."""
    import jinja2

    try:
        compiled = jinja2.FileSystemBytecodeCache()  # <tmp>/_jinja2-cache-<uid>, private to the user
    except Exception:  # noqa: BLE001 - no usable cache folder: compile every time, a few tens of ms
        compiled = None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, finalize=_finalize,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             bytecode_cache=compiled)
    env.filters.update(money=render.money, pct=_pct, frac=_fraction, num=_num, sign=_sign, when=when, heat=heat,
                       setting=_setting)
    return env


def render_page(template: str, data: dict[str, Any], **extra: Any) -> str:
    return environment().get_template(template).render(**data, **extra)


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: Any, digits: int = 2) -> str:
    return render.pct(value, digits) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _fraction(value: Any, digits: int = 1, signed: bool = True) -> str:
    """A fraction the journal stores (0.0123: a candidate's change, gap and ROC, SPY's change, breadth) as percent."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return _pct(value * 100, digits) if signed else f"{value * 100:.{digits}f}%"


def _setting(value: Any) -> Any:
    """A parameter's value as people read it: 7.939321535 as 7.939 (four significant digits), the rest as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _sign(value: Any) -> str:
    """The CSS class of a figure that is good or bad by its sign."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        return ""
    return "pos" if value > 0 else "neg"


def when(text: Any) -> str:
    """A journal timestamp (ISO, UTC) as New York time; anything else as it is."""
    if isinstance(text, datetime):
        return render.ny_time(text)
    if not text:
        return "-"
    return _when_text(str(text))


@lru_cache(maxsize=8192)
def _when_text(text: str) -> str:
    """when() of a text timestamp (a backtest's thousands of trades share a few hundred moments)."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    return render.ny_time(moment) if moment.tzinfo else str(text)


def heat(value: Any, scale: float = 5.0) -> str:
    """The background of a heat-map cell: green for gains, red for losses, deeper with size (`scale` % is full)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    alpha = min(1.0, abs(value) / scale) * 0.75 + 0.08
    colour = "22, 163, 74" if value >= 0 else "220, 38, 38"
    return f"background: rgba({colour}, {alpha:.2f})"


# --- charts: inline SVG -------------------------------------------------------------------------------------------

def dashboard_charts(data: dict[str, Any]) -> dict[str, str]:
    return performance_charts(data["performance"])


def performance_charts(perf: dict[str, Any]) -> dict[str, str]:
    """Equity against SPY, drawdown, daily P&L and each system's realised P&L, as SVG (empty when no data)."""
    days = perf["days"]
    charts = {
        "equity": line_chart(days, [("account", perf["account_pct"]), ("SPY total return", perf["spy_pct"])],
                             title="Cumulative return vs SPY", unit="%", name="equity"),
        "drawdown": line_chart(days, [("drawdown", perf["drawdown_pct"])], title="Drawdown from the peak",
                               unit="%", fill=True, height=220, name="drawdown", classes=("neg",), width=HALF),
        "daily_pnl": bar_chart(days, perf["day_pnl"], title="Daily P&L", height=220, name="daily-pnl", width=HALF),
    }
    systems = perf["systems"]
    if systems["curves"]:
        charts["systems"] = line_chart(systems["days"], list(systems["curves"].items()),
                                       title="Realised P&L by system (cumulative, by exit day)", unit="$",
                                       height=200, name="systems", legend=True)
    return charts


def study_charts(data: dict[str, Any]) -> dict[str, Any]:
    charts: dict[str, Any] = {"effects": []}
    default = (data.get("default") or {}).get("objective")
    for effect in data["effects"]:
        charts["effects"].append(scatter_chart(effect["points"], x_label=effect["name"], y_label=data["objective"],
                                               categories=effect["labels"], reference=default,
                                               name=f"effect-{effect['name']}"))
    curves = data.get("curves")
    if curves:
        charts["walk_forward"] = line_chart(curves["days"], list(curves["series"].items()),
                                            title="Walk-forward: test windows stitched (100 = start)", unit="",
                                            zero=False, name="walk-forward")
    return charts


def _markup(svg: str):
    from markupsafe import Markup

    return Markup(svg)


def _text(value: Any) -> str:
    return html.escape(redact(str(value)), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering low..high (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10) + 0.0)  # + 0.0: no '-0' label
        value += step
    return ticks


def _tick_label(value: float, unit: str) -> str:
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 or value == int(value) else (1 if magnitude >= 1 else 2)
    if unit == "$":
        return f"-${magnitude:,.{digits}f}" if value < 0 else f"${value:,.{digits}f}"
    return f"{value:,.{digits}f}{unit}"


class _Frame:
    """The plotting area of one chart: value and index to pixels, axes and labels. Lines run edge to edge; bars
    (`centred`) sit in the middle of a slot each, so a handful of days still shows whole bars."""

    def __init__(self, count: int, low: float, high: float, height: int, unit: str, *, width: int = WIDTH,
                 centred: bool = False):
        self.count, self.height, self.unit, self.width, self.centred = count, height, unit, width, centred
        self.x0, self.x1 = MARGIN["left"], width - MARGIN["right"]
        self.y0, self.y1 = height - MARGIN["bottom"], MARGIN["top"]
        span = high - low or abs(high) or 1.0
        self.low, self.high = (low, high) if high > low else (low - span / 2, high + span / 2)

    def x(self, index: float) -> float:
        if self.centred:
            return self.x0 + (self.x1 - self.x0) * (index + 0.5) / max(1, self.count)
        return self.x0 + (self.x1 - self.x0) * (index / (self.count - 1) if self.count > 1 else 0.5)

    def y(self, value: float) -> float:
        return self.y0 - (value - self.low) / (self.high - self.low) * (self.y0 - self.y1)

    def label_indexes(self, count: int) -> list[int]:
        """Evenly spaced indexes of the day labels, as many as fit without touching (about 120 px each)."""
        fits = max(2, int((self.x1 - self.x0) // 120))
        if count <= fits:
            return list(range(count))
        step = math.ceil((count - 1) / (fits - 1))
        picks = list(range(0, count, step))
        if (count - 1 - picks[-1]) * (self.x1 - self.x0) / (count - 1) < 120:
            picks.pop()  # too close to the last day's label, which is always shown
        return [*picks, count - 1]

    def grid(self, labels: Sequence[str]) -> list[str]:
        parts = []
        for tick in nice_ticks(self.low, self.high):
            y = self.y(tick)
            parts.append(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}"/>'
                         f'<text class="axis" x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f'{_text(_tick_label(tick, self.unit))}</text>')
        if labels:
            for i in self.label_indexes(len(labels)):
                edge = "start" if i == 0 else "end" if i == len(labels) - 1 else "middle"
                anchor = "middle" if self.centred else edge
                parts.append(f'<text class="axis" x="{self.x(i):.1f}" y="{self.height - 8}" '
                             f'text-anchor="{anchor}">{_text(labels[i])}</text>')
        return parts


def _svg(name: str, title: str, height: int, body: list[str], legend: Sequence[tuple[str, str]] = (),
         width: int = WIDTH) -> str:
    """The chart's frame: its title top left, the legend after it, the body drawn by the caller."""
    items = [f'<text class="title" x="{MARGIN["left"]}" y="16">{_text(title)}</text>']
    x = MARGIN["left"] + 7.6 * len(title) + 24
    for label, css in legend:
        items.append(f'<rect class="{css} key" x="{x:.0f}" y="7" width="12" height="10"/>'
                     f'<text class="legend" x="{x + 16:.0f}" y="16">{_text(label)}</text>')
        x += 34 + 7.5 * len(str(label))
    return (f'<svg class="chart" id="chart-{_text(name)}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_text(title)}" xmlns="http://www.w3.org/2000/svg"><title>{_text(title)}</title>'
            + "".join(body) + "".join(items) + "</svg>")


def _empty(name: str, title: str) -> str:
    return _markup(f'<p class="empty" id="chart-{_text(name)}">{_text(title)}: no data yet (the nightly '
                   "daily-snapshot job writes one point a session)</p>")


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def line_chart(days: Sequence[str], series: Sequence[tuple[str, Sequence[Any]]], *, title: str, unit: str = "%",
               height: int = 260, fill: bool = False, zero: bool = True, name: str = "line",
               classes: Sequence[str] = SERIES_CLASSES, width: int = WIDTH, legend: bool | None = None):
    """Lines over a shared day axis (a gap where a value is missing); `fill` shades down to zero (drawdown). The
    legend names the series when there are several (or when `legend` says so)."""
    values = [v for _, points in series for v in _finite(points)]
    if len(days) < 2 or not values:
        return _empty(name, title)
    low, high = min(values), max(values)
    if zero:
        low, high = min(low, 0.0), max(high, 0.0)
    frame = _Frame(len(days), low, high, height, unit, width=width)
    body = frame.grid(days)
    if zero and frame.low < 0 < frame.high:
        body.append(f'<line class="zero" x1="{frame.x0}" x2="{frame.x1}" y1="{frame.y(0):.1f}" '
                    f'y2="{frame.y(0):.1f}"/>')
    keys = []
    for number, (label, points) in enumerate(series):
        css = classes[number % len(classes)]
        path, pen = [], "M"
        for i, value in enumerate(points):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                pen = "M"
                continue
            path.append(f"{pen}{frame.x(i):.1f},{frame.y(value):.1f}")
            pen = "L"
        if not path:
            continue
        line = "".join(path)
        if fill:
            base = frame.y(min(max(0.0, frame.low), frame.high))
            start, end = path[0][1:].split(",")[0], path[-1][1:].split(",")[0]
            body.append(f'<path class="area {css}" d="{line}L{end},{base:.1f}L{start},{base:.1f}Z"/>')
        body.append(f'<path class="line {css}" d="{line}"/>')
        keys.append((label, css))
    shown = legend if legend is not None else len(series) > 1
    return _markup(_svg(name, title, height, body, keys if shown else [], width))


def bar_chart(days: Sequence[str], values: Sequence[Any], *, title: str, height: int = 180, name: str = "bars",
              width: int = WIDTH):
    """One bar a day from zero, gains green and losses red (drawn as two paths, so years of days stay small)."""
    finite = _finite(values)
    if len(days) < 2 or not finite:
        return _empty(name, title)
    frame = _Frame(len(days), min(min(finite), 0.0), max(max(finite), 0.0), height, "$", width=width, centred=True)
    body = frame.grid(days)
    bar = min(24.0, max(1.0, (frame.x1 - frame.x0) / len(days) * 0.8))
    zero = frame.y(0)
    strokes: dict[str, list[str]] = {"pos": [], "neg": []}
    for i, value in enumerate(values):
        if isinstance(value, (int, float)) and math.isfinite(value) and value != 0:
            strokes["pos" if value > 0 else "neg"].append(f"M{frame.x(i):.1f},{zero:.1f}V{frame.y(value):.1f}")
    for css, parts in strokes.items():
        if parts:
            body.append(f'<path class="bar {css}" stroke-width="{bar:.1f}" d="{"".join(parts)}"/>')
    body.append(f'<line class="zero" x1="{frame.x0}" x2="{frame.x1}" y1="{zero:.1f}" y2="{zero:.1f}"/>')
    return _markup(_svg(name, title, height, body, width=width))


def scatter_chart(points: Sequence[tuple[float, float]], *, x_label: str, y_label: str,
                  categories: Sequence[str] | None = None, reference: float | None = None, name: str = "scatter",
                  height: int = 260, width: int = HALF):
    """Each trial's value of one parameter against its objective; the defaults' objective as a dashed line."""
    title = f"{y_label} by {x_label}"
    if not points:
        return _empty(name, title)
    ys = [y for _, y in points] + ([reference] if reference is not None else [])
    xs = [x for x, _ in points]
    pad = (max(ys) - min(ys)) * 0.06 or 1.0  # room for the dots at the top and bottom
    frame = _Frame(2, min(ys) - pad, max(ys) + pad, height, "", width=width)
    x_low, x_high = (-0.5, len(categories) - 0.5) if categories else (min(xs), max(xs))
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if not categories:
        x_low, x_high = x_low - (x_high - x_low) * 0.04, x_high + (x_high - x_low) * 0.04
    to_x = lambda x: frame.x0 + (x - x_low) / (x_high - x_low) * (frame.x1 - frame.x0)  # noqa: E731
    body = frame.grid([])
    ticks = list(enumerate(categories)) if categories else [(t, _tick_label(t, "")) for t in nice_ticks(x_low, x_high)]
    for x, label in ticks:
        body.append(f'<text class="axis" x="{to_x(x):.1f}" y="{height - 8}" text-anchor="middle">{_text(label)}'
                    "</text>")
    if reference is not None:
        body.append(f'<line class="reference" x1="{frame.x0}" x2="{frame.x1}" y1="{frame.y(reference):.1f}" '
                    f'y2="{frame.y(reference):.1f}"/>')
    for x, y in points:
        body.append(f'<circle class="dot s0" cx="{to_x(x):.1f}" cy="{frame.y(y):.1f}" r="4"/>')
    legend = [("defaults", "reference")] if reference is not None else []
    return _markup(_svg(name, title, height, body, legend, width))
