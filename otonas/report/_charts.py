"""Small inline SVG charts for the report: line charts over epochs and before/after bars."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from ._svg import FONT

__all__ = ["Series", "line_chart", "before_after_bars", "channel_bars", "human", "nice_ticks", "log_ticks",
           "wants_log_scale"]

_AXIS = "#9aa5b1"
_GRID = "#eef0f3"
_INK = "#1f2933"
_MUTED = "#67737f"
_MARK = "#b26a00"


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    colour: str


def human(x: float, *, digits: int = 3) -> str:
    """12_345_678 -> '12.3M'; 0.5 -> '0.5'."""
    a = abs(x)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if a >= scale:
            return f"{x / scale:.{digits}g}{unit}"
    if a == 0 or a >= 1:
        return f"{x:.{digits}g}"
    return f"{x:.{digits}g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k steps) that cover [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        if lo == 0:
            hi = 1.0
        else:
            pad = abs(hi) * 0.1
            lo, hi = (lo - pad, hi + pad) if lo < 0 else (max(0.0, lo - pad), hi + pad)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    t = start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over [lo, hi] (0 < lo <= hi): 1, 2, 5 × 10^k, from the one at or below
    lo to the one at or above hi; at least two."""
    if not (lo > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return [1.0, 10.0]
    hi = max(hi, lo)
    steps = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2)
             for m in (1, 2, 5)]
    below = max(t for t in steps if t <= lo * (1 + 1e-9))
    above = min(t for t in steps if t >= hi * (1 - 1e-9))
    ticks = [float(f"{t:.6g}") for t in steps if below <= t <= above]
    if len(ticks) > 7:  # a wide range: the decades only (and the ends)
        ticks = [t for i, t in enumerate(ticks) if i in (0, len(ticks) - 1) or f"{t:.6g}".lstrip("0.")[:1] == "1"]
    return ticks if len(ticks) >= 2 else [below, above * 2]


