"""A dependency-free, deterministic SVG line plot (reports must not need matplotlib).

:func:`line_plot` draws one or more series of ``(x, y)`` points with markers, linear axes
with ticks at "nice" values, axis labels, a title and a legend. The same arguments give
byte-identical SVG (numbers are written with fixed precision).
"""
from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

__all__ = ["line_plot", "nice_ticks"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_MARKERS = ("circle", "square", "diamond", "triangle")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` ticks at multiples of 1, 2 or 5 times a power of ten covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_ticks: bounds must be finite, got {lo}, {hi}")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"


def _marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "circle":
        return f'<circle cx="{x:.2f}" cy="{y:.2f}" r="3.5" fill="{color}"/>'
    if kind == "square":
        return f'<rect x="{x - 3.5:.2f}" y="{y - 3.5:.2f}" width="7" height="7" fill="{color}"/>'
    if kind == "diamond":
        return (f'<polygon points="{x:.2f},{y - 4.5:.2f} {x + 4.5:.2f},{y:.2f} {x:.2f},{y + 4.5:.2f} '
                f'{x - 4.5:.2f},{y:.2f}" fill="{color}"/>')
    return (f'<polygon points="{x:.2f},{y - 4.5:.2f} {x + 4.5:.2f},{y + 3.5:.2f} {x - 4.5:.2f},{y + 3.5:.2f}" '
            f'fill="{color}"/>')


def line_plot(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
              width: int = 640, height: int = 400) -> str:
    """SVG text of the series (legend in the given order; points joined in x order)."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("line_plot: no points")
    xs, ys = [float(p[0]) for p in pts], [float(p[1]) for p in pts]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    L, R, T, B = 70, 20, 40, 55
    pw, ph = width - L - R, height - T - B

    def X(v: float) -> float:
        return L + (v - xt[0]) / (xt[-1] - xt[0]) * pw

    def Y(v: float) -> float:
        return T + ph - (v - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for v in xt:
        out.append(f'<line x1="{X(v):.2f}" y1="{T}" x2="{X(v):.2f}" y2="{T + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{X(v):.2f}" y="{T + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    for v in yt:
        out.append(f'<line x1="{L}" y1="{Y(v):.2f}" x2="{L + pw}" y2="{Y(v):.2f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{L - 6}" y="{Y(v) + 4:.2f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    out.append(f'<text x="{L + pw / 2:.1f}" y="{height - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{T + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {T + ph / 2:.1f})">{escape(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        color, mk = _COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]
        srt = sorted((float(a), float(b)) for a, b in s)
        if len(srt) > 1:
            path = " ".join(f"{X(a):.2f},{Y(b):.2f}" for a, b in srt)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        out.extend(_marker(mk, X(a), Y(b), color) for a, b in srt)
        ly = T + 14 + 16 * i
        out.append(_marker(mk, L + pw - 150, ly - 4, color))
        out.append(f'<text x="{L + pw - 140}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
