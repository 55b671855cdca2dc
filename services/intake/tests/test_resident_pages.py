"""The resident's pages: the links in the e-mails (``/v1/tracking/{code}`` and its ``/feedback``)
opened in a browser, and the satisfaction form posted without JavaScript, against the real intake
app and database. JSON clients keep getting JSON from the same URLs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from civicsignals.intake import service
from civicsignals.intake.models import Feedback
from civicsignals.notifier.messages import feedback_urls

from .conftest import SIGNAL, Intake
from .test_following import change, routed

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
DUE = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


async def reported(intake: Intake, language: str = "nl") -> dict[str, Any]:
    created = await intake.post_signal({**SIGNAL, "language": language})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def move_case(
    intake: Intake,
    signal: dict[str, Any],
    to: str,
    sequence: int,
    note: str | None = None,
    at: datetime | None = None,
) -> None:
    """What intake's consumers apply from routing's events, applied directly (no bus needed here);
    ``at`` is when the change happened (now unless given)."""
    async with intake.runtime.sessions() as session, session.begin():
        if sequence == 1:
            opened = routed(signal, due_at=DUE, service_promise="We halen het binnen 5 werkdagen weg.")
            assert await service.apply_routed(session, opened)
        moved = change(signal, to, sequence, public_note=note, **{"from": "received"})
        assert await service.apply_status_change(session, moved, at or datetime.now(UTC))


async def test_a_browser_gets_the_page_and_an_api_client_json_from_the_same_link(intake: Intake) -> None:
    signal = await reported(intake)
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "in_progress", 2, note="De ploeg komt <b>donderdag</b>.")
    url = f"/v1/tracking/{signal['tracking_code']}"

    page = await intake.client.get(url, headers=BROWSER)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<html lang="nl" dir="ltr">' in html and "Gouda" in html
    assert signal["tracking_code"] in html
    assert "in behandeling" in html and "doorgezet naar de juiste afdeling" in html and "ontvangen" in html
    assert "Verwacht uiterlijk" in html and "7 december 2026" in html
    assert "We halen het binnen 5 werkdagen weg." in html
    # A public note is staff's text: shown, but escaped, never markup.
    assert "De ploeg komt &lt;b&gt;donderdag&lt;/b&gt;." in html and "<b>donderdag" not in html
    # No personal data, and the page keeps the code to itself.
    assert "Jan Jansen" not in html and "jan@example.org" not in html and "06-12345678" not in html
    assert "script-src" not in page.headers["content-security-policy"]  # no scripts at all
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["vary"] == "Accept"
    assert 'name="score"' not in html  # the case is still running: nothing to rate yet
    assert 'name="action" value="withdraw"' in html  # but the resident may withdraw it

    for accept in (None, "*/*", "application/json", "text/html;q=0.5, application/json"):
        headers = {"Accept": accept} if accept else {}
        answer = await intake.client.get(url, headers=headers)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", accept
        assert answer.json()["status"] == "in_progress" and answer.json()["feedback_given"] is False


async def test_english_reporters_get_english_pages(intake: Intake) -> None:
    signal = await reported(intake, language="en")
    await move_case(intake, signal, "assigned", 1)
    html = (await intake.client.get(f"/v1/tracking/{signal['tracking_code']}", headers=BROWSER)).text
    assert '<html lang="en" dir="ltr">' in html and "Your report" in html
    assert "passed to the right department" in html and "7 December 2026" in html


async def test_an_unknown_code_is_the_same_page_for_a_browser_and_a_problem_for_a_client(
    intake: Intake,
) -> None:
    page = await intake.client.get("/v1/tracking/0000-0000-0000", headers=BROWSER)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Melding niet gevonden" in page.text and "Report not found" in page.text
    other = await intake.client.get("/v1/tracking/ZZZZ-ZZZZ-ZZZZ", headers=BROWSER)
    assert other.text == page.text
    form = await intake.client.get("/v1/tracking/0000-0000-0000/feedback?score=4", headers=BROWSER)
    assert form.status_code == 404 and form.text == page.text
    api = await intake.client.get("/v1/tracking/0000-0000-0000")
    assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"


async def test_the_resolution_mails_link_shows_the_form_and_records_nothing(intake: Intake) -> None:
    signal = await reported(intake)
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "resolved", 2, note="De container is geleegd.")
    link = f"/v1/tracking/{signal['tracking_code']}/feedback"

    form = await intake.client.get(f"{link}?score=4", headers=BROWSER)
    assert form.status_code == 200 and form.headers["content-type"].startswith("text/html")
    assert 'name="score" value="4" required checked' in form.text
    assert 'name="satisfied" value="yes" required checked' in form.text
    assert f'action="{link}"' in form.text
    low = await intake.client.get(f"{link}?score=1")
    assert 'name="score" value="1" required checked' in low.text and 'value="no" checked' in low.text
    for nonsense in ("9", "x", ""):
        ignored = await intake.client.get(f"{link}?score={nonsense}")
        assert ignored.status_code == 200 and " checked" not in ignored.text
    assert await intake.count(Feedback) == 0  # opening links (as mail scanners do) records nothing

    # The tracking page of the resolved case asks too, and shows no due date any more.
    page = (await intake.client.get(f"/v1/tracking/{signal['tracking_code']}", headers=BROWSER)).text
    assert f'action="{link}"' in page and "Verwacht uiterlijk" not in page and "opgelost" in page


async def test_the_form_posted_records_once_and_returns_to_the_page(intake: Intake, wait_until: Any) -> None:
    signal = await reported(intake)
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "resolved", 2)
    code = signal["tracking_code"]
    link = f"/v1/tracking/{code}/feedback"

    # Mistakes come back named, with what was typed kept, and nothing is recorded.
    wrong = await intake.client.post(link, data={"score": "7", "comment": "Netjes gedaan"}, headers=BROWSER)
    assert wrong.status_code == 422 and wrong.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in wrong.text
    assert "Kies een cijfer van 1 tot en met 5." in wrong.text and "Kies ja of nee." in wrong.text
    assert "Netjes gedaan</textarea>" in wrong.text
    assert await intake.count(Feedback) == 0

    comment = "Netjes gedaan. Mail me op jan@example.org"
    done = await intake.client.post(
        link, data={"score": "5", "satisfied": "yes", "comment": comment}, headers=BROWSER
    )
    assert done.status_code == 303 and done.headers["location"] == f"/v1/tracking/{code}"
    stored = await intake.get(Feedback, signal["id"])
    assert (stored.score, stored.satisfied) == (5, True)
    assert "jan@example.org" not in stored.comment  # redacted as the JSON API redacts
    [event] = await intake.events("feedback.received", wait_until)
    assert event["data"]["score"] == 5 and "jan@example.org" not in str(event)

    after = await intake.client.get(done.headers["location"], headers=BROWSER)
    assert "Dank u wel voor uw beoordeling." in after.text and 'name="score"' not in after.text
    assert (await intake.client.get(f"/v1/tracking/{code}")).json()["feedback_given"] is True

    again = await intake.client.post(link, data={"score": "1", "satisfied": "no"}, headers=BROWSER)
    assert again.status_code == 409 and "al een beoordeling gegeven" in again.text
    assert (await intake.get(Feedback, signal["id"])).score == 5
    unknown = await intake.client.post("/v1/tracking/0000-0000-0000/feedback", data={"score": "5"})
    assert unknown.status_code == 404 and "Melding niet gevonden" in unknown.text


async def test_the_json_api_on_the_same_route_is_unchanged(intake: Intake) -> None:
    signal = await reported(intake)
    await move_case(intake, signal, "resolved", 1)  # feedback is asked once the case has ended
    link = f"/v1/tracking/{signal['tracking_code']}/feedback"
    malformed = await intake.client.post(
        link, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.headers["content-type"] == "application/problem+json"
    missing = await intake.client.post(link, json={"score": 3})
    assert missing.status_code == 422
    assert [e["pointer"] for e in missing.json()["errors"]] == ["/satisfied"]
    accepted = await intake.client.post(link, json={"score": 3, "satisfied": False})
    assert accepted.status_code == 201
    assert accepted.json() == {"tracking_code": signal["tracking_code"], "satisfied": False, "score": 3}


async def test_every_link_of_notifiers_resolution_mail_opens_the_form_with_its_score(intake: Intake) -> None:
    """The contract between the two services: the URLs notifier writes into the mail (from the
    same public base URL) are pages intake serves, each with its own score chosen."""
    signal = await reported(intake)
    await move_case(intake, signal, "resolved", 1)  # the resolution mail: the case has ended
    links = feedback_urls(intake.settings.public_base_url, signal["tracking_code"])
    assert [link["score"] for link in links] == [1, 2, 3, 4, 5]
    for link in links:
        path = urlsplit(link["url"])
        page = await intake.client.get(f"{path.path}?{path.query}", headers=BROWSER)
        assert page.status_code == 200, link
        assert f'name="score" value="{link["score"]}" required checked' in page.text
