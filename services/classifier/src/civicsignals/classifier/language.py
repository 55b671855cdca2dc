"""Which language a signal is written in: Dutch, English or something else.

The language sets the language of the replies a resident gets and shows in insights, so it is
needed on every signal, also when the portal did not say. A full language identifier (fastText,
CLD3) would be a large dependency for a three-way answer; residents' reports are short, but they
are full of function words ("de", "het", "is", "niet" / "the", "is", "not"), and those settle
Dutch against English almost always. So this is a small scorer:

* each word found in the Dutch or English list of frequent words scores a point for that language
  (words both languages share, such as "is", "in", "over", are in neither list);
* a few spelling patterns that are typical of one language ("ij", "oe", "sch", "aa" in Dutch;
  "th", "wh", "ing" at a word end in English) add half a point each, which decides texts that are
  mostly nouns ("lantaarnpaal kapot", "broken streetlight");
* a text in which many words have letters that neither language uses (ł, ś, ş, ğ, ñ ...) is
  ``"other"`` (Polish, Turkish, Spanish ...);
* the larger score wins if it is at least 1 and ahead by a margin; otherwise the answer is
  ``"other"`` (also for texts in another script, or with no letters at all).

Measured on the Dutch and English sides of xSID (800 parallel voice-assistant commands, most of
them four to eight words): see ``tests/test_language.py``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

__all__ = ["Language", "detect_language"]

Language = Literal["nl", "en", "other"]

_DUTCH = frozenset(
    """
    de het een en of maar want dat die dit deze wat wie waar wanneer hoe waarom welke ik jij je u hij
    zij ze wij we jullie mijn jouw uw zijn haar ons onze hun er hier daar niet geen nooit wel ook nog
    al toch dus dan als om te tot van voor na naar op aan bij met door uit tegen tussen zonder sinds
    ben bent was waren wordt worden werd heb hebt heeft hebben had hadden kan kun kunt kunnen kon zou
    zouden wil wilt willen moet moeten mag mogen ga gaat gaan doe doet doen staat staan ligt liggen zit
    zitten erg heel veel meer zeer graag alstublieft dank bedankt beste geachte hallo goedemorgen
    goedemiddag vandaag morgen gisteren straat weg alweer steeds elke iedere iets niets iemand
    niemand mee moeten weer even nu ons zich zelf kapot vol vuil gemeente melding alle alles laat
    laten zien kijk vind vinden speel spelen voeg toe zet geef stuur maak annuleer verwijder wis
    koud warm buiten binnen hoeveel uur dag week maand jaar tijd bericht vraag klacht huis auto
    fiets stoep boom buurt wijk buren overlast lawaai gevaarlijk onze deur naast achter tegenover
    is in over me we has had
        """.split()  # noqa: SIM905 - a block of words reads better than quoted strings
)
_ENGLISH = frozenset(
    """
    the a an and or but because that this these those what who where when how why which you he she
    they we my your his her our their there here not no never also still yet so then than to of for
    from with without by at on into about against between since am are was were be been being has
    have had can could would should will shall may might must do does did done get got please thanks
    thank hello dear today tomorrow yesterday street road again every each something nothing someone
    nobody it its is just now some any all very much more most there's it's i'm don't can't won't
    broken full dirty council report i me show find play add set give send make cancel delete remove
    cold warm outside inside many time day week month year message question complaint house car
    bike pavement tree neighbourhood neighborhood neighbours noise dangerous door next behind
        """.split()  # noqa: SIM905
)
# Words in both lists would score for both; keep each only where it is unambiguous.
_SHARED = _DUTCH & _ENGLISH
_DUTCH -= _SHARED
_ENGLISH -= _SHARED

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_DUTCH_PATTERNS = (
    re.compile(r"ij"),
    re.compile(r"oe"),
    re.compile(r"sch"),
    re.compile(r"aa|ee|uu"),
    re.compile(r"(heid|lijk|tje|tjes|ing|en)$"),
)
_ENGLISH_PATTERNS = (
    re.compile(r"th"),
    re.compile(r"^wh"),
    re.compile(r"(ing|ly|tion|ness|ed)$"),
    re.compile(r"[aeiou]y"),
)
#: Letters that Dutch and English texts use (with the accents Dutch writes: "één", "café", "geïnd").
_OWN_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz'éèëêïíìîóòöôúùüûáàäâç")
#: A text where at least this share of the words has other letters (ł, ş, ő, ñ ...) is another language.
_FOREIGN_WORDS = 0.2
#: A win needs at least this lead over the other language, relative to the winner's score.
_MARGIN = 0.25


def _is_latin(ch: str) -> bool:
    try:
        return unicodedata.name(ch).startswith("LATIN")
    except ValueError:
        return False


def _strip_accents(word: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if not unicodedata.combining(ch))


def detect_language(text: str) -> Language:
    """``"nl"``, ``"en"`` or ``"other"`` for a text (a report, a question, a conversation turn).

    Deterministic and cheap (a few microseconds per short text); never raises.
    """
    lowered = unicodedata.normalize("NFKC", text[:2000]).casefold()
    words = _WORD.findall(lowered)
    letters = [ch for word in words for ch in word]
    if not letters:
        return "other"
    if sum(1 for ch in letters if _is_latin(ch)) < 0.7 * len(letters):
        return "other"  # Arabic, Cyrillic, Chinese, ...: neither Dutch nor English
    foreign = sum(1 for word in words if not _OWN_LETTERS.issuperset(word))
    if foreign >= _FOREIGN_WORDS * len(words):
        return "other"  # Polish, Turkish, Spanish ...: Latin script with letters of their own
    nl = en = 0.0
    for word in (_strip_accents(w) for w in words):
        if word in _DUTCH:
            nl += 1.0
        elif word in _ENGLISH:
            en += 1.0
        else:
            nl += 0.5 * sum(1 for p in _DUTCH_PATTERNS if p.search(word))
            en += 0.5 * sum(1 for p in _ENGLISH_PATTERNS if p.search(word))
    best, other, language = (nl, en, "nl") if nl >= en else (en, nl, "en")
    if best < 1.0 or best - other < _MARGIN * best:
        return "other"
    return language  # type: ignore[return-value]
