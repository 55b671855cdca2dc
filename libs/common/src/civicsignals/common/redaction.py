"""Redaction of personal data in free text before it leaves the service that received it: a
resident's words in intake, a staff member's or partner's public note in routing.

DESIGN §2 ("No personal data on the bus") allows free text on the bus only after redaction of
e-mail addresses, phone numbers, BSN numbers that pass the 11-check, IBANs, licence plates and
postcodes with a house number. Each value is replaced by a placeholder (``[EMAIL]``, ``[PHONE]``,
``[BSN]``, ``[IBAN]``, ``[KENTEKEN]``, ``[ADRES]``, ``[POSTCODE]``) rather than deleted, so that the
classifier still learns that "a phone number was given here" (a strong hint for e.g. a callback
request) without ever seeing the number.

This module is deliberately framework-free (plain Python and :mod:`re`), so that the HTTP API,
the NATS workers and the tests can all call the same function without pulling in a framework.

Design choices, and why:

* **Recall before precision, but not blindly.** A missed phone number is a data leak; an
  over-redacted reference number only costs the classifier a little context. Where a kind has a
  checksum (BSN, IBAN), the checksum decides, so ordinary 9-digit numbers and order codes survive.
* **Passes run in a fixed order**, and what a pass produces (a placeholder, or text it decided to
  protect: a date, an invalid IBAN) is frozen, so a later pass never matches inside, across or
  on top of an earlier result:

  1. ``EMAIL`` first: a local part may hold digits, a phone number or a plate
     (``0612345678@sms.example.nl``), and the whole address must go as one.
  2. ``IBAN``: its BBAN holds 10-digit runs that look like a phone number (``0417164300``) and
     9-digit runs that may pass the 11-check. An IBAN-shaped string with a wrong checksum, written
     contiguously or in the printed groups of four, is left as it is *and frozen*, so the phone
     or BSN pass does not redact half of it.
  3. Dates are protected (not redacted): "01/01/1900 00.00" must not become ``01/[PHONE]``.
  4. ``PHONE`` before ``BSN``: the 9 digits after ``+31`` may pass the 11-check by chance and must
     end up as one ``[PHONE]``, not ``+31 [BSN]``. Phone patterns only accept *complete*
     numbers (10 digits nationally, 9 after ``+31``/``0031``, 8 to 15 digits in E.164, and a
     Dutch mobile number in international form without the plus, ``31`` ``6`` and 8 digits, as
     WhatsApp links and exports write it: ``31612345678``), so a 9-digit number is never a
     phone number: it becomes ``[BSN]`` if it passes the 11-check and
     is written as a BSN (``123456782``, ``123.456.782``, ``123 456 782``, ``1234.56.782``), and
     otherwise stays, even when it starts with ``0`` (an incomplete phone number such as
     ``06-1234567`` is left alone).
  5. ``BSN``.
  6. ``KENTEKEN`` (licence plate): needs the dashes and letters, which nothing before produces.
  7. ``ADRES`` / ``POSTCODE`` last: a postcode needs two letters after four digits, and the house
     number next to it may be any small number, so everything more specific must be gone first.

* **Bare postcodes are redacted too**, as ``[POSTCODE]``: a six-character Dutch postcode covers
  about 15 to 20 addresses, which is finer than the "about 100 m" DESIGN §2 allows for
  locations on the bus. A postcode with a house number before or after it (``2801 AB 12``,
  ``2801AB 12a``, ``Kerkstraat 12, 2801 AB``) is one address and becomes ``[ADRES]``. To avoid
  eating ordinary Dutch ("in 2025 en 2026"), a postcode written in lower case *with* a space
  (``2801 ab``) only counts when a house number is next to it and its letters are not a common
  word; in lower case without a space, unit abbreviations (``1000km``) are not postcodes.
* **Dashes as word processors type them.** Inside a phone number, a BSN and a date, the Unicode
  hyphens and dashes (U+2010 hyphen, U+2011 non-breaking hyphen, U+2012 figure dash, U+2013 en
  dash, U+2014 em dash, U+2015 horizontal bar) count as a ``-``: ``06\u201112345678`` is a
  phone number, and ``28\u201111\u20112026`` a date that stays. Spaces may be normal, no-break
  (U+00A0) or narrow no-break (U+202F) everywhere.
* **Not covered** (kept out on purpose, so the rules stay predictable): a street name with a
  house number but no postcode ("Kerkstraat 12"), names of people, obfuscated e-mail addresses
  ("jan at example dot nl"), plates written without dashes, 8-digit BSNs without the leading
  zero, digits other than ASCII 0-9 (full-width, Arabic-Indic), short service numbers
  (0800/0900/14 0xx), which are not personal, and Dutch landline numbers in international form
  without ``+`` or ``00`` (``31101234567``: any 11-digit number would look like one; only the
  mobile form ``316`` is common enough, and specific enough, to take).

Speed: every pattern is compiled once at import, and a text without a digit or an ``@`` returns at
once, because intake redacts every signal and every conversation turn on its hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "PLACEHOLDERS",
    "Kind",
    "is_valid_bsn",
    "is_valid_iban",
    "redact",
    "redact_with_counts",
]


class Kind(StrEnum):
    """The kinds of personal data this module redacts; the values are stable metric labels."""

    EMAIL = "email"
    IBAN = "iban"
    PHONE = "phone"
    BSN = "bsn"
    KENTEKEN = "kenteken"
    ADRES = "adres"
    POSTCODE = "postcode"


PLACEHOLDERS: Final[Mapping[Kind, str]] = MappingProxyType(
    {
        Kind.EMAIL: "[EMAIL]",
        Kind.IBAN: "[IBAN]",
        Kind.PHONE: "[PHONE]",
        Kind.BSN: "[BSN]",
        Kind.KENTEKEN: "[KENTEKEN]",
        Kind.ADRES: "[ADRES]",
        Kind.POSTCODE: "[POSTCODE]",
    }
)


class _Keep(Enum):
    """What a pass does with a candidate that turns out not to be personal data."""

    LEAVE = "leave"  # keep the text; a later pass may still look at it
    PROTECT = "protect"  # keep the text and hide it from later passes (a date, an invalid IBAN)


# A decision for one regex match: redact it as a kind, or keep it.
_Decide = Callable[[re.Match[str]], Kind | _Keep]
# The text being redacted, cut into pieces; ``True`` marks a frozen piece (a placeholder, or text
# that a pass decided to protect) that later passes must not touch.
_Segments = list[tuple[str, bool]]

# Spaces as residents (and word processors) type them: normal, no-break and narrow no-break.
_SP: Final = "[ \u00a0\u202f]"
# Dashes as word processors type them, for use inside a character class beside "-": hyphen,
# non-breaking hyphen, figure dash, en dash, em dash, horizontal bar (U+2010 to U+2015).
_DASHES: Final = "\u2010-\u2015"


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

_BSN_WEIGHTS: Final = (9, 8, 7, 6, 5, 4, 3, 2, -1)
_BSN_SEPARATORS: Final = re.compile(rf"[ .\-\u00a0\u202f{_DASHES}]")


def is_valid_bsn(digits: str) -> bool:
    """Whether ``digits`` is a BSN: 9 digits that pass the 11-check ("elfproef").

    Dots, dashes and spaces are ignored, so ``123.456.782`` and ``123 456 782`` are accepted as
    written. The 11-check is 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 ≡ 0 (mod 11); all zeros passes the
    arithmetic but is no BSN. Only the checksum makes a 9-digit number a BSN: without it, every
    order number, amount or meter reading of nine digits would be redacted.
    """
    compact = _BSN_SEPARATORS.sub("", digits)
    if len(compact) != 9 or not compact.isascii() or not compact.isdigit():
        return False
    if compact == "000000000":
        return False
    total = sum(weight * int(digit) for weight, digit in zip(_BSN_WEIGHTS, compact, strict=True))
    return total % 11 == 0


# IBAN lengths per country (SWIFT IBAN registry). A country not listed here is not accepted: the
# exact length per country is what keeps arbitrary code-like strings from passing mod-97 by chance
# (1 in 97). Add a country here when the registry adds it.
_IBAN_LENGTHS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
        "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
        "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
        "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
        "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
        "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
        "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
        "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
        "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
        "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
    }
)  # fmt: skip
_IBAN_SHAPE: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+")
_IBAN_SPACES: Final = re.compile(_SP)


def is_valid_iban(text: str) -> bool:
    """Whether ``text`` is an IBAN: known country, that country's length, ISO 13616 mod-97.

    Spaces (as in the printed form ``NL91 ABNA 0417 1643 00``) and case are ignored. Check digits
    must lie in 02..98, as ISO 13616 computes them; ``00``, ``01`` and ``99`` never occur in a real
    IBAN even where mod-97 would accept them.
    """
    compact = _IBAN_SPACES.sub("", text).upper()
    if not compact.isascii() or _IBAN_SHAPE.fullmatch(compact) is None:
        return False
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    if not 2 <= int(compact[2:4]) <= 98:
        return False
    rearranged = compact[4:] + compact[:4]
    # int(c, 36) maps 0-9 to themselves and A-Z to 10-35, exactly the ISO 7064 letter values.
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


# --------------------------------------------------------------------------------------------
# Patterns (compiled once; the speed of intake's hot path depends on it)
# --------------------------------------------------------------------------------------------

# Every kind needs a digit or an "@": a text with neither is returned untouched at once.
_MAY_HOLD_DATA: Final = re.compile(r"[0-9@]")

# Local part: starts with a word character (so a leading quote or bracket stays outside), may
# hold dots, plus-tags, percent signs, dashes and apostrophes (o'brien). Domain: labels separated
# by dots, ending in an alphabetic top-level domain; unicode word characters allow IDN domains.
_EMAIL: Final = re.compile(
    r"(?<![\w.%+-])[\w%+-][\w.%+'-]*@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])",
)


def _iban_pattern() -> re.Pattern[str]:
    """One alternative per IBAN length, each listing the countries of that length.

    Matching the exact length per country lets a sentence continue right after an IBAN in the
    printed groups of four ("BE68 5390 0754 7034 is mijn rekening") without the next word being
    taken for part of it. A single space (or no-break space) may separate any two characters.
    """
    by_length: dict[int, list[str]] = {}
    for country, length in sorted(_IBAN_LENGTHS.items()):
        by_length.setdefault(length, []).append(country)
    alternatives = [
        f"(?:{'|'.join(countries)})[0-9]{{2}}(?:{_SP}?[A-Z0-9]){{{length - 4}}}"
        for length, countries in sorted(by_length.items())
    ]
    return re.compile(
        rf"(?<![A-Za-z0-9])(?:{'|'.join(alternatives)})(?![A-Za-z0-9])", re.IGNORECASE | re.ASCII
    )


_IBAN: Final = _iban_pattern()
# How an IBAN is written: contiguous, or printed in groups of four (the last one 1 to 4 long).
_IBAN_WRITTEN: Final = re.compile(
    rf"[A-Za-z0-9]+|[A-Za-z0-9]{{4}}(?:{_SP}[A-Za-z0-9]{{4}})*(?:{_SP}[A-Za-z0-9]{{1,4}})?"
)

# Dates are not personal data, but "01/01/1900 00.00" holds the digits of a phone number. They
# are found and protected before the phone pass: day-month-year with a 4-digit year and one kind
# of separator (a Unicode dash counts as "-", as in phone numbers), and ISO 8601
# year-month-day. A "date" that continues a number through phone separators ("+1 (10)
# 01-01-2020", "+31 6 12-03-2026") is the tail of a phone number instead.
_DATE: Final = re.compile(
    rf"""
    (?<![0-9]) (?<![0-9][ .\-/(){_DASHES}]) (?<![0-9][ .\-/(){_DASHES}]{{2}})
    (?<![0-9][ .\-/(){_DASHES}]{{3}})
    (?: (?P<day>[0-9]{{1,2}}) (?P<sep>[\-./{_DASHES}]) (?P<month>[0-9]{{1,2}}) (?P=sep) [0-9]{{4}}
      | [0-9]{{4}} - (?P<iso_month>[0-9]{{2}}) - (?P<iso_day>[0-9]{{2}})
    )
    (?![0-9]) (?![\-./{_DASHES}][0-9])
    """,
    re.VERBOSE,
)

# Separators inside a phone number: 1 to 3 of space (also no-break), dot, dash (also the Unicode
# dashes), slash and brackets, which covers "06-12345678", "06\u201112345678", "06 - 1234 5678",
# "(010) 123 4567", "+31 (0)6" and "+1 (555) 123-4567".
_PSEP: Final = rf"(?:[ \u00a0\u202f.\-/(){_DASHES}]{{1,3}})"
_PHONE: Final = re.compile(
    rf"""
    (?<![\w+])               # not inside a word or a longer number, not a second "+"
    (?<![0-9][\-.{_DASHES}]) # not the tail of "2026-0612..." or "1.06..." (dates, amounts)
    (?:
        # Dutch number in international form: +31 / 0031, an optional trunk 0 or (0), 9 digits.
        (?:\+|00)31 (?:{_PSEP}?0)? (?:{_PSEP}?[0-9]){{9}}
      |
        # Any other international number, E.164: a country code and 8 to 15 digits in all.
        (?:\+|00)[1-9] (?:{_PSEP}?[0-9]){{7,14}}
      |
        # Dutch mobile number in international form without the plus ("31612345678", as in
        # wa.me links): 31, 6 and 8 digits. Only mobiles: "31" and 9 other digits could be any
        # number, "316" and 8 digits is specific enough. One space or dash may follow the 31.
        31 [ \u00a0\u202f\-{_DASHES}]? 6 (?:{_PSEP}?[0-9]){{8}}
      |
        # Dutch national number: 0 and 9 digits (06 + 8 for mobiles, area code + subscriber).
        (?![0-9]{{1,2}}[\-./{_DASHES}][0-9]{{1,2}}[\-./{_DASHES}][0-9]{{4}}(?![0-9]))  # not a date
        (?:\(0(?=[1-9][0-9]{{0,3}}\))  # "(" only around an area code, as in "(010) 123 4567"
          | 0(?![0.,])       # "00" is international, "0.5" and "0,50" are numbers
        )
        (?:{_PSEP}?[0-9]){{9}}
    )
    (?![0-9])                # a complete number, not the start of a longer one
    """,
    re.VERBOSE,
)

# BSN as written: 9 digits, 3-3-3 with one kind of separator (a Unicode dash too, as a word
# processor types it), or the official 4-2-3 with dots.
_BSN: Final = re.compile(
    rf"""
    (?<![\w+]) (?<![0-9][.,\-{_DASHES}])
    (?: [0-9]{{9}}
      | [0-9]{{3}} (?P<sep>[ .\-\u00a0\u202f{_DASHES}]) [0-9]{{3}} (?P=sep) [0-9]{{3}}
      | [0-9]{{4}} \. [0-9]{{2}} \. [0-9]{{3}}
    )
    (?!\w) (?![.,\-{_DASHES}][0-9])   # not part of an amount (123.456.789,00) or a longer number
    """,
    re.VERBOSE,
)

# Dutch licence plates, by sidecode (X a letter, 9 a digit). Every sidecode has both letters and
# digits, and the dashes are required, so ordinary words and dates (all digits) never match. A
# dash may be one a word processor typed (U+2010 to U+2015), as in phone numbers and dates.
_SIDECODES: Final = (
    "XX-99-99",  # 1
    "99-99-XX",  # 2
    "99-XX-99",  # 3
    "XX-99-XX",  # 4
    "XX-XX-99",  # 5
    "99-XX-XX",  # 6
    "99-XXX-9",  # 7
    "9-XXX-99",  # 8
    "XX-999-X",  # 9
    "X-999-XX",  # 10
    "XXX-99-X",  # 11
    "X-99-XXX",  # 12
    "9-XX-999",  # 13
    "999-XX-9",  # 14
)


def _kenteken_pattern() -> re.Pattern[str]:
    """The sidecodes as one alternation, letters in either case, not inside a longer token."""

    def as_regex(sidecode: str) -> str:
        return "".join({"X": "[A-Za-z]", "9": "[0-9]", "-": f"[\\-{_DASHES}]"}[char] for char in sidecode)

    alternatives = "|".join(as_regex(sidecode) for sidecode in _SIDECODES)
    return re.compile(rf"(?<![\w\-{_DASHES}])(?:{alternatives})(?![\w\-{_DASHES}])")


_KENTEKEN: Final = _kenteken_pattern()
# "1-jan-26" has the shape of sidecode 8, "12-mei-3" of sidecode 7; plates never spell a month.
_MONTHS: Final = frozenset(
    {
        "jan", "feb", "mrt", "maa", "apr", "mei", "jun", "jul", "aug", "sep", "okt", "oct", "nov", "dec",
        "mar", "may"
    }
)  # fmt: skip
_LETTER_GROUP: Final = re.compile("[A-Za-z]+")

# Letter pairs never used in postcodes (SA, SD and SS are excluded by PostNL).
_POSTCODE_UNUSED: Final = ("sa", "sd", "ss")
# "1000km", "2500kg": in lower case and without a space, these are amounts, not postcodes.
_UNITS: Final = (
    "km", "kg", "mg", "ml", "cl", "dl", "cm", "mm", "gb", "mb", "kb", "tb", "kw", "mw", "gw", "hz",
    "pk", "cc", "ct",
)  # fmt: skip
# "in 2025 en 2026": in lower case with a space, a common word is not a postcode.
_COMMON_WORDS: Final = (
    "aa", "al", "an", "as", "at", "be", "by", "de", "do", "en", "er", "go", "he", "ik", "if", "in",
    "is", "it", "je", "me", "my", "na", "no", "nu", "of", "om", "on", "op", "or", "so", "te", "to",
    "tm", "up", "us", "we", "ze", "zo",
)  # fmt: skip


def _none_of(words: Iterable[str]) -> str:
    """A lookahead that refuses these words, in any case, as whole words."""
    return rf"(?!(?i:{'|'.join(words)})(?![\w]))"


# A Dutch postcode is 1000-9999 and two letters. Written in capitals (with or without a space) or
# as "2801ab", it counts on its own; as "2801 ab" only with a house number next to it. The rules
# live in the pattern rather than in a check afterwards, so that the regex engine backtracks to
# the reading that is a postcode ("1000AA 1000 er" is postcode 1000AA, number 1000, not number
# "1000AA" and postcode "1000 er").
_PC_DIGITS: Final = "[1-9][0-9]{3}"
_PC_CAPITALS: Final = rf"{_SP}?{_none_of(_POSTCODE_UNUSED)}[A-Z]{{2}}"
_PC_JOINED: Final = rf"{_none_of((*_POSTCODE_UNUSED, *_UNITS))}[A-Za-z]{{2}}"
_PC_SPACED: Final = rf"{_SP}{_none_of((*_POSTCODE_UNUSED, *_COMMON_WORDS))}[A-Za-z]{{2}}"
_POSTCODE_ALONE: Final = rf"{_PC_DIGITS}(?:{_PC_CAPITALS}|{_PC_JOINED})(?![\w])"
_POSTCODE_NEXT_TO_NUMBER: Final = rf"{_PC_DIGITS}(?:{_PC_CAPITALS}|{_PC_JOINED}|{_PC_SPACED})(?![\w])"
# A house number 1-99999 with an optional addition ("12a", "12-A", "12-bis", "12-14"). "Next to"
# means directly before or after the postcode, with spaces and at most one comma between. A
# number that starts the next postcode ("2801 AB, 2802 CD 4") is not this postcode's number.
_HOUSE_NUMBER: Final = (
    rf"(?!{_POSTCODE_NEXT_TO_NUMBER})[1-9][0-9]{{0,4}}(?:-?[A-Za-z]{{1,3}}|-[0-9]{{1,4}})?(?![\w])"
)
_NEAR: Final = rf"(?:{_SP}*,{_SP}*|{_SP}+)"
_ADRES: Final = re.compile(
    rf"""
    (?<![\w.,\-])
    (?: (?P<before>{_HOUSE_NUMBER}) {_NEAR} {_POSTCODE_NEXT_TO_NUMBER} (?:{_NEAR}{_HOUSE_NUMBER})?
      | {_POSTCODE_NEXT_TO_NUMBER} {_NEAR} (?P<after>{_HOUSE_NUMBER})
      | {_POSTCODE_ALONE}
    )
    """,
    re.VERBOSE,
)


# --------------------------------------------------------------------------------------------
# Decisions per kind
# --------------------------------------------------------------------------------------------


def _decide_email(_match: re.Match[str]) -> Kind | _Keep:
    return Kind.EMAIL


def _decide_iban(match: re.Match[str]) -> Kind | _Keep:
    """Valid: redact. Invalid but written like an IBAN: protect it, so its digits stay whole."""
    candidate = match.group()
    if is_valid_iban(candidate):
        return Kind.IBAN
    if _IBAN_WRITTEN.fullmatch(candidate) is not None:
        return _Keep.PROTECT
    return _Keep.LEAVE


def _decide_date(match: re.Match[str]) -> Kind | _Keep:
    """A real calendar day and month is protected; "12-34-5678" may be part of a phone number."""
    day = match.group("day") or match.group("iso_day")
    month = match.group("month") or match.group("iso_month")
    if 1 <= int(day) <= 31 and 1 <= int(month) <= 12:
        return _Keep.PROTECT
    return _Keep.LEAVE


def _decide_phone(_match: re.Match[str]) -> Kind | _Keep:
    return Kind.PHONE


def _decide_bsn(match: re.Match[str]) -> Kind | _Keep:
    return Kind.BSN if is_valid_bsn(match.group()) else _Keep.LEAVE


def _decide_kenteken(match: re.Match[str]) -> Kind | _Keep:
    for group in _LETTER_GROUP.findall(match.group()):
        if group.lower() in _MONTHS:
            return _Keep.LEAVE
    return Kind.KENTEKEN


def _decide_adres(match: re.Match[str]) -> Kind | _Keep:
    """A postcode with a house number is an address; without one, a (bare) postcode."""
    if match.group("before") is not None or match.group("after") is not None:
        return Kind.ADRES
    return Kind.POSTCODE


# What each pass's match must contain, as a cheap test on a piece of text: a pass whose test fails
# on a piece cannot match in it, so its (far slower) pattern is not run there. Each test is a
# necessary condition read off the pattern, never a guess: an e-mail address holds an "@"; an
# IBAN starts with a two-letter country code and two check digits (ASCII, any case); a date has
# a digit, a separator and a digit in a row; a phone number a "+" or a "0" (every writing but
# the plus-less mobile one starts with "+", "00", "0" or "(0") or "31" (that one); a BSN at
# least three digits in a row; a plate a dash (or a Unicode one); a postcode four digits, an optional space and
# two letters. Most texts hold none of
# these kinds, so most passes end at their test (about two thirds of the redaction time of a
# typical signal, which intake redacts on every request).
_ANY: Final = re.compile("")
_MAY_BE_IBAN: Final = re.compile(r"[A-Za-z]{2}[0-9]{2}")
_MAY_BE_DATE: Final = re.compile(rf"[0-9][\-./{_DASHES}][0-9]")
_MAY_BE_PLATE: Final = re.compile(rf"[\-{_DASHES}]")
_MAY_BE_PHONE: Final = re.compile(r"[+0]|31")
_MAY_BE_BSN: Final = re.compile(r"[0-9]{3}")
_MAY_BE_POSTCODE: Final = re.compile(rf"[1-9][0-9]{{3}}{_SP}?[A-Za-z]{{2}}")


class _Contains:
    """The test "holds this character" with a pattern's ``search`` signature (``in`` is faster)."""

    __slots__ = ("char",)

    def __init__(self, char: str) -> None:
        self.char = char

    def search(self, text: str) -> bool:
        return self.char in text


