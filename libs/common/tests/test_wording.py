"""What residents read in their language (``civicsignals.common.wording``): which language a
resident is answered in, the direction of the text, dates, and the status names of every language."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from civicsignals.common import wording
from civicsignals.common.tenants import Tenant


def _tenant(languages: object) -> Tenant:
    return Tenant(
        code="gouda", folder=Path("/nonexistent"), settings={"name": "Gouda", "languages": languages}
    )


@pytest.mark.parametrize(
    ("written", "languages", "answered"),
    [
        ("nl", ["nl", "en"], "nl"),
        ("en", ["nl"], "en"),  # Dutch and English always (DESIGN §6)
        ("en-GB", ["nl", "en"], "en"),
        ("tr", ["nl", "en", "tr"], "tr"),
        ("tr", ["nl", "en"], "nl"),  # only where the municipality lists it
        ("pl", ["nl", "en", "pl", "ar"], "pl"),
        ("AR", ["nl", "en", "ar"], "ar"),
        ("de", ["nl", "en", "de"], "nl"),  # listed, but no texts in German: Dutch
        ("other", ["nl", "en"], "nl"),
        (None, ["nl", "en", "tr"], "nl"),
        ("tr", "tr", "nl"),  # a malformed setting grants nothing
    ],
)
def test_a_resident_is_answered_in_their_language_where_the_municipality_lists_it(
    written: str | None, languages: object, answered: str
) -> None:
    assert wording.resident_language(written, _tenant(languages)) == answered


def test_without_a_tenant_only_dutch_and_english() -> None:
    assert wording.resident_language("en", None) == "en"
    assert wording.resident_language("tr", None) == "nl"


def test_the_staff_pages_stay_in_dutch_and_english() -> None:
    assert wording.language_of("tr") == "nl" and wording.language_of("en") == "en"


def test_arabic_is_written_right_to_left() -> None:
    assert wording.text_direction("ar") == "rtl"
    assert {wording.text_direction(language) for language in ("nl", "en", "tr", "pl")} == {"ltr"}


@pytest.mark.parametrize(
    ("language", "written"),
    [
        ("nl", "7 december 2026"),
        ("en", "7 December 2026"),
        ("tr", "7 Aralık 2026"),  # noqa: RUF001 - Turkish's dotless i
        ("pl", "7 grudnia 2026"),
        ("ar", "7 ديسمبر 2026"),
    ],
)
def test_dates_in_each_language_on_the_tenants_day(language: str, written: str) -> None:
    assert wording.format_date(date(2026, 12, 7), language) == written
    # 23:30 UTC on the 6th is already the 7th in Amsterdam.
    assert wording.format_date(datetime(2026, 12, 6, 23, 30, tzinfo=UTC), language) == written


def test_every_language_names_every_status_and_month() -> None:
    assert set(wording.STATUS_LABELS) == set(wording.MONTHS) == set(wording.RESIDENT_LANGUAGES)
    for language in wording.RESIDENT_LANGUAGES:
        assert wording.STATUS_LABELS[language].keys() == wording.STATUS_LABELS["nl"].keys(), language
        assert len(wording.MONTHS[language]) == 12 and len(set(wording.MONTHS[language])) == 12, language
        assert all(label.strip() for label in wording.STATUS_LABELS[language].values()), language
