"""The resident's pages in headless Chromium: the tracking page of a resolved case, its
satisfaction form filled in and sent by clicking (no JavaScript on the page, so what the browser
itself does: the form post, the 303 back, the page's Content-Security-Policy), without console or
CSP errors; a screenshot of each page is kept in ``test-artifacts/intake/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from civicsignals.devstack.browser import chromium, find_chromium, served
from civicsignals.intake.models import Feedback

from .conftest import Intake
from .test_resident_pages import move_case, reported

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "intake"
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (make test installs it: apt-get install chromium)",
)

PAGE = """(() => ({
  path: location.pathname,
  lang: document.documentElement.lang,
  text: document.body.innerText,
  forms: document.forms.length,
  styled: getComputedStyle(document.querySelector('main')).maxWidth !== 'none',
}))()"""


async def test_a_resident_reads_the_page_and_rates_the_handling_in_chromium(
    intake: Intake, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    signal = await reported(intake)
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "waiting_on_resident", 2, note="Bij welke container ligt het?")
    code = signal["tracking_code"]

    async with served(intake.app) as base, chromium(CHROMIUM, tmp_path / "profile") as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/v1/tracking/{code}")
        asked = await page.evaluate(PAGE)
        assert (
            "Wij hebben een vraag aan u" in asked["text"] and "Bij welke container ligt het?" in asked["text"]
        )
        assert asked["forms"] == 2, asked  # the answer, and (folded away) the withdrawal
        await page.screenshot(ARTIFACTS / "tracking-question.png", width=820)

        await move_case(intake, signal, "in_progress", 3, note="De ploeg komt donderdag.")
        await move_case(intake, signal, "resolved", 4, note="Het afval is opgehaald.")
        await page.goto(f"{base}/v1/tracking/{code}")
        before = await page.evaluate(PAGE)
        assert before["lang"] == "nl" and before["forms"] == 2 and before["styled"], before  # rate, reopen
        assert "opgelost" in before["text"] and "Het afval is opgehaald." in before["text"]
        assert "De ploeg komt donderdag." in before["text"]
        await page.screenshot(ARTIFACTS / "tracking-resolved.png", width=820)

        await page.submit(
            "document.querySelector('input[name=score][value=\"4\"]').click();"
            "document.querySelector('input[name=satisfied][value=\"yes\"]').click();"
            "document.querySelector('#comment').value = 'Snel geholpen, dank!';"
            "document.querySelector('button[type=submit]').click();"
        )
        after = await page.evaluate(PAGE)
        assert after["path"] == f"/v1/tracking/{code}", after
        assert "Dank u wel voor uw beoordeling." in after["text"] and after["forms"] == 1  # reopen
        await page.screenshot(ARTIFACTS / "tracking-thanked.png", width=820)

    assert page.errors == [], page.errors
    stored = await intake.get(Feedback, signal["id"])
    assert (stored.score, stored.satisfied, stored.comment) == (4, True, "Snel geholpen, dank!")
