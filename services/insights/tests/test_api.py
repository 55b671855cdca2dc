"""Insights' API, exports, emerging issues, dashboard login and transparency page, in-process."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlparse

from civicsignals.common.bus import STREAM, Bus, stream_messages
from civicsignals.common.events import CloudEvent
from civicsignals.insights import flows, reports, synthetic

from .conftest import Insights

TODAY = date.today()


def _received(events: list[CloudEvent]) -> list[CloudEvent]:
    return [e for e in events if e.type.endswith(("signal.received.v1", "conversation.received.v1"))]


def _topics(events: list[CloudEvent]) -> Counter[str]:
    received = {e.data["signal_id"] for e in _received(events)}
    return Counter(
        e.data["topic"]
        for e in events
        if e.type.endswith("signal.classified.v1") and e.data["signal_id"] in received
    )


async def _load(insights: Insights, days: int = 30, per_day: float = 6, seed: int = 4) -> list[CloudEvent]:
    # Noon UTC starts keep every signal inside the local days of the period asked for.
    events = list(
        synthetic.generate(
            "gouda", TODAY - timedelta(days=days), days, per_day, seed=seed, now=datetime.now(UTC)
        )
    )
    await insights.apply(events)
    return events


def _period(days: int = 40) -> dict[str, str]:
    return {"from": (TODAY - timedelta(days=days)).isoformat(), "to": TODAY.isoformat()}


async def test_trends_count_every_signal_once(insights: Insights) -> None:
    events = await _load(insights)
    signals = len(_received(events))
    response = await insights.client.get("/v1/trends", params=_period(), headers=insights.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == signals and len(body["points"]) == 41
    assert response.headers["API-Version"]

    by_topic = await insights.client.get(
        "/v1/trends", params={**_period(), "group_by": "topic", "interval": "week"}, headers=insights.auth
    )
    totals: Counter[str] = Counter()
    for point in by_topic.json()["points"]:
        totals[point["group"]] += point["count"]
    assert +totals == _topics(events)

    afval = await insights.client.get(
        "/v1/trends", params={**_period(), "topic": "afval"}, headers=insights.auth
    )
    assert afval.json()["total"] == _topics(events)["afval"]
    passive = await insights.client.get(
        "/v1/trends", params={**_period(), "mode": "passive"}, headers=insights.auth
    )
    assert passive.json()["total"] == sum(
        1 for e in _received(events) if e.type.endswith("conversation.received.v1")
    )


async def test_bad_requests_are_problems_with_pointers(insights: Insights, make_tenant) -> None:
    cases = [
        ({"from": "2026-02-01", "to": "2026-01-01"}, "/from"),
        ({"group_by": "colour"}, "/group_by"),
        ({"topic": "AFVAL; drop"}, "/topic"),
        ({"from": "yesterday"}, "/from"),
        ({"interval": "hour"}, "/interval"),
    ]
    for params, pointer in cases:
        response = await insights.client.get("/v1/trends", params=params, headers=insights.auth)
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["pointer"] for e in response.json()["errors"]] == [pointer]
    missing = await insights.client.get("/v1/exports/nothing.csv", headers=insights.auth)
    assert missing.status_code == 404 and missing.json()["type"].endswith("unknown-export")
    assert (await insights.client.get("/v1/trends")).status_code == 401
    other = make_tenant("gouda", scopes=["signals:write"])
    forbidden = await insights.client.get("/v1/trends", headers={"Authorization": f"Bearer {other.key}"})
    assert forbidden.status_code == 403


async def test_every_chart_exports_as_csv_and_json_with_the_same_rows(insights: Insights) -> None:
    events = await _load(insights, days=20)
    for chart in reports.CHARTS:
        as_csv = await insights.client.get(
            f"/v1/exports/{chart}.csv", params=_period(), headers=insights.auth
        )
        as_json = await insights.client.get(
            f"/v1/exports/{chart}.json", params=_period(), headers=insights.auth
        )
        assert as_csv.status_code == 200 and as_json.status_code == 200, (chart, as_csv.text, as_json.text)
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert len(rows) == len(as_json.json()["rows"]), chart
    topics = (
        await insights.client.get("/v1/exports/topics.json", params=_period(), headers=insights.auth)
    ).json()
    assert {row["topic"]: row["count"] for row in topics["rows"]} == dict(_topics(events))
    signals = (
        await insights.client.get("/v1/exports/signals.csv", params=_period(), headers=insights.auth)
    ).text
    assert "[PHONE]" in signals and "@" not in signals


async def test_a_spike_becomes_an_emerging_issue_published_once(
    insights: Insights, bus: Bus, wait_until
) -> None:
    rng = random.Random(9)
    day = TODAY - timedelta(days=1)
    events: list[CloudEvent] = []
    for week in range(9, 0, -1):  # nine weeks of about ten BSN questions on this weekday, in English
        for _ in range(rng.randint(8, 12)):
            at = datetime.combine(day - timedelta(days=7 * week), datetime.min.time(), UTC) + timedelta(
                hours=11
            )
            events += synthetic.signal_events(
                rng, "gouda", at, topic="burgerzaken", area="centrum", language="en", passive=False
            )
    for _ in range(45):  # then a day with four times as many
        at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=rng.uniform(8, 16))
        events += synthetic.signal_events(
            rng, "gouda", at, topic="burgerzaken", area="centrum", language="en", passive=False
        )
    await insights.apply(events)

    found = await flows.detect_day(insights.ctx, "gouda", day)
    series = {(i.series, i.topic, i.area) for i in found}
    assert ("topic", "burgerzaken", None) in series and ("topic-area", "burgerzaken", "centrum") in series
    assert all(i.published and i.p_value < 0.001 and i.observed > 2 * i.expected for i in found)
    assert all(i.observed == 45 for i in found if i.series in ("topic", "topic-area", "area"))
    assert again_same(await flows.detect_day(insights.ctx, "gouda", day), found)

    async def published() -> list[CloudEvent] | None:
        messages = await stream_messages(bus.js, STREAM)
        sent = [CloudEvent.from_json(m.data) for m in messages if m.subject == "civic.gouda.insight.emerging"]
        return sent if len(sent) >= len(found) else None

    sent = await wait_until(published, timeout=15, message="insight.emerging on the bus")
    assert {e.data["insight_id"] for e in sent} == {i.insight_id for i in found}
    assert all(
        e.type == "nl.civicsignals.insight.emerging.v1" and e.data["false_alarm_rate"] == 0.001 for e in sent
    )

    response = await insights.client.get("/v1/emerging", headers=insights.auth)
    body = response.json()
    assert body["method"]["false_alarm_rate"] == 0.001
    topic_issue = next(i for i in body["items"] if i["series"] == "topic")
    assert (
        topic_issue["observed"] >= 45 and len(topic_issue["baseline"]) == 8 and topic_issue["expected"] < 13
    )


def again_same(second: list, first: list) -> bool:
    return sorted(i.insight_id for i in second) == sorted(i.insight_id for i in first)


async def test_transparency_page_hides_small_cells(insights: Insights) -> None:
    rng = random.Random(12)
    events: list[CloudEvent] = []
    start = datetime.now(UTC) - timedelta(days=20)
    for topic, count in (("afval", 30), ("wonen", 3), ("belastingen", 4), ("verlichting", 2)):
        for i in range(count):
            events += synthetic.signal_events(
                rng, "gouda", start + timedelta(hours=7 * i), topic=topic, now=datetime.now(UTC)
            )
    await insights.apply(events)

    page = await insights.client.get("/transparency/gouda")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert "Afval" in html and "<svg" in html
    for small in ("Wonen", "Belastingen", "Verlichting"):
        assert small not in html
    assert "Overige onderwerpen" in html  # 3 + 4 + 2 = 9 pooled
    # Residents of a Dutch municipality read it in Dutch; English on request, with a link between.
    assert '<html lang="nl">' in html and "U meldde, wij deden" in html and 'href="?lang=en"' in html
    assert " tot en met " in html and "<th>Meldingen</th>" in html  # dates and headings in Dutch too
    english = (await insights.client.get("/transparency/gouda", params={"lang": "en"})).text
    assert '<html lang="en">' in english and "You said, we did" in english and "Other topics" in english
    assert 'href="?lang=nl"' in english and "Overige onderwerpen" not in english
    assert "U meldde" in (await insights.client.get("/transparency/gouda", params={"lang": "xx"})).text

    export = await insights.client.get("/transparency/gouda/export.json")
    rows = {row["topic"]: row for row in export.json()["rows"]}
    assert set(rows) == {"afval", "other topics"}
    assert rows["other topics"]["reported"] == 9
    assert rows["afval"]["reported"] == 30
    for row in rows.values():
        for figure in ("reported", "closed"):
            assert row[figure] is None or row[figure] >= 5
    csv_text = (await insights.client.get("/transparency/gouda/export.csv")).text
    assert "wonen" not in csv_text and "afval" in csv_text
    assert (await insights.client.get("/transparency/nowhere")).status_code == 404


async def test_the_dashboard_needs_a_login_and_a_revoked_key_ends_it(insights: Insights) -> None:
    await _load(insights, days=10)
    anonymous = await insights.client.get("/dashboard", params={"topic": "afval"})
    assert anonymous.status_code == 303
    location = urlparse(anonymous.headers["location"])
    assert location.path == "/dashboard/login" and parse_qs(location.query)["next"] == [
        "/dashboard?topic=afval"
    ]

    wrong = await insights.client.post(
        "/dashboard/login", data={"api_key": "cs_nope.nope", "next": "/dashboard"}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.text
    good = await insights.client.post(
        "/dashboard/login", data={"api_key": insights.key, "next": "https://evil.example/"}
    )
    assert good.status_code == 303 and good.headers["location"] == "/dashboard"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert insights.key not in cookie

    page = await insights.client.get("/dashboard")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart ') >= 6 and "Content-Security-Policy" in page.headers
    drill = await insights.client.get("/dashboard/signals", params={"topic": "afval"})
    assert drill.status_code == 200 and "[PHONE]" in drill.text
    download = await insights.client.get("/dashboard/exports/topics.csv")
    assert download.status_code == 200 and download.text.startswith("topic,count")

    insights.tenant_key.revoke()
    insights.app.state.tenants.refresh(force=True)
    assert (await insights.client.get("/dashboard")).status_code == 303
    bearer = await insights.client.get("/dashboard", headers=insights.auth)
    assert bearer.status_code == 401
