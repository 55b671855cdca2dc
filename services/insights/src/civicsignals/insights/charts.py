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


#: Widths of characters in em, a little above a common sans-serif's (DejaVu Sans, Helvetica), so
#: that a text measured with them fits where it is put. The server has no fonts to measure with,
#: and the browser's own measure would need JavaScript; the browser test checks the result.
_NARROW = frozenset(" .,:;'|!ijlI()[]ftr-/")
_WIDE = frozenset("mwMW@%…")


#: What a cut text loses at its end before the ellipsis: whitespace and separators.
_TRAILING = " \t\r\n\f\v,;:-"


def text_width(text: str, size: float) -> float:
    """About how wide ``text`` is drawn at font size ``size`` (px), erring on the wide side."""
    em = 0.0
    for char in text:
        if char in _NARROW:
            em += 0.36
        elif char in _WIDE:
            em += 0.95
        elif char.isupper():
            em += 0.74
        else:
            em += 0.62
    return em * size


def fit(text: str, size: float, room: float) -> str:
    """``text`` as it fits in ``room`` px: whole, or cut with an ellipsis (the full text goes in
    the element's ``<title>``)."""
    if text_width(text, size) <= room:
        return text
    cut = text
    while cut:
        # Measured as it is shown: without the spaces and separators the cut leaves at its end
        # (measuring one form and showing another overran the room by a line break's width).
        shown = cut.rstrip(_TRAILING) + "…"
        if text_width(shown, size) <= room:
            return shown
        cut = cut[:-1]
    return "…"


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
    """Lines over time, one per series, with a legend; each period links to its signals.

    The legend flows in rows above the plot, each name as wide as it is drawn, and the chart grows
    by the rows it needs beyond the first: long topic names never run into each other."""
    left, right, bottom = 48, 12, 26
    legend = _legend([one.name for one in series], left, width - right)
    top = 16 + LEGEND_ROW * max(1, legend.rows)
    height += LEGEND_ROW * max(0, legend.rows - 1)
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
        legend_x, legend_y = legend.places[number]
        parts.append(
            f'<rect x="{legend_x:.1f}" y="{legend_y - 6}" width="14" height="4" fill="{colour}"/>'
            f'<text class="legend" x="{legend_x + LEGEND_SWATCH:.1f}" y="{legend_y}" font-size="{LEGEND_SIZE}" '
            f'fill="#222" {FONT}><title>{escape(one.name)}</title>{escape(legend.names[number])}</text>'
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


LEGEND_ROW = 18
LEGEND_SIZE = 12
LEGEND_SWATCH = 20
"""From a legend entry's colour swatch to its name, px."""
LEGEND_GAP = 22


@dataclass(frozen=True)
class Legend:
    names: list[str]
    """Each series' name as drawn (cut only when one name alone is wider than the chart)."""
    places: list[tuple[float, int]]
    """Where each entry starts: x of its swatch, y of its text's baseline."""
    rows: int


def _legend(names: Sequence[str], start: float, end: float) -> Legend:
    """Entries left to right, a new row when the next one would pass ``end``."""
    drawn: list[str] = []
    places: list[tuple[float, int]] = []
    x, row = start, 0
    for name in names:
        shown = fit(name, LEGEND_SIZE, end - start - LEGEND_SWATCH)
        entry = LEGEND_SWATCH + text_width(shown, LEGEND_SIZE)
        if x > start and x + entry > end:
            x, row = start, row + 1
        drawn.append(shown)
        places.append((x, 12 + row * LEGEND_ROW))
        x += entry + LEGEND_GAP
    return Legend(drawn, places, row + 1 if names else 0)


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
    """Horizontal bars, largest first as given, with the value at the end of each bar.

    The labels' column is as wide as its longest label, up to 45% of the chart; a label longer
    than that is cut with an ellipsis (whole in its tooltip)."""
    if not bars:
        return _empty(label, width, 60, wording)
    size, value_w = 12, 56
    widest = max(text_width(bar.label, size) for bar in bars)
    label_w = int(min(max(widest + 12, 60), width * 0.45))
    plot_w = width - label_w - value_w
    top_value = maximum or max((b.value for b in bars), default=0) or 1.0
    height = row_height * len(bars) + 8
    parts = [_open(label, width, height)]
    for i, bar in enumerate(bars):
        y = 4 + i * row_height
        name = fit(bar.label, size, label_w - 10)
        text = (
            f'<text class="label" x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="{size}" '
            f'fill="#222" {FONT}>'
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
