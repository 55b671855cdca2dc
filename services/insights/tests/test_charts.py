"""The charts' text layout without a browser: labels cut to their room, legends that flow in rows
(the browser test measures the same with Chromium's own fonts)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from civicsignals.insights import charts

LONG = "Overlast van en door personen of groepen"


@given(st.text(min_size=1, max_size=80), st.floats(min_value=20, max_value=400))
def test_a_fitted_text_is_whole_or_cut_with_an_ellipsis_within_its_room(text: str, room: float) -> None:
    shown = charts.fit(text, 12, room)
    if shown == text:
        assert charts.text_width(text, 12) <= room
    else:
        assert shown.endswith("…") and text.startswith(shown[:-1])
        assert charts.text_width(shown, 12) <= room or shown == "…"


def test_wide_letters_count_wider_than_narrow_ones() -> None:
    assert charts.text_width("WWWW", 12) > charts.text_width("Wijk", 12) > charts.text_width("iiii", 12)


def _legend_entries(svg: str) -> list[tuple[float, float, str]]:
    return [
        (float(x), float(y), name)
        for x, y, name in re.findall(
            r'<text class="legend" x="([\d.]+)" y="(\d+)"[^>]*><title>[^<]*</title>([^<]*)</text>', svg
        )
    ]


def _series(names: list[str]) -> list[charts.Series]:
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(5)]
    return [
        charts.Series(name, [(day, float(i + n)) for i, day in enumerate(days)])
        for n, name in enumerate(names)
    ]


def test_the_legend_flows_into_rows_and_the_chart_grows_by_them() -> None:
    names = [
        LONG,
        "Wegen, verkeer, straatmeubilair",
        "Afval",
        "Parkeren en vergunningen",
        LONG + " (2)",
        "Schoon",
    ]
    short = str(charts.line_chart(_series(["Afval", "Schoon"]), label="kort", width=600, height=260))
    long = str(charts.line_chart(_series(names), label="lang", width=600, height=260))

    entries = _legend_entries(long)
    assert [name for _, _, name in entries] == names  # none cut: each fits a row of its own
    rows = sorted({y for _, y, _ in entries})
    assert len(rows) >= 3 and len(_legend_entries(short)) == 2
    for y in rows:  # on one row, each entry ends before the next begins
        row = sorted((x, name) for x, entry_y, name in entries if entry_y == y)
        for (x, name), (next_x, _) in pairwise(row):
            assert x + charts.text_width(name, charts.LEGEND_SIZE) < next_x
        assert row[-1][0] + charts.text_width(row[-1][1], charts.LEGEND_SIZE) <= 600
    heights = [int(re.search(r'height="(\d+)"', svg).group(1)) for svg in (short, long)]  # type: ignore[union-attr]
    assert heights[1] == heights[0] + charts.LEGEND_ROW * (len(rows) - 1)


def test_bar_labels_get_the_room_they_need_up_to_a_share_of_the_chart() -> None:
    bars = [charts.Bar(LONG, 160), charts.Bar("Afval", 169), charts.Bar("Wonen", 38)]
    svg = str(charts.bar_chart(bars, label="onderwerpen", width=360))

    labels = re.findall(r'<text class="label" x="(\d+)"[^>]*><title>([^<]*)</title>([^<]*)</text>', svg)
    assert [title for _, title, _ in labels] == [LONG, "Afval", "Wonen"]
    right = int(labels[0][0])
    assert right <= 360 * 0.45
    long_shown = labels[0][2]
    assert long_shown.endswith("…") and charts.text_width(long_shown, 12) <= right - 4
    assert [shown for _, _, shown in labels[1:]] == ["Afval", "Wonen"]
    narrow = str(charts.bar_chart([charts.Bar("Afval", 1)], label="smal", width=360))
    assert int(re.search(r'<text class="label" x="(\d+)"', narrow).group(1)) < right  # type: ignore[union-attr]