def wants_log_scale(values: Sequence[float | None], *, ratio: float = 5.0) -> bool:
    """Whether a positive series spans so wide a range (max/min >= ``ratio``, e.g. a large first
    loss) that a linear axis would squash the rest of it flat."""
    vs = [v for v in values if v is not None and math.isfinite(v)]
    return len(vs) >= 2 and min(vs) > 0 and max(vs) / min(vs) >= ratio


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[Series],
    *,
    y_format: Callable[[float], str] = human,
    width: int = 540,
    height: int = 250,
    x_label: str = "epoch",
    y_min: float | None = None,
    y_max: float | None = None,
    log_y: bool = False,
    marker: tuple[float, str] | None = None,
) -> str:
    """A line chart with axes, grid, tick labels, a legend and a tooltip on every point.

    ``log_y`` draws the y axis on a log scale (values must be positive; others are left out);
    ``marker`` = (x, label) draws a dashed vertical line at x with the label beside it."""
    left, right, top, bottom = 58, 16, 38, 40
    pw, ph = width - left - right, height - top - bottom
    ys = [v for s in series for v in s.values if v is not None and math.isfinite(v) and (v > 0 or not log_y)]
    lo = min(ys) if ys else 0.0
    hi = max(ys) if ys else 1.0
    if y_min is not None and not log_y:
        lo = min(lo, y_min)
    if y_max is not None:
        hi = max(hi, y_max)
    if log_y and ys:
        yt = log_ticks(lo, hi)
        y0, y1 = math.log10(yt[0]), math.log10(yt[-1])
    else:
        log_y = False
        yt = nice_ticks(lo, hi)
        y0, y1 = yt[0], yt[-1]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    xt = [t for t in nice_ticks(x_lo, x_hi, 6) if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    if all(float(x).is_integer() for x in xs):
        xt = [t for t in xt if float(t).is_integer()] or [x_lo, x_hi]

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        if log_y:
            y = math.log10(y)
        return top + ph - (y - y0) / ((y1 - y0) or 1.0) * ph

    def drawn(v: float | None) -> bool:
        return v is not None and math.isfinite(v) and (v > 0 or not log_y)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="otn-chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{escape(FONT)}">',
           f'<text x="{left}" y="18" font-size="13" font-weight="650" fill="{_INK}">{escape(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="{_GRID}"/>'
                   f'<text x="{left - 7}" y="{py(t) + 3.5:.1f}" font-size="10.5" text-anchor="end" '
                   f'fill="{_MUTED}">{escape(y_format(t))}</text>')
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="{_AXIS}"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 16}" font-size="10.5" text-anchor="middle" '
                   f'fill="{_MUTED}">{escape(human(t))}</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{_AXIS}"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="{_AXIS}"/>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle" '
               f'fill="{_MUTED}">{escape(x_label)}</text>')
    if marker is not None and x_lo - 1e-9 <= marker[0] <= x_hi + 1e-9:
        mx = px(marker[0])
        anchor, dx = ("end", -4) if mx > left + pw * 0.7 else ("start", 4)
        out.append(f'<g class="otn-marker"><line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{top + ph}" '
                   f'stroke="{_MARK}" stroke-width="1.2" stroke-dasharray="4 3"/>'
                   f'<text x="{mx + dx:.1f}" y="{top + 11}" font-size="10.5" text-anchor="{anchor}" '
                   f'fill="{_MARK}">{escape(marker[1])}</text></g>')
    for s in series:
        pts = [(x, v) for x, v in zip(xs, s.values) if drawn(v) and v is not None]
        if not pts:
            continue
        runs: list[list[tuple[float, float]]] = [[]]
        for x, v in zip(xs, s.values):
            if v is None or not drawn(v):
                runs.append([])
            else:
                runs[-1].append((x, v))
        for run in runs:
            if len(run) > 1:
                d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(v):.1f}" for i, (x, v) in enumerate(run))
                out.append(f'<path d="{d}" fill="none" stroke="{s.colour}" stroke-width="2" '
                           f'stroke-linejoin="round" stroke-linecap="round"/>')
        r = 2.6 if len(pts) <= 60 else 0.0
        for x, v in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="{max(r, 1.2) if len(pts) <= 60 else 4}" '
                       f'fill="{s.colour if r else "transparent"}" stroke="#fff" stroke-width="{0.8 if r else 0}">'
                       f'<title>{escape(f"{s.name}, {x_label} {human(x)}: {y_format(v)}")}</title></circle>')
    if len(series) > 1:
        lx: float = left + pw
        for s in reversed(series):
            w = len(s.name) * 6.4 + 24
            lx -= w
            out.append(f'<rect x="{lx:.1f}" y="10" width="14" height="3" rx="1.5" fill="{s.colour}"/>'
                       f'<text x="{lx + 18:.1f}" y="15" font-size="11" fill="{_INK}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)


def before_after_bars(rows: Sequence[tuple[str, float, float]], *, width: int = 540,
                      colour: str = "#2e7dd7") -> str:
    """For each (label, before, after): a grey bar for before, a coloured one for after,
    values and the reduction written next to them."""
    left, right = 92, 90
    bar_h, gap = 16, 24
    height = 16 + len(rows) * (2 * bar_h + 6 + gap)
    pw = width - left - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="otn-chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{escape(FONT)}">']
    y = 12.0
    for label, before, after in rows:
        scale = max(before, after, 1e-12)
        wb, wa = pw * before / scale, pw * after / scale
        change = (after - before) / before if before else 0.0
        out.append(f'<text x="{left - 10}" y="{y + bar_h + 6:.1f}" font-size="12.5" font-weight="650" '
                   f'text-anchor="end" fill="{_INK}">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y:.1f}" width="{wb:.1f}" height="{bar_h}" rx="3" fill="#cfd5dc">'
                   f'<title>{escape(f"{label} before: {before:,.0f}")}</title></rect>'
                   f'<text x="{left + wb + 6:.1f}" y="{y + 12:.1f}" font-size="11" fill="{_MUTED}">'
                   f'before {escape(human(before))}</text>')
        y2 = y + bar_h + 6
        out.append(f'<rect x="{left}" y="{y2:.1f}" width="{max(wa, 1.5):.1f}" height="{bar_h}" rx="3" fill="{colour}">'
                   f'<title>{escape(f"{label} after: {after:,.0f}")}</title></rect>'
                   f'<text x="{left + max(wa, 1.5) + 6:.1f}" y="{y2 + 12:.1f}" font-size="11" fill="{_INK}" '
                   f'font-weight="600">after {escape(human(after))}'
                   f'<tspan fill="{"#2e7d32" if change < 0 else _MUTED}" dx="6">'
                   f'{escape(f"{change:+.1%}" if before else "")}</tspan></text>')
        y += 2 * bar_h + 6 + gap
    out.append("</svg>")
    return "".join(out)


def channel_bars(rows: Sequence[tuple[str, int, int, bool]], colours: Sequence[str], *, width: int = 1100,
                 height: int = 230) -> str:
    """Channels per layer, in network order: a light bar for before, a solid one for after."""
    left, right, top, bottom = 48, 12, 14, 30
    pw, ph = width - left - right, height - top - bottom
    n = max(1, len(rows))
    hi = max((r[1] for r in rows), default=1)
    yt = nice_ticks(0, hi, 4)
    step = pw / n
    bw = max(1.0, min(22.0, step * 0.72))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="otn-chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{escape(FONT)}">']

    def py(v: float) -> float:
        return top + ph - v / (yt[-1] or 1) * ph

    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="{_GRID}"/>'
                   f'<text x="{left - 6}" y="{py(t) + 3.5:.1f}" font-size="10.5" text-anchor="end" '
                   f'fill="{_MUTED}">{human(t)}</text>')
    for i, (name, before, after, erased) in enumerate(rows):
        x = left + i * step + (step - bw) / 2
        tip = f"{name}: {before} → {'erased' if erased else after} channels"
        out.append(f'<g><title>{escape(tip)}</title>'
                   f'<rect x="{x:.1f}" y="{py(before):.1f}" width="{bw:.1f}" height="{py(0) - py(before):.1f}" '
                   f'fill="#e3e7ec"/>')
        if not erased:
            out.append(f'<rect x="{x:.1f}" y="{py(after):.1f}" width="{bw:.1f}" height="{py(0) - py(after):.1f}" '
                       f'fill="{colours[i]}"/>')
        else:
            out.append(f'<path d="M{x:.1f},{py(before):.1f} L{x + bw:.1f},{py(0):.1f}" stroke="#e3a3a3"/>')
        out.append("</g>")
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(0):.1f}" y2="{py(0):.1f}" stroke="{_AXIS}"/>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 8}" font-size="11" text-anchor="middle" fill="{_MUTED}">'
               f'layers in network order (hover a bar for its name)</text>'
               f'<text x="12" y="{top + ph / 2:.1f}" font-size="11" text-anchor="middle" fill="{_MUTED}" '
               f'transform="rotate(-90 12 {top + ph / 2:.1f})">channels</text>')
    out.append("</svg>")
    return "".join(out)
