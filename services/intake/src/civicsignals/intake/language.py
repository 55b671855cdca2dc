"""A first guess at a text's language when the portal did not say (Dutch, English or unknown).

Counting frequent function words is enough to choose the language of replies for the two
languages every municipality answers in; the classifier may refine it later.
"""

from __future__ import annotations

import re

_WORDS = re.compile(r"[a-zà-ÿ']+")
_DUTCH = frozenset(
    [
        "de",
        "het",
        "een",
        "en",
        "van",
        "ik",
        "je",
        "dat",
        "niet",
        "op",
        "te",
        "zijn",
        "er",
        "met",
        "voor",
        "ook",
        "maar",
        "bij",
        "nog",
        "al",
        "wel",
        "naar",
        "heb",
        "hebben",
        "wordt",
        "worden",
        "mijn",
        "we",
        "wij",
        "ze",
        "hier",
        "daar",
        "geen",
        "uit",
        "over",
        "om",
        "wat",
        "kan",
        "moet",
        "deze",
        "dit",
    ]
)
_ENGLISH = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "of",
        "i",
        "you",
        "that",
        "not",
        "on",
        "to",
        "be",
        "are",
        "there",
        "with",
        "for",
        "also",
        "but",
        "at",
        "still",
        "all",
        "have",
        "has",
        "been",
        "my",
        "we",
        "they",
        "here",
        "no",
        "out",
        "about",
        "what",
        "can",
        "must",
        "this",
        "these",
        "it",
        "in",
        "was",
    ]
)


def guess_language(text: str) -> str | None:
    words = _WORDS.findall(text.lower())
    dutch = sum(word in _DUTCH for word in words)
    english = sum(word in _ENGLISH for word in words)
    if dutch == english or max(dutch, english) < 2:
        return None
    return "nl" if dutch > english else "en"
