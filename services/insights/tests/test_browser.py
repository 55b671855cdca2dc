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

#: What a reader would see as broken in a chart, measured by the browser's own text layout: a text
#: that runs out of its chart (a clipped bar label, say), two texts that run into each other (legend
#: names, say), and a label that runs into its bar.
CHART_LAYOUT_PROBLEMS = """(() => {
  const problems = [];
  const overlap = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
  for (const svg of document.querySelectorAll('svg.chart')) {
    const view = svg.viewBox.baseVal, name = svg.getAttribute('aria-label');
    const shown = t => t.lastChild ? t.lastChild.textContent : '';
    for (const text of svg.querySelectorAll('text')) {
      const box = text.getBBox();
      if (box.x < -0.5 || box.x + box.width > view.width + 0.5 || box.y < -0.5 || box.y + box.height > view.height + 0.5)
        problems.push(`${name}: "${shown(text)}" drawn at ${box.x.toFixed(1)} to ${(box.x + box.width).toFixed(1)} in a chart ${view.width} wide`);
    }
    const texts = [...svg.querySelectorAll('text')].map(text => [shown(text), text.getBBox()]);
    texts.forEach(([one, a], i) => texts.slice(i + 1).forEach(([other, b]) => {
      if (overlap(a, b)) problems.push(`${name}: "${one}" runs into "${other}"`);
    }));
    const bars = [...svg.querySelectorAll('rect.bar')].map(bar => bar.getBBox());
    for (const text of svg.querySelectorAll('text.label')) {
      const box = text.getBBox();
      if (bars.some(bar => overlap(box, bar))) problems.push(`${name}: label "${shown(text)}" runs into its bar`);
    }
  }
  return problems;
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
    for i in range(160):  # a long name among the six largest topics (the dashboard shows twelve)
        at = datetime.now(UTC) - timedelta(days=1 + i % 25, hours=i % 7)
        events += synthetic.signal_events(rng, "gouda", at, topic="overlast-van-en-door-personen-of-groepen")
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
        assert await page.evaluate(CHART_LAYOUT_PROBLEMS) == []
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
        assert await page.evaluate(CHART_LAYOUT_PROBLEMS) == []
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
        assert await public.evaluate(CHART_LAYOUT_PROBLEMS) == []
        await public.screenshot(ARTIFACTS / "transparency.png")

    assert page.errors == [], page.errors
    assert public.errors == [], public.errors
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000
