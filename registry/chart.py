"""A server's series as one self-contained HTML page: four inline SVG charts.

Drawn on the server from the same series the metrics API returns, so the page needs nothing
from the network (no script, font or style sheet is fetched) and its request carries the
bearer token like any other (no token in a URL). A few lines of inline script count what the
browser actually laid out and set `data-drawn-points` / `data-drawn-length` on `<body>`,
which a headless browser can check.

`POLICY` allows that one script and the one style element, by hash, and nothing else (colours
are SVG attributes, never `style=`); the page states it in a `<meta>` too, so a saved copy
opened from disk keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import Final

from registry.headers import source_hash
from registry.models import MetricSeries
from sinks.read import SeriesPoint

WIDTH: Final = 720
HEIGHT: Final = 150
PAD_LEFT: Final = 56
PAD_RIGHT: Final = 12
PAD_Y: Final = 14

Getter = Callable[[SeriesPoint], float | int | None]

_SCRIPT: Final = """
addEventListener('load', () => {
  const points = document.querySelectorAll('svg circle.point').length;
  let length = 0;
  for (const line of document.querySelectorAll('svg polyline.series')) {
    length += line.getTotalLength();
  }
  document.body.dataset.drawnPoints = String(points);
  document.body.dataset.drawnLength = String(Math.round(length));
});
"""

_STYLE: Final = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 .2em; } p.range { color: #666; margin: 0 0 1em; }
section { margin-bottom: 1em; } h2 { font-size: 1em; margin: 0 0 .2em; }
svg { background: #fafafa; border: 1px solid #ddd; }
.grid { stroke: #e4e4e4; } .axis { fill: #777; font-size: 11px; }
.series { fill: none; stroke-width: 1.6; } .point { stroke: none; }
.legend span { margin-right: 1em; }
.legend svg { background: none; border: 0; margin-right: .3em; }
.empty { fill: #999; font-size: 13px; }
"""

#: The page's Content-Security-Policy: its own script and style element, nothing else.
POLICY: Final = (
    f"default-src 'none'; script-src {source_hash(_SCRIPT)}; style-src {source_hash(_STYLE)}; "
    "base-uri 'none'; form-action 'none'"
)


def _scale_x(i: int, n: int) -> float:
    inner = WIDTH - PAD_LEFT - PAD_RIGHT
    return PAD_LEFT + (inner * i / (n - 1) if n > 1 else inner / 2)


def _human_bytes(v: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(v) < 1024:
            return f"{v:.0f} {unit}"
        v /= 1024
    return f"{v:.0f} TB"


def _panel(
    title: str,
    points: Sequence[SeriesPoint],
    lines: Sequence[tuple[str, str, Getter]],
    top: float | None,
    fmt: Callable[[float], str],
) -> str:
    """One SVG chart: a polyline per series (broken at empty buckets) and a dot per value."""
    values = [g(p) for _, _, g in lines for p in points]
    present = [float(v) for v in values if v is not None]
    high = top if top is not None else max(present, default=0.0) or 1.0
    inner = HEIGHT - 2 * PAD_Y

    def y(v: float) -> float:
        return PAD_Y + inner * (1 - v / high)

    parts = [
        f'<svg role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for frac in (0.0, 0.5, 1.0):
        gy = y(high * frac)
        parts.append(
            f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{gy:.1f}" '
            f'y2="{gy:.1f}"/><text class="axis" x="{PAD_LEFT - 6}" y="{gy + 4:.1f}" '
            f'text-anchor="end">{escape(fmt(high * frac))}</text>'
        )
    n = len(points)
    for _, color, get in lines:
        run: list[str] = []
        dots: list[str] = []
        for i, p in enumerate(points):
            v = get(p)
            if v is None:
                if len(run) > 1:
                    parts.append(_polyline(run, color))
                run = []
                continue
            xy = f"{_scale_x(i, n):.1f},{y(float(v)):.1f}"
            run.append(xy)
            x_, y_ = xy.split(",")
            dots.append(f'<circle class="point" cx="{x_}" cy="{y_}" r="2" fill="{color}"/>')
        if len(run) > 1:
            parts.append(_polyline(run, color))
        parts += dots
    if not present:
        parts.append(
            f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            "no data in this range</text>"
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{color}"/></svg>{escape(label)}</span>'
        for label, color, _ in lines
    )
    return (
        f"<section><h2>{escape(title)}</h2>{''.join(parts)}"
        f'<div class="legend">{legend}</div></section>'
    )


def _polyline(run: list[str], color: str) -> str:
    return f'<polyline class="series" stroke="{color}" points="{" ".join(run)}"/>'


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S %Z")


def render_chart(series: MetricSeries, server_name: str) -> str:
    """The page for `series` of the server called `server_name`."""
    pts = series.points

    def percent(title: str, lines: Sequence[tuple[str, str, Getter]]) -> str:
        return _panel(title, pts, lines, 100.0, lambda v: f"{v:.0f}%")

    panels = [
        percent(
            "CPU",
            [
                ("average", "#1f77b4", lambda p: p.cpu_usage_avg),
                ("max", "#aec7e8", lambda p: p.cpu_usage_max),
            ],
        ),
        percent(
            "Memory",
            [
                ("average", "#2ca02c", lambda p: p.memory_usage_avg),
                ("max", "#98df8a", lambda p: p.memory_usage_max),
            ],
        ),
        percent("Disk", [("average", "#8c564b", lambda p: p.disk_usage_avg)]),
        _panel(
            f"Network (bytes per {series.step})",
            pts,
            [
                ("received", "#d62728", lambda p: p.network_rx),
                ("sent", "#ff7f0e", lambda p: p.network_tx),
            ],
            None,
            _human_bytes,
        ),
    ]
    filled = sum(1 for p in pts if p.samples)
    title = f"{server_name} ({series.server_id})"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<title>FleetPulse: {escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body data-points="{filled}"><h1>{escape(title)}</h1>'
        f'<p class="range">{_stamp(series.start)} to {_stamp(series.end)}, step {series.step}: '
        f"{len(pts)} buckets, {filled} with data</p>"
        + "".join(panels)
        + f"<script>{_SCRIPT}</script></body></html>"
    )
