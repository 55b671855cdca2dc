"""The satisfaction form is taken once the case has ended, and only then: from a portal (JSON) and
from the resident's page (the form post), against the real intake app, database and bus.

A signal has one answer. Before this was checked, an answer given while the signal was still
``received`` was stored and published with ``case_id`` null, and the real answer after the
resolution was then refused as a second one.
"""

from __future__ import annotations

from typing import Any

import pytest

from civicsignals.common.events import CASE_STATUSES
from civicsignals.intake.flows import FEEDBACK_STATUSES
from civicsignals.intake.models import Feedback

from .conftest import Intake
from .test_resident_pages import BROWSER, move_case, reported

ANSWER = {"satisfied": True, "score": 4, "comment": "Snel opgelost. Bel me op 06\u201112345678."}


async def test_feedback_is_refused_until_the_case_has_ended_and_then_taken_once(
    intake: Intake, wait_until: Any
) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    link = f"/v1/tracking/{code}/feedback"

    early = await intake.client.post(link, json=ANSWER)
    assert early.status_code == 409 and early.headers["content-type"] == "application/problem+json"
    problem = early.json()
    assert problem["type"].endswith("/case-not-ended"), problem
    assert problem["detail"] == (
        "the case has not ended yet (it is received); feedback can be given once it is resolved, "
        "closed or rejected"
    )
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "in_progress", 2)
    running = await intake.client.post(link, json=ANSWER)
    assert running.status_code == 409 and running.json()["type"].endswith("/case-not-ended")
    assert await intake.count(Feedback) == 0

    await move_case(intake, signal, "resolved", 3, note="Opgeruimd.")
    view = (await intake.client.get(f"/v1/tracking/{code}")).json()
    assert view["status"] == "resolved" and view["feedback_given"] is False  # a portal asks now
    accepted = await intake.client.post(link, json=ANSWER)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json() == {"tracking_code": code, "satisfied": True, "score": 4}

    # The one event carries the case, and the comment redacted.
    [event] = await intake.events("feedback.received", wait_until)
    assert event["data"]["case_id"] == "case-1" and event["data"]["signal_id"] == signal["id"]
    assert event["data"]["comment"] == "Snel opgelost. Bel me op [PHONE]."

    # Reopened and resolved again: still one answer per signal, and the refusal says that.
    await move_case(intake, signal, "reopened", 4)
    again = await intake.client.post(link, json={**ANSWER, "score": 1})
    assert again.status_code == 409 and again.json()["type"].endswith("/feedback-already-given")
    assert (await intake.client.get(f"/v1/tracking/{code}")).json()["feedback_given"] is True
    assert (await intake.get(Feedback, signal["id"])).score == 4


@pytest.mark.parametrize("status", ["duplicate", "cancelled"])
async def test_a_duplicate_or_withdrawn_signal_is_not_rated(intake: Intake, status: str) -> None:
    signal = await reported(intake)
    await move_case(intake, signal, status, 1)
    answer = await intake.client.post(f"/v1/tracking/{signal['tracking_code']}/feedback", json=ANSWER)
    assert answer.status_code == 409 and answer.json()["type"].endswith("/feedback-not-asked")
    assert answer.json()["detail"].startswith(f"a signal that is {status} is not rated")
    assert await intake.count(Feedback) == 0


async def test_the_form_post_before_the_end_records_nothing_and_says_when(intake: Intake) -> None:
    signal = await reported(intake)
    code = signal["tracking_code"]
    link = f"/v1/tracking/{code}/feedback"
    await move_case(intake, signal, "assigned", 1)

    # An old resolution mail's link on a case that runs again shows no form, but says when.
    shown = await intake.client.get(f"{link}?score=5", headers=BROWSER)
    assert shown.status_code == 200 and 'name="score"' not in shown.text
    assert "U kunt uw melding beoordelen zodra deze is afgehandeld." in shown.text

    posted = await intake.client.post(link, data={"score": "5", "satisfied": "yes"}, headers=BROWSER)
    assert posted.status_code == 409 and posted.headers["content-type"].startswith("text/html")
    assert "zodra deze is afgehandeld" in posted.text and 'name="score"' not in posted.text
    assert "al een beoordeling gegeven" not in posted.text  # not the "second answer" message
    assert await intake.count(Feedback) == 0

    await move_case(intake, signal, "resolved", 2)
    form = await intake.client.get(f"{link}?score=5", headers=BROWSER)
    assert 'name="score" value="5" required checked' in form.text and "zodra" not in form.text
    done = await intake.client.post(link, data={"score": "5", "satisfied": "yes"}, headers=BROWSER)
    assert done.status_code == 303 and done.headers["location"] == f"/v1/tracking/{code}"
    assert (await intake.get(Feedback, signal["id"])).score == 5


async def test_english_residents_are_told_when_too(intake: Intake) -> None:
    signal = await reported(intake, language="en")
    link = f"/v1/tracking/{signal['tracking_code']}/feedback"
    posted = await intake.client.post(link, data={"score": "2", "satisfied": "no"}, headers=BROWSER)
    assert (
        posted.status_code == 409 and "You can rate your report once it has been dealt with." in posted.text
    )


@pytest.mark.parametrize("status", CASE_STATUSES)
async def test_the_page_asks_exactly_when_the_api_accepts(intake: Intake, status: str) -> None:
    """The tracking page shows the form in exactly the statuses in which the answer is taken, so
    a portal that asks when ``status`` is one of them and ``feedback_given`` is false agrees too."""
    signal = await reported(intake)
    code = signal["tracking_code"]
    await move_case(intake, signal, status, 1)
    page = (await intake.client.get(f"/v1/tracking/{code}", headers=BROWSER)).text
    asks = 'name="score"' in page
    view = (await intake.client.get(f"/v1/tracking/{code}")).json()
    answer = await intake.client.post(f"/v1/tracking/{code}/feedback", json=ANSWER)
    assert asks == (status in FEEDBACK_STATUSES) == (answer.status_code == 201), (status, answer.text)
    assert view["status"] == status and view["feedback_given"] is False
