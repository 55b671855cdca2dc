"""Residents who write in Turkish, Polish or Arabic read their tracking page, its forms and their
mistakes in that language, when the municipality lists it in ``languages`` (here gouda does:
``nl, en, tr, pl, ar``; utrecht keeps the default ``nl, en``). No language is given by the portal:
intake's own detection decides, on the real intake app and database.
"""

# Turkish spells with the dotless i (U+0131) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import html as html_escape
from typing import Any

import pytest

from civicsignals.common.wording import RESIDENT_LANGUAGES, STATUS_LABELS, format_date
from civicsignals.intake import access_words, accessrequest, privacy
from civicsignals.intake.tracking_words import FIELD_ERRORS, WORDS

from .conftest import SIGNAL, Intake
from .test_resident_pages import BROWSER, DUE, move_case

TEXTS = {
    "tr": "Sokağımızdaki lamba bir haftadır yanmıyor, lütfen tamir edin.",
    "pl": "Dzień dobry, od tygodnia nie działa latarnia przy naszym bloku. Proszę o naprawę.",
    "ar": "السلام عليكم، مصباح الشارع أمام بيتنا لا يعمل منذ أسبوع.",
}


@pytest.fixture
def gouda_tenant_settings() -> dict[str, Any]:
    return {"languages": ["nl", "en", "tr", "pl", "ar"]}


async def reported_in(intake: Intake, text: str, key: str | None = None) -> dict[str, Any]:
    created = await intake.post_signal({**SIGNAL, "text": text}, key=key)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def shown(text: str) -> str:
    """``text`` as the page writes it (escaped: the Polish words hold no quotes, some do)."""
    return html_escape.escape(text, quote=True)


@pytest.mark.parametrize("language", ["tr", "pl", "ar"])
async def test_the_tracking_page_is_in_the_language_the_resident_wrote_in(
    intake: Intake, language: str
) -> None:
    signal = await reported_in(intake, TEXTS[language])
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "in_progress", 2, note="De ploeg komt donderdag.")
    page = await intake.client.get(f"/v1/tracking/{signal['tracking_code']}", headers=BROWSER)
    assert page.status_code == 200
    direction = "rtl" if language == "ar" else "ltr"
    assert f'<html lang="{language}" dir="{direction}">' in page.text
    words, labels = WORDS[language], STATUS_LABELS[language]
    for expected in (words["title"], words["history"], labels["in_progress"], labels["assigned"]):
        assert shown(expected) in page.text, expected
    assert shown(str(format_date(DUE, language))) in page.text
    assert "De ploeg komt donderdag." in page.text  # staff's note stays as written
    assert (
        WORDS["nl"]["title"] not in page.text and labels["in_progress"] != STATUS_LABELS["nl"]["in_progress"]
    )


async def test_a_form_with_mistakes_comes_back_with_them_named_in_polish(intake: Intake) -> None:
    signal = await reported_in(intake, TEXTS["pl"])
    await move_case(intake, signal, "assigned", 1)
    await move_case(intake, signal, "resolved", 2)
    wrong = await intake.client.post(
        f"/v1/tracking/{signal['tracking_code']}/feedback", data={"score": "7"}, headers=BROWSER
    )
    assert wrong.status_code == 422
    assert (
        shown(FIELD_ERRORS["pl"]["score"]) in wrong.text
        and shown(FIELD_ERRORS["pl"]["satisfied"]) in wrong.text
    )
    assert FIELD_ERRORS["nl"]["score"] not in wrong.text


async def test_a_municipality_that_does_not_list_the_language_answers_in_dutch(intake: Intake) -> None:
    signal = await reported_in(intake, TEXTS["tr"], key=intake.utrecht.key)
    page = await intake.client.get(f"/v1/tracking/{signal['tracking_code']}", headers=BROWSER)
    assert '<html lang="nl" dir="ltr">' in page.text and WORDS["nl"]["title"] in page.text
    assert WORDS["tr"]["title"] not in page.text


async def test_an_access_document_explains_itself_in_the_language_the_resident_wrote_in(
    intake: Intake,
) -> None:
    """A person who wrote in Turkish and in Polish asks what the municipality keeps about them
    (AVG article 15): the document explains itself in Dutch and English, as always, and in
    Turkish and Polish, in the order they first wrote in them, with the same parts in each. For a
    municipality that does not list those languages, Dutch and English only."""
    reporter = {"name": "Ayşe Yılmaz", "email": "ayse@example.org", "consent": True}
    for text in (TEXTS["tr"], TEXTS["pl"], TEXTS["tr"]):
        created = await intake.post_signal({**SIGNAL, "text": text, "reporter": reporter})
        assert created.status_code == 201, created.text
    cipher = intake.context.cipher

    async def document(tenant_config: Any) -> dict[str, Any]:
        async with intake.runtime.sessions() as session:
            ids = await privacy.signals_of_person(session, cipher, "gouda", "email", "ayse@example.org")
            return await accessrequest.access_document(
                session,
                cipher,
                "gouda",
                ids,
                selected_by="email",
                selected_value="ayse@example.org",
                tenant_config=tenant_config,
            )

    answered = await document(intake.context.tenant("gouda"))
    assert list(answered["explanation"]) == ["nl", "en", "tr", "pl"]
    assert list(answered["summary"]) == ["nl", "en", "tr", "pl"]
    assert answered["selected_by"] == {
        "nl": "e-mailadres",
        "en": "e-mail address",
        "tr": access_words.SELECTOR_LABELS["tr"]["email"],
        "pl": access_words.SELECTOR_LABELS["pl"]["email"],
        "value": "ayse@example.org",
    }
    for language in ("tr", "pl"):
        assert answered["explanation"][language]["mails"] == access_words.EXPLANATION[language]["mails"]
        assert set(answered["explanation"][language]) == set(answered["explanation"]["en"])
        assert "3" in answered["summary"][language] and "gouda" in answered["summary"][language]
    assert answered["explanation"]["tr"]["document"] != answered["explanation"]["en"]["document"]

    unlisted = await document(None)  # no tenant folder: no language beyond Dutch and English
    assert list(unlisted["explanation"]) == ["nl", "en"] and list(unlisted["summary"]) == ["nl", "en"]


def test_every_language_of_the_access_document_has_every_part() -> None:
    """The same parts, the same quoted field names and placeholders, in every language: a reader
    must find each field the explanation names in the document itself."""
    english = access_words.EXPLANATION["en"]
    for language in RESIDENT_LANGUAGES:
        texts = access_words.EXPLANATION[language]
        assert set(texts) == set(english), language
        for part, text in texts.items():
            for field in ("signal_id", "text_redacted", "status_history", "case_notes", "erased_at"):
                if field in english[part]:
                    assert field in text, (language, part, field)
        assert access_words.SUMMARY_SOME[language].format(tenant="gouda", count=3).count("3") >= 1
        assert "gouda" in access_words.SUMMARY_NONE[language].format(tenant="gouda")
        assert set(access_words.SELECTOR_LABELS[language]) == {"email", "phone", "tracking_code"}
        for lines in (access_words.CASE_NOTES_MISSING, access_words.MAILS_MISSING):
            assert lines[language] != lines["en"] or language == "en"
