"""The dashboard and the transparency page in headless Chromium: they load without console errors,
their charts are drawn, the dashboard reads Dutch (English by its link, kept when filtering), small
cells stay hidden, and a screenshot of each is kept in ``test-artifacts/insights/``."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from civicsignals.devstack.browser import chromium, find_chromium, served
from civicsignals.insights import flows, synthetic

from .conftest import Insights

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "insights"
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (make test installs it: apt-get install chromium)",
)

CHARTS_DRAWN = """(() => {
  const charts = [...document.querySelectorAll('svg.chart')];
  return {
    charts: charts.length,
    drawn: charts.filter(svg => { const box = svg.getBoundingClientRect(); return box.width > 50 && box.height > 20; }).length,
    lines: [...document.querySelectorAll('svg.chart polyline.series')].filter(p => p.points.length > 1).length,
    bars: [...document.querySelectorAll('svg.chart rect.bar')].filter(r => r.width.baseVal.value > 0).length,
    styled: getComputedStyle(document.body).fontFamily.length > 0 && getComputedStyle(document.querySelector('header.top')).display === 'flex',
    path: location.pathname,
    lang: document.documentElement.lang,
    text: document.body.textContent,
  };
})()"""

NARROW_BY_TOPIC = """[...document.querySelectorAll('#topics svg a')]
  .map(a => a.getAttribute('href')).find(href => href.startsWith('/dashboard?'))"""


async def _data(insights: Insights) -> None:
    today = date.today()
    events = list(
        synthetic.generate("gouda", today - timedelta(days=60), 60, 14, seed=21, now=datetime.now(UTC))
    )
    rng = random.Random(2)
    # Older than the days the service's own background check looks at (emerging_lookback_days, 3):
    # that check starts with the app and, on yesterday, could mark the day checked before this
    # data was in, and the detect_day below would then return its empty result (1 run in 8).
    spike_day = today - timedelta(days=5)
    for week in range(8, 0, -1):
        for _ in range(6):
            at = datetime.combine(spike_day - timedelta(days=7 * week), datetime.min.time(), UTC) + timedelta(
                hours=10
            )
            events += synthetic.signal_events(
                rng, "gouda", at, topic="burgerzaken", area="centrum", language="en", passive=True
            )
    for _ in range(30):
        at = datetime.combine(spike_day, datetime.min.time(), UTC) + timedelta(hours=rng.uniform(8, 15))
        events += synthetic.signal_events(
            rng, "gouda", at, topic="burgerzaken", area="centrum", language="en", passive=True
        )
    for i in range(3):  # a topic too small to show in public
        events += synthetic.signal_events(
            rng,
            "gouda",
            datetime.now(UTC) - timedelta(days=3, hours=i),
            topic="begraafplaatsen",
        )
    await insights.apply(events)
    await flows.detect_day(insights.ctx, "gouda", spike_day)


async def test_dashboard_and_transparency_page_in_chromium(insights: Insights, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    await _data(insights)
    async with served(insights.app) as base, chromium(CHROMIUM, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/dashboard")
        assert (await page.evaluate("location.pathname")) == "/dashboard/login"
        await page.submit(
            f"document.querySelector('#api_key').value = {json.dumps(insights.key)};"
            "document.querySelector('form').submit();"
        )
        dashboard = await page.evaluate(CHARTS_DRAWN)
        assert dashboard["path"] == "/dashboard" and dashboard["lang"] == "nl"
        assert dashboard["charts"] >= 7 and dashboard["drawn"] == dashboard["charts"], dashboard
        assert dashboard["lines"] >= 2 and dashboard["bars"] >= 20 and dashboard["styled"], dashboard
        # Dutch for the municipality's staff: headings, a Dutch date, a decimal comma.
        assert "Opkomende kwesties" in dashboard["text"] and "Burgerzaken" in dashboard["text"]
        assert "Emerging issues" not in dashboard["text"]
        assert re.search(
            r"\d{1,2} [a-z]+ \d{4} ·\s+Burgerzaken:\s+\d+ meldingen tegen \d+,\d+ verwacht",
            dashboard["text"],
        ), dashboard["text"]
        assert re.search(r"\d,\d+ / 5", dashboard["text"]), dashboard["text"]
        assert "Begraafplaatsen" in dashboard["text"]  # staff see every topic, however small
        await page.screenshot(ARTIFACTS / "dashboard.png")

        # English through the link in the header, kept when a chart label narrows the view.
        await page.goto(
            base + await page.evaluate("document.querySelector('a.other-language').getAttribute('href')")
        )
        english = await page.evaluate(CHARTS_DRAWN)
        assert english["lang"] == "en" and "Emerging issues" in english["text"], english["text"]
        assert english["charts"] == dashboard["charts"] and english["drawn"] == english["charts"], english
        await page.goto(base + await page.evaluate(NARROW_BY_TOPIC))
        narrowed = await page.evaluate(CHARTS_DRAWN)
        assert (
            narrowed["lang"] == "en" and "topic: " in narrowed["text"] and "Subtopic of" in narrowed["text"]
        )
        await page.screenshot(ARTIFACTS / "dashboard-en.png")

        await page.goto(f"{base}/dashboard/signals?topic=burgerzaken&language=en")
        listing = await page.evaluate("document.querySelectorAll('table.signals tbody tr').length")
        assert listing == 50
        assert await page.evaluate("document.documentElement.lang") == "nl"
        await page.screenshot(ARTIFACTS / "signals.png")

        public = await browser.new_page()
        await public.goto(f"{base}/transparency/gouda")
        transparency = await public.evaluate(CHARTS_DRAWN)
        assert transparency["charts"] == 1 and transparency["drawn"] == 1 and transparency["bars"] >= 5, (
            transparency
        )
        assert "U meldde, wij deden" in transparency["text"] and "Afval" in transparency["text"]
        assert "Begraafplaatsen" not in transparency["text"]  # 3 signals: suppressed in public
        assert re.search(r"\d,\d dagen", transparency["text"]), transparency["text"]  # a Dutch decimal comma
        await public.screenshot(ARTIFACTS / "transparency.png")

    assert page.errors == [], page.errors
    assert public.errors == [], public.errors
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000
