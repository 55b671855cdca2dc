"""The language detector (``civicsignals.common.language``, used by intake and the classifier): on
the parallel Dutch and English sentences of xSID, on the residents' reports in Turkish, Polish
and Arabic of the cold-start bench (``bench/classifier/coldstart_reports_*.csv``), and on
messages in German, French, Spanish, Portuguese and Italian (``bench/classifier/language_other.csv``)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from civicsignals.common.language import detect_language


def test_xsid_dutch_and_english_sides(shared_data_file: Callable[[str], Path]) -> None:
    with shared_data_file("xsid_nl_en.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    dutch = sum(detect_language(r["text_nl"]) == "nl" for r in rows) / len(rows)
    english = sum(detect_language(r["text_en"]) == "en" for r in rows) / len(rows)
    wrong_way = sum(detect_language(r["text_nl"]) == "en" for r in rows) + sum(
        detect_language(r["text_en"]) == "nl" for r in rows
    )
    # Measured 0.961 and 0.965: the misses are short commands full of English song and film titles.
    assert dutch >= 0.95 and english >= 0.95
    assert wrong_way <= 20


BENCH = Path(__file__).resolve().parents[3] / "bench" / "classifier"


@pytest.mark.parametrize("language", ["tr", "pl", "ar"])
def test_residents_reports_in_turkish_polish_and_arabic(language: str) -> None:
    """100 reports each, with and without diacritics (as phones type them), Darija among the
    Arabic ones; written by people who did not see the word lists. Measured 100, 99 and 100: the
    Polish miss is a short question whose only long word is Dutch ("parkeervergunning"), read as
    Dutch, which a Polish resident would then be answered in."""
    with (BENCH / f"coldstart_reports_{language}.csv").open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    found = Counter(detect_language(text) for text in texts)
    assert found[language] >= 0.95 * len(texts), found
    assert found["en"] == 0, found


@pytest.mark.parametrize("language", ["de", "fr", "es", "pt", "it"])
def test_reports_in_languages_answered_in_dutch_are_other(language: str) -> None:
    """50 messages each in German, French, Spanish, Portuguese and Italian (``language_other.csv``),
    written by people who did not see the word lists, many with Dutch street names and municipal
    words in them ("grofvuil", "Kerkstraat"; 32 of the Italian ones). They are ``other``: answered
    in Dutch, and counted as other languages in insights, not as Dutch. Measured 49, 49, 49, 46
    and 48 of 50 (before these languages' frequent words were scored: 10, 18, 15, 16 and 27, most
    of the rest read as Dutch)."""
    with (BENCH / "language_other.csv").open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle) if row["language"] == language]
    assert len(texts) == 50
    found = Counter(detect_language(text) for text in texts)
    assert found["other"] >= 0.9 * len(texts), found


def test_dutch_and_english_reports_are_not_taken_for_the_other_languages() -> None:
    for name in ("coldstart_reports.csv", "coldstart_reports_en.csv"):
        with (BENCH / name).open(encoding="utf-8", newline="") as handle:
            found = Counter(detect_language(row["text"]) for row in csv.DictReader(handle))
        assert set(found) <= {"nl", "en"}, (name, found)
        assert found["en" if name.endswith("_en.csv") else "nl"] >= 0.9 * sum(found.values()), (name, found)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Er ligt al drie dagen afval naast de container op de Kerkstraat.", "nl"),
        ("lantaarnpaal kapot", "nl"),
        ("Één café is geïnd", "nl"),
        ("The bin on our street has not been emptied for two weeks.", "en"),
        ("broken streetlight", "en"),
        ("Dzień dobry, na ulicy leżą śmieci", "pl"),
        ("prosze o naprawe lampy, juz tydzien nie dziala", "pl"),
        ("Merhaba, sokakta çöp var", "tr"),
        ("sokak lambasi yanmiyor, lutfen bakin", "tr"),
        ("السلام عليكم، الزبالة ما تجمعتش من أسبوع", "ar"),
        ("Die Straßenlaterne ist seit Tagen kaputt", "other"),
        ("La poubelle de notre rue n'a pas été vidée depuis une semaine", "other"),
        ("Hay basura en la calle desde hace tres días", "other"),
        ("Het is weer een zooitje op de Kerkstraat", "nl"),
        ("На улице мусор", "other"),  # noqa: RUF001 - Cyrillic on purpose
        ("12345 !!!", "other"),
        ("", "other"),
    ],
)
def test_examples(text: str, language: str) -> None:
    assert detect_language(text) == language
