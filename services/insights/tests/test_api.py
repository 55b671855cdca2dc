"""Insights' API, exports, emerging issues, dashboard login and transparency page, in-process."""

from __future__ import annotations

import csv
import html
import io
import random
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlparse

from civicsignals.common.bus import STREAM, Bus, stream_messages
from civicsignals.common.events import CloudEvent
from civicsignals.common.wording import format_date
from civicsignals.insights import flows, reports, synthetic
from civicsignals.insights.pages import STAFF_WORDS, Wording, with_language

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
    assert '<th scope="row">Waste</th>' in english and '<th scope="row">Afval</th>' in html
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


async def test_transparency_page_of_a_quiet_period_speaks_the_readers_language(insights: Insights) -> None:
    """A municipality with nothing reported yet: the empty chart reads in the page's language."""
    dutch = (await insights.client.get("/transparency/gouda")).text
    assert "nog geen meldingen in deze periode" in dutch and "Nog niets te tonen." in dutch
    assert "no signals in this view" not in dutch
    english = (await insights.client.get("/transparency/gouda", params={"lang": "en"})).text
    assert "no reports in this period yet" in english and "Nothing to show yet." in english


async def test_the_dashboard_needs_a_login_and_a_revoked_key_ends_it(insights: Insights) -> None:
    await _load(insights, days=10)
    anonymous = await insights.client.get("/dashboard", params={"topic": "afval"})
    assert anonymous.status_code == 303
    location = urlparse(anonymous.headers["location"])
    assert location.path == "/dashboard/login" and parse_qs(location.query)["next"] == [
        "/dashboard?topic=afval"
    ]

    wrong = await insights.client.post(
        "/dashboard/login", data={"api_key": "cs_nope.nope", "next": "/dashboard", "lang": "en"}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.text
    dutch = await insights.client.post(
        "/dashboard/login", data={"api_key": "cs_nope.nope", "next": "/dashboard"}
    )
    assert dutch.status_code == 401 and "Deze API-sleutel is niet geldig." in dutch.text
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


# -- the staff pages in Dutch and in English --------------------------------------------------------

LINK = re.compile(r'\b(href|action)="([^"]*)"')
LANG_INPUT = '<input type="hidden" name="lang" value="en">'


def _links(page: str, attribute: str = "href") -> list[str]:
    """The page's links (or form actions) to the dashboard's own pages; the exports and the link to
    the other language left out."""
    found = [html.unescape(url) for kind, url in LINK.findall(page) if kind == attribute]
    switch = re.search(r'<a class="other-language" href="([^"]*)"', page)
    return [
        url
        for url in found
        if url.startswith("/dashboard")
        and "/exports/" not in url
        and not (switch and url == html.unescape(switch.group(1)))
    ]


def _lang(url: str) -> list[str]:
    return parse_qs(urlparse(url).query).get("lang", [])


def _other_language(page: str) -> str:
    found = re.search(r'<a class="other-language" href="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def _untranslated(page: str, language: str) -> list[str]:
    """Phrases of the other language's words (at least 8 characters between placeholders) that
    appear on a page: none should, except where both languages say the same, or the page's own
    words say it too ("Nederlands" is the Dutch page's name of Dutch and the English page's link
    to the Dutch one)."""
    own, other = STAFF_WORDS[language], STAFF_WORDS["en" if language == "nl" else "nl"]
    shown = re.sub(r"<[^>]*>", " ", page) + " ".join(re.findall(r'(?:title|aria-label)="([^"]*)"', page))
    text = html.unescape(shown)
    said = {part.strip() for value in own.values() for part in re.split(r"\{\w+\}", value)}
    fragments = {
        part.strip()
        for key, value in other.items()
        if value != own[key]
        for part in re.split(r"\{\w+\}", value)
        if len(part.strip()) >= 8 and part.strip() not in said
    }
    return sorted(part for part in fragments if re.search(rf"(?<![\w:]){re.escape(part)}(?![\w:])", text))


def test_the_staff_words_have_the_same_keys_in_both_languages() -> None:
    assert STAFF_WORDS["nl"].keys() == STAFF_WORDS["en"].keys()
    for key, dutch in STAFF_WORDS["nl"].items():  # the same placeholders, so no page breaks in one
        assert set(re.findall(r"\{\w+\}", dutch)) == set(re.findall(r"\{\w+\}", STAFF_WORDS["en"][key])), key


def test_a_redirect_keeps_or_changes_the_language_of_its_target() -> None:
    assert with_language("/dashboard?topic=afval", "nl") == "/dashboard?topic=afval"
    assert with_language("/dashboard?topic=afval", "en") == "/dashboard?topic=afval&lang=en"
    assert with_language("/dashboard?topic=afval&lang=en", "en") == "/dashboard?topic=afval&lang=en"
    assert with_language("/dashboard?lang=en&topic=afval", "nl") == "/dashboard?topic=afval"
    assert with_language("/dashboard?lang=en", "nl") == "/dashboard"
    english, dutch = Wording("en"), Wording("nl")
    assert (english.number(3.75), dutch.number(3.75), dutch.number(1.2e-5, ".1e")) == (
        "3.75",
        "3,75",
        "1,2e-05",
    )
    assert (english.day(date(2026, 12, 7)), dutch.day(date(2026, 12, 7))) == ("2026-12-07", "7 december 2026")
    assert (english.value("kind", "complaint"), dutch.value("kind", "complaint")) == ("complaint", "klacht")
    assert dutch.value("area", "centrum") == "centrum" and dutch.topic("unclassified") == "nog niet ingedeeld"
    assert (english.value("topic", "afval"), dutch.value("topic", "afval")) == ("Waste", "Afval")
    assert english.value("subtopic", "container", "afval") == "Waste container"


async def test_the_dashboard_is_dutch_by_default_and_english_on_request(insights: Insights) -> None:
    await _load(insights, days=20)
    dutch = (await insights.client.get("/dashboard", params=_period(), headers=insights.auth)).text
    assert '<html lang="nl">' in dutch and "<title>Gouda · Civic Signals inzichten</title>" in dutch
    for phrase in (
        "Meldingen in de tijd",
        "Onderwerp per taal",
        "Afdelingen",
        "Opkomende kwesties",
        "Tevredenheid per onderwerp",
        "Openstaande zaken",
        "Afmelden",
        "Mediane doorlooptijd",
        'aria-label="Meldingen per kanaal"',
        "<h2>Soort</h2>",
        ">telefoon</text>",
        'title="Afval, taal Nederlands: ',
        "Klik op een label in een grafiek",
        "Openbare transparantiepagina",
    ):
        assert phrase in dutch, phrase
    assert _untranslated(dutch, "nl") == []
    assert re.search(r">\d,\d+ / 5 <", dutch)  # mean satisfaction with a decimal comma
    assert re.search(r">\d,\d+</text>", dutch)  # and so the bar of the satisfaction chart
    assert not re.search(r">\d\.\d+ / 5 <", dutch)
    assert re.search(
        r"<title>[^<]*\d{1,2} (januari|februari|maart|april|mei|juni|juli|augustus|september|"
        r"oktober|november|december) \d{4}: alle meldingen \d",
        dutch,
    )  # a day's hover text
    switch = _other_language(dutch)
    assert _lang(switch) == ["en"] and parse_qs(urlparse(switch).query)["from"] == [_period()["from"]]
    assert all(_lang(url) == [] for url in _links(dutch))  # Dutch, the default, needs no lang

    english = (await insights.client.get(switch, headers=insights.auth)).text
    assert '<html lang="en">' in english and "<title>Gouda · Civic Signals insights</title>" in english
    for phrase in (
        "Signals over time",
        "Topic by language",
        "Departments",
        "Emerging issues",
        "Satisfaction by topic",
        "Open cases",
        "Sign out",
        "Median to resolve",
        'aria-label="Signals per channel"',
        "<h2>Kind</h2>",
        ">phone</text>",
        'title="Waste in Dutch: ',  # the taxonomy's English name of afval
        "Public transparency page",
    ):
        assert phrase in english, phrase
    assert _untranslated(english, "en") == []
    assert re.search(r">\d\.\d+ / 5 <", english) and not re.search(r">\d,\d+ / 5 <", english)
    assert re.search(r"<title>\d{4}-\d\d-\d\d: all signals \d", english)
    assert _lang(_other_language(english)) == ["nl"]
    # Every link and form of the English page keeps it English; the exports stay as they were.
    links = _links(english)
    assert len(links) > 100 and all(_lang(url) == ["en"] for url in links), [u for u in links if not _lang(u)]
    assert english.count(LANG_INPUT) == 2  # the period form and the "largest six" form
    assert _links(english, "action") == ["/dashboard/logout?lang=en", "/dashboard", "/dashboard"]
    assert 'href="/transparency/gouda?lang=en"' in english
    exports = [u for _, u in LINK.findall(english) if "/exports/" in u]
    assert exports and not any(_lang(html.unescape(u)) for u in exports)

    unknown = await insights.client.get("/dashboard", params={"lang": "xx"}, headers=insights.auth)
    assert unknown.status_code == 200 and '<html lang="nl">' in unknown.text
    assert "Meldingen in de tijd" in unknown.text


async def test_a_filter_link_and_the_signal_list_keep_the_language(insights: Insights) -> None:
    await _load(insights, days=20)
    english = (await insights.client.get("/dashboard", params={"lang": "en"}, headers=insights.auth)).text
    narrow = next(
        u
        for u in _links(english)
        if urlparse(u).path == "/dashboard" and "topic" in parse_qs(urlparse(u).query)
    )
    narrowed = (await insights.client.get(narrow, headers=insights.auth)).text
    assert (
        '<html lang="en">' in narrowed and "topic: " in narrowed and 'title="remove this filter"' in narrowed
    )
    assert "Subtopic of " in narrowed
    assert all(_lang(u) == ["en"] for u in _links(narrowed)), [u for u in _links(narrowed) if not _lang(u)]

    drill = next(u for u in _links(narrowed) if urlparse(u).path == "/dashboard/signals")
    listing = (await insights.client.get(drill, headers=insights.auth)).text
    assert (
        '<html lang="en">' in listing
        and "<th>Received</th>" in listing
        and "Back to the dashboard" in listing
    )
    assert all(_lang(u) == ["en"] for u in _links(listing))

    everything = (
        await insights.client.get(
            "/dashboard/signals", params={**_period(), "lang": "en"}, headers=insights.auth
        )
    ).text
    older = next(u for u in _links(everything) if "cursor" in u)
    assert _lang(older) == ["en"] and "Older signals →" in everything
    assert '<html lang="en">' in (await insights.client.get(older, headers=insights.auth)).text
    assert f"<h1>Signals {_period()['from']} to {TODAY.isoformat()}</h1>" in everything
    dutch_list = (await insights.client.get("/dashboard/signals", headers=insights.auth)).text
    older = next(u for u in _links(dutch_list) if "cursor" in u)
    assert _lang(older) == [] and "Oudere meldingen →" in dutch_list
    assert re.search(r'<td class="nowrap">\d{4}-\d\d-\d\d \d\d:\d\d</td>', everything)

    dutch = (await insights.client.get("/dashboard", headers=insights.auth)).text
    narrow = next(
        u
        for u in _links(dutch)
        if urlparse(u).path == "/dashboard" and "topic" in parse_qs(urlparse(u).query)
    )
    narrowed = (await insights.client.get(narrow, headers=insights.auth)).text
    assert (
        '<html lang="nl">' in narrowed
        and "onderwerp: " in narrowed
        and 'title="dit filter weghalen"' in narrowed
    )
    assert "Subonderwerp van " in narrowed

    passive = await insights.client.get(
        "/dashboard/signals", params={**_period(), "mode": "passive"}, headers=insights.auth
    )
    text = passive.text
    assert '<html lang="nl">' in text and "<title>Meldingen · Gouda</title>" in text
    heading = (
        f"Meldingen van {format_date(TODAY - timedelta(days=40), 'nl')} tot en met {format_date(TODAY, 'nl')}"
    )
    assert f"<h1>{heading}</h1>" in text
    for phrase in (
        "modus: <strong>passief</strong>",
        "<th>Ontvangen</th>",
        "<th>Kanaal</th>",
        "(gesprek)",
        "Terug naar het dashboard",
        "vervangen door plaatshouders",
    ):
        assert phrase in text, phrase
    assert re.search(r'<td class="nowrap">\d{1,2} [a-z]+ \d{4}, \d\d:\d\d</td>', text)
    assert "(conversation)" not in text and "Received" not in text
    assert _lang(_other_language(text)) == ["en"] and parse_qs(urlparse(_other_language(text)).query)[
        "mode"
    ] == ["passive"]
    english_list = (await insights.client.get(_other_language(text), headers=insights.auth)).text
    assert "(conversation)" in english_list and "mode: <strong>passive</strong>" in english_list
    unknown = await insights.client.get("/dashboard/signals", params={"lang": "xx"}, headers=insights.auth)
    assert unknown.status_code == 200 and '<html lang="nl">' in unknown.text


async def test_the_login_page_in_both_languages_and_the_language_kept_across_login(
    insights: Insights, make_tenant
) -> None:
    await _load(insights, days=5)
    form = await insights.client.get("/dashboard/login")
    assert form.status_code == 200 and '<html lang="nl">' in form.text
    for phrase in (
        "<title>Aanmelden · Civic Signals inzichten</title>",
        "Aanmelden bij het dashboard",
        '<label for="api_key">API-sleutel</label>',
        '<input type="hidden" name="lang" value="nl">',
    ):
        assert phrase in form.text, phrase
    assert _untranslated(form.text, "nl") == []
    assert "Sign in" not in form.text
    english_form = await insights.client.get("/dashboard/login", params={"lang": "en"})
    assert '<html lang="en">' in english_form.text and "Sign in to the dashboard" in english_form.text
    assert "<title>Sign in · Civic Signals insights</title>" in english_form.text
    assert _untranslated(english_form.text, "en") == []
    unknown = await insights.client.get("/dashboard/login", params={"lang": "xx"})
    assert unknown.status_code == 200 and "Aanmelden bij het dashboard" in unknown.text

    # An English page asked for without a login: the login form is English, and so is the page after.
    anonymous = await insights.client.get("/dashboard", params={"topic": "afval", "lang": "en"})
    assert anonymous.status_code == 303
    location = anonymous.headers["location"]
    assert urlparse(location).path == "/dashboard/login" and _lang(location) == ["en"]
    assert parse_qs(urlparse(location).query)["next"] == ["/dashboard?topic=afval&lang=en"]
    login = (await insights.client.get(location)).text
    assert "Sign in to the dashboard" in login and LANG_INPUT in login
    assert 'name="next" value="/dashboard?topic=afval&amp;lang=en"' in login
    to_dutch = _other_language(login)
    assert _lang(to_dutch) == ["nl"] and parse_qs(urlparse(to_dutch).query)["next"] == [
        "/dashboard?topic=afval&lang=en"
    ]

    next_url = "/dashboard?topic=afval&lang=en"
    wrong = await insights.client.post(
        "/dashboard/login", data={"api_key": "cs_no.no", "next": next_url, "lang": "en"}
    )
    assert wrong.status_code == 401 and "the API key is not valid" in wrong.text and LANG_INPUT in wrong.text
    assert parse_qs(urlparse(_other_language(wrong.text)).query)["next"] == [next_url]
    wrong = await insights.client.post(
        "/dashboard/login", data={"api_key": "cs_no.no", "next": next_url, "lang": "nl"}
    )
    assert (
        wrong.status_code == 401
        and "Deze API-sleutel is niet geldig." in wrong.text
        and '<html lang="nl">' in wrong.text
    )
    unscoped = make_tenant("gouda", scopes=["signals:write"])
    insights.app.state.tenants.refresh(force=True)
    lacking = await insights.client.post("/dashboard/login", data={"api_key": unscoped.key, "next": next_url})
    assert (
        lacking.status_code == 403
        and "Deze sleutel heeft de scope 'insights:read' niet." in html.unescape(lacking.text)
    )
    lacking = await insights.client.post("/dashboard/login", data={"api_key": unscoped.key, "lang": "en"})
    assert lacking.status_code == 403 and "this key lacks 'insights:read'" in html.unescape(lacking.text)

    good = await insights.client.post(
        "/dashboard/login", data={"api_key": insights.key, "next": next_url, "lang": "en"}
    )
    assert good.status_code == 303 and good.headers["location"] == next_url
    after = (await insights.client.get(good.headers["location"])).text
    assert '<html lang="en">' in after and "Signals over time" in after and "topic: Waste" in after

    # Switched to Dutch on the login form: the choice made last wins.
    switched = await insights.client.post(
        "/dashboard/login", data={"api_key": insights.key, "next": next_url, "lang": "nl"}
    )
    assert switched.headers["location"] == "/dashboard?topic=afval"
    # And straight to an English login form, with no page asked for: the dashboard in English.
    plain = await insights.client.post(
        "/dashboard/login", data={"api_key": insights.key, "next": "", "lang": "en"}
    )
    assert plain.headers["location"] == "/dashboard?lang=en"

    out = await insights.client.post("/dashboard/logout", params={"lang": "en"})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login?lang=en"
    out = await insights.client.post("/dashboard/logout")
    assert out.headers["location"] == "/dashboard/login"
