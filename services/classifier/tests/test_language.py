"""The nl/en/other language detector, on the parallel Dutch and English sentences of xSID."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from civicsignals.classifier.language import detect_language


def test_xsid_dutch_and_english_sides(shared_data_file: Callable[[str], Path]) -> None:
    with shared_data_file("xsid_nl_en.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    dutch = sum(detect_language(r["text_nl"]) == "nl" for r in rows) / len(rows)
    english = sum(detect_language(r["text_en"]) == "en" for r in rows) / len(rows)
    wrong_way = sum(detect_language(r["text_nl"]) == "en" for r in rows) + sum(
        detect_language(r["text_en"]) == "nl" for r in rows
    )
    # Measured 0.963 and 0.966: the misses are short commands full of English song and film titles.
    assert dutch >= 0.95 and english >= 0.95
    assert wrong_way <= 20


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Er ligt al drie dagen afval naast de container op de Kerkstraat.", "nl"),
        ("lantaarnpaal kapot", "nl"),
        ("Één café is geïnd", "nl"),
        ("The bin on our street has not been emptied for two weeks.", "en"),
        ("broken streetlight", "en"),
        ("Dzień dobry, na ulicy leżą śmieci", "other"),
        ("Merhaba, sokakta çöp var", "other"),
        ("На улице мусор", "other"),  # noqa: RUF001 - Cyrillic on purpose
        ("12345 !!!", "other"),
        ("", "other"),
    ],
)
def test_examples(text: str, language: str) -> None:
    assert detect_language(text) == language