_Test = re.Pattern[str] | _Contains

# The passes, in the order that keeps one kind from eating another (module docstring).
_PASSES: Final[tuple[tuple[re.Pattern[str], _Decide, _Test], ...]] = (
    (_EMAIL, _decide_email, _Contains("@")),
    (_IBAN, _decide_iban, _MAY_BE_IBAN),
    (_DATE, _decide_date, _MAY_BE_DATE),
    (_PHONE, _decide_phone, _MAY_BE_PHONE),
    (_BSN, _decide_bsn, _MAY_BE_BSN),
    (_KENTEKEN, _decide_kenteken, _MAY_BE_PLATE),
    (_ADRES, _decide_adres, _MAY_BE_POSTCODE),
)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _run_pass(
    segments: Iterable[tuple[str, bool]],
    pattern: re.Pattern[str],
    decide: _Decide,
    counts: dict[str, int],
    may_match: _Test = _ANY,
) -> _Segments:
    """Apply one pass to the pieces not frozen yet (and that pass its test); return the new list."""
    result: _Segments = []
    for text, frozen in segments:
        if frozen or not may_match.search(text):
            result.append((text, frozen))
            continue
        position = 0  # end of what has been copied to the result
        search_from = 0
        while (match := pattern.search(text, search_from)) is not None:
            verdict = decide(match)
            start, end = match.span()
            if verdict is _Keep.LEAVE:
                # Not personal data after all; look again just after its start, so a rejected
                # candidate cannot hide a real value that overlaps it.
                search_from = start + 1
                continue
            if start > position:
                result.append((text[position:start], False))
            if verdict is _Keep.PROTECT:
                result.append((match.group(), True))
            else:
                result.append((PLACEHOLDERS[verdict], True))
                counts[verdict.value] += 1
            position = search_from = end
        if position < len(text):
            result.append((text[position:], False))
    return result


_KIND_VALUES: Final[tuple[str, ...]] = tuple(kind.value for kind in Kind)


def redact_with_counts(text: str) -> tuple[str, dict[str, int]]:
    """Redact ``text`` and count what was redacted, per kind (for metrics; never the values).

    The counts have a key for every :class:`Kind` (its value, e.g. ``"phone"``), zero when
    nothing of that kind was found, so a caller can feed a labelled counter without checks.
    """
    counts = dict.fromkeys(_KIND_VALUES, 0)
    if _MAY_HOLD_DATA.search(text) is None:
        return text, counts
    segments: _Segments = [(text, False)]
    for pattern, decide, may_match in _PASSES:
        segments = _run_pass(segments, pattern, decide, counts, may_match)
    return "".join(piece for piece, _ in segments), counts


def redact(text: str) -> str:
    """Replace personal data in ``text`` by placeholders such as ``[PHONE]``; see the module doc.

    Redacting already-redacted text changes nothing (a tested property), so a consumer may
    safely redact again what ``intake`` has already redacted.
    """
    return redact_with_counts(text)[0]
