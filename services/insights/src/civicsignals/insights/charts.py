"""Charts drawn on the server as SVG: readable without JavaScript, printable, and the same numbers
as the CSV beside them.

No chart library is needed, so none is vendored or fetched: a line chart for volume over time, a
bar chart for breakdowns (every bar links to the view narrowed to it and to the signals behind
it), and a colour scale for the topic-by-language table. Colours are the Okabe-Ito palette, which
stays distinguishable for the common forms of colour blindness. The pages give the words: labels
and series names, and a :class:`ChartWords` for the rest (decimal sign, days, the empty chart).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#000000")
FONT = 'font-family="system-ui, sans-serif"'


def nice_ticks(maximum: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``maximum`` (1, 2, 2.5 or 5 times a power of ten)."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < maximum:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _number(value: float, decimal: str = ".") -> str:
    if float(value).is_integer():
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.2f}".replace(".", decimal)


def _day_month(day: date) -> str:
    return day.strftime("%d %b")


@dataclass(frozen=True)
class ChartWords:
    """What a chart writes besides the labels it is given: the empty chart's text, the decimal
    sign and the days, so a Dutch page's chart says "3,57" and "7 dec". English by default, as
    every chart was before; the staff pages pass their page's language (the public page's chart,
    whole numbers only, keeps the default)."""

    empty: str = "no signals in this view"
    decimal: str = "."
    axis_day: Callable[[date], str] = _day_month
    """A day under the time axis (``07 Dec``, ``7 dec``)."""
    tip_day: Callable[[date], str] = date.isoformat
    """A day in a period's hover text (``2026-12-07``, ``7 december 2026``)."""


ENGLISH = ChartWords()


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[date, float]]


def line_chart(
    series: Sequence[Series],
    *,
    label: str,
    link: Callable[[date], str] | None = None,
    width: int = 1180,
    height: int = 260,
    wording: ChartWords = ENGLISH,
) -> Markup:
    """Lines over time, one per series, with a legend; each period links to its signals."""
    left, right, top, bottom = 48, 12, 28, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    days = sorted({d for s in series for d, _ in s.points})
    peak = max((v for s in series for _, v in s.points), default=0)
    ticks = nice_ticks(peak)
    top_value = ticks[-1] or 1.0
    if not days:
        return _empty(label, width, height, wording)
    index = {d: i for i, d in enumerate(days)}
    step = plot_w / max(1, len(days) - 1)

    def x(d: date) -> float:
        return left + (index[d] * step if len(days) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - v / top_value * plot_h

    parts = [_open(label, width, height, kind="line")]
    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" fill="#555" {FONT}>'
            f"{_number(tick, wording.decimal)}</text>"
        )
    label_every = max(1, math.ceil(len(days) / 8))
    for i, d in enumerate(days):
        if i % label_every == 0:
            parts.append(
                f'<text x="{x(d):.1f}" y="{height - 8}" text-anchor="middle" font-size="11" fill="#555" {FONT}>'
                f"{escape(wording.axis_day(d))}</text>"
            )
    for number, one in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        coordinates = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in sorted(one.points))
        parts.append(
            f'<polyline class="series" points="{coordinates}" fill="none" stroke="{colour}" '
            f'stroke-width="2.2" stroke-linejoin="round"/>'
        )
        legend_x = left + number * 190
        parts.append(
            f'<rect x="{legend_x}" y="6" width="14" height="4" fill="{colour}"/>'
            f'<text x="{legend_x + 20}" y="12" font-size="12" fill="#222" {FONT}>{escape(one.name)}</text>'
        )
    # One transparent column per period: hovering tells the numbers, clicking opens the signals.
    totals = {d: [(s.name, v) for s in series for pd, v in s.points if pd == d] for d in days}
    for d in days:
        tip = f"{wording.tip_day(d)}: " + ", ".join(
            f"{name} {_number(v, wording.decimal)}" for name, v in totals[d]
        )
        column = (
            f'<rect x="{x(d) - step / 2:.1f}" y="{top}" width="{max(step, 4):.1f}" height="{plot_h}" '
            f'fill="transparent"><title>{escape(tip)}</title></rect>'
        )
        parts.append(f'<a href="{escape(link(d))}">{column}</a>' if link else column)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text and link in it went through escape()


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    href: str | None = None
    """Where the bar leads (the signals behind the number)."""
    label_href: str | None = None
    """Where the label leads (the dashboard narrowed to this value)."""


def bar_chart(
    bars: Sequence[Bar],
    *,
    label: str,
    width: int = 360,
    maximum: float | None = None,
    colour: str = PALETTE[0],
    row_height: int = 22,
    wording: ChartWords = ENGLISH,
) -> Markup:
    """Horizontal bars, largest first as given, with the value at the end of each bar."""
    if not bars:
        return _empty(label, width, 60, wording)
    label_w, value_w = 130, 56
    plot_w = width - label_w - value_w
    top_value = maximum or max((b.value for b in bars), default=0) or 1.0
    height = row_height * len(bars) + 8
    parts = [_open(label, width, height)]
    for i, bar in enumerate(bars):
        y = 4 + i * row_height
        name = bar.label if len(bar.label) <= 19 else bar.label[:18] + "…"
        text = (
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12" fill="#222" {FONT}>'
            f"<title>{escape(bar.label)}</title>{escape(name)}</text>"
        )
        parts.append(f'<a href="{escape(bar.label_href)}">{text}</a>' if bar.label_href else text)
        length = max(1.0, bar.value / top_value * plot_w) if bar.value > 0 else 0.0
        body = (
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_height - 6}" '
            f'fill="{colour}" rx="2"><title>{escape(bar.label)}: {_number(bar.value, wording.decimal)}</title></rect>'
            f'<text x="{label_w + length + 5:.1f}" y="{y + 15}" font-size="12" fill="#222" {FONT}>'
            f"{_number(bar.value, wording.decimal)}</text>"
        )
        parts.append(f'<a href="{escape(bar.href)}">{body}</a>' if bar.href else body)
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text and link in it went through escape()


SHADES = 8


def shade(value: float, maximum: float) -> str:
    """The CSS class of a table cell's colour (``h0`` white to ``h7`` the palette's blue), by share
    of the maximum. Classes rather than inline styles, so the page's CSP can forbid inline styles."""
    if maximum <= 0 or value <= 0:
        return "h0"
    return f"h{max(1, min(SHADES - 1, math.ceil(value / maximum * (SHADES - 1))))}"


def shade_colours() -> list[str]:
    """The colours of :func:`shade`'s classes, white to blue (used to write the style sheet)."""
    start, end = (255, 255, 255), (0, 114, 178)
    colours = []
    for step in range(SHADES):
        share = step / (SHADES - 1)
        r, g, b = (round(s + (e - s) * share) for s, e in zip(start, end, strict=True))
        colours.append(f"#{r:02x}{g:02x}{b:02x}")
    return colours


def _open(label: str, width: int, height: int, kind: str = "bars") -> str:
    return (
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
    )


def _empty(label: str, width: int, height: int, wording: ChartWords) -> Markup:
    return Markup(  # noqa: S704 - the label and the text are escaped
        _open(label, width, height)
        + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="13" fill="#777" {FONT}>'
        f"{escape(wording.empty)}</text></svg>"
    )
