"""Tests for the redaction of personal data in free text (DESIGN §2, "No personal data on the bus").

Two kinds of test: examples that pin the precedence rules and the negatives (dates, amounts,
ordinary Dutch), and properties that generate valid values of each kind (BSNs that pass the
11-check, IBANs with computed check digits, e-mail addresses, phone numbers in many writings,
plates in every sidecode, addresses) inside random sentences and check that nothing of the value
survives. The surrounding words never contain a digit, so "no digit left in the output" is the
strongest check that a number was fully removed.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from civicsignals.common.redaction import (
    PLACEHOLDERS,
    Kind,
    is_valid_bsn,
    is_valid_iban,
    redact,
    redact_with_counts,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Helpers to build valid and invalid values
# --------------------------------------------------------------------------------------------


def bsn_check_digit(first_eight: str) -> int:
    """The ninth digit that makes the 11-check pass (10 means: no BSN starts like this)."""
    return sum(weight * int(d) for weight, d in zip(range(9, 1, -1), first_eight, strict=True)) % 11


def iban_check_digits(country: str, bban: str) -> int:
    """ISO 13616: 98 minus (BBAN + country + "00", letters as 10..35) mod 97."""
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    return 98 - int(numeric) % 97


def make_iban(country: str, bban: str, check: int | None = None) -> str:
    digits = iban_check_digits(country, bban) if check is None else check
    return f"{country}{digits:02d}{bban}"


def printed(iban: str) -> str:
    """The printed form of an IBAN: groups of four."""
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def digits_of(value: str) -> str:
    return re.sub(r"[^0-9]", "", value)


def has_digit(text: str) -> bool:
    return any(char.isdigit() for char in text)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------

# 123456782 in full-width digits: str.isdigit() says yes, but a BSN is ASCII.
FULLWIDTH_BSN = "".join(chr(0xFF10 + int(d)) for d in "123456782")


@pytest.mark.parametrize("bsn", ["123456782", "111222333", "123.456.782", "123 456 782", "1234.56.782"])
def test_is_valid_bsn_accepts_numbers_that_pass_the_11_check(bsn: str) -> None:
    assert is_valid_bsn(bsn)


@pytest.mark.parametrize(
    "bsn", ["123456789", "000000000", "12345678", "1234567820", "12345678a", FULLWIDTH_BSN]
)
def test_is_valid_bsn_rejects_others(bsn: str) -> None:
    assert not is_valid_bsn(bsn)


@pytest.mark.parametrize(
    "iban",
    [
        "NL91ABNA0417164300",
        "NL91 ABNA 0417 1643 00",
        "nl91abna0417164300",
        "DE89370400440532013000",
        "GB29NWBK60161331926819",
        "BE68539007547034",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ],
)
def test_is_valid_iban_accepts_real_ibans(iban: str) -> None:
    assert is_valid_iban(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "NL92ABNA0417164300",  # wrong check digits
        "NL91ABNA041716430",  # NL is 18 characters
        "NL91ABNA04171643000",
        "XX91ABNA0417164300",  # no such country
        "GB29NWBK6016133192681",
        "NL9!ABNA0417164300",
        "",
    ],
)
def test_is_valid_iban_rejects_others(iban: str) -> None:
    assert not is_valid_iban(iban)


def test_is_valid_iban_rejects_check_digits_outside_02_to_98() -> None:
    # 99 is congruent to 02 modulo 97, so mod-97 alone would accept it.
    valid = make_iban("NL", "ABNA0417164300")
    check = int(valid[2:4])
    for alias in (check + 97, check - 97):
        if 0 <= alias <= 99:
            assert not is_valid_iban(make_iban("NL", "ABNA0417164300", alias))


# --------------------------------------------------------------------------------------------
# Examples per kind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail naar jan.jansen@example.nl graag.", "Mail naar [EMAIL] graag."),
        ("Mail: Jan.Jansen+melding@Post.Gemeente.Example.NL.", "Mail: [EMAIL]."),
        ("(piet_de-vries%x@sub-domein.example.com)", "([EMAIL])"),
        ("'o'brien@example.ie'", "'[EMAIL]'"),
        ("mailto:a@b.nl,c@d.org", "mailto:[EMAIL],[EMAIL]"),
    ],
)
def test_email(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "number",
    [
        "0612345678",
        "06-12345678",
        "06 1234 5678",
        "06 12 34 56 78",
        "06 - 12345678",
        "010-1234567",
        "010 123 4567",
        "(010) 123 4567",
        "0182 123456",
        "0182-123456",
        "(0182) 12 34 56",
        "+31 6 12345678",
        "+31(0)6-12345678",
        "+31 (0)6 1234 5678",
        "+316 12345678",
        "+31612345678",
        "0031612345678",
        "0031 6 12345678",
        "+31 10 123 4567",
        "+44 20 7946 0958",
        "+1 (555) 123-4567",
        "+49 30 1234567",
        "0044 20 7946 0958",
        # Unicode dashes and spaces, as word processors and phones type them.
        "06\u201112345678",  # non-breaking hyphen
        "06\u201012345678",  # hyphen
        "06\u2012 1234 5678",  # figure dash
        "010\u20131234567",  # en dash
        "06 \u2013 12345678",  # " - " as Word autocorrects it
        "06\u201412345678",  # em dash
        "06\u201512345678",  # horizontal bar
        "06\u00a012345678",
        "06\u202f1234\u202f5678",
        "+31\u20116\u201112345678",
        "0031\u00a06\u00a012345678",
        # A Dutch mobile number in international form without the plus.
        "31612345678",
        "31 6 12345678",
        "316-12345678",
        "31\u20116\u201112345678",
        "31 6 12 34 56 78",
    ],
)
def test_phone_in_every_common_writing(number: str) -> None:
    text = f"Bel me op {number}, na vijf uur."
    assert redact(text) == "Bel me op [PHONE], na vijf uur."


def test_a_plusless_mobile_number_in_a_whatsapp_link_or_as_a_bare_number() -> None:
    assert redact("App me: https://wa.me/31612345678 of 0031612345678") == (
        "App me: https://wa.me/[PHONE] of [PHONE]"
    )
    # A bare 11-digit number starting with 316 is a mobile number, however it is labelled.
    assert redact("Kenmerk 31612345678.") == "Kenmerk [PHONE]."


@pytest.mark.parametrize(
    "bsn", ["123456782", "123.456.782", "123 456 782", "1234.56.782", "111-222-333", "123\u2013456\u2013782"]
)
def test_bsn_that_passes_the_11_check(bsn: str) -> None:
    assert redact(f"Mijn BSN is {bsn}.") == "Mijn BSN is [BSN]."


@pytest.mark.parametrize(
    "iban",
    [
        "NL91ABNA0417164300",
        "NL91 ABNA 0417 1643 00",
        "nl91abna0417164300",
        "nl91 abna 0417 1643 00",
        "DE89 3704 0044 0532 0130 00",
        "GB29NWBK60161331926819",
        "BE68 5390 0754 7034",
        "FR14 2004 1010 0505 0001 3M02 606",
    ],
)
def test_iban(iban: str) -> None:
    assert redact(f"Stort het op {iban} graag") == "Stort het op [IBAN] graag"


@pytest.mark.parametrize(
    "plate",
    [
        "AB-12-34",  # 1
        "12-34-AB",  # 2
        "12-AB-34",  # 3
        "AB-12-CD",  # 4
        "AB-CD-12",  # 5
        "12-AB-CD",  # 6
        "12-ABC-3",  # 7
        "1-ABC-23",  # 8
        "AB-123-C",  # 9
        "A-123-BC",  # 10
        "ABC-12-D",  # 11
        "A-12-BCD",  # 12
        "1-AB-234",  # 13
        "123-AB-4",  # 14
        "gx-123-z",  # lower case
        "AB\u201112\u2011CD",  # non-breaking hyphens, as a word processor writes them
        "1\u2013ABC\u201323",  # en dashes
    ],
)
def test_licence_plate_in_every_sidecode(plate: str) -> None:
    assert redact(f"De auto met kenteken {plate} staat al weken op de stoep.") == (
        "De auto met kenteken [KENTEKEN] staat al weken op de stoep."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Adres: 2801 AB 12, Gouda", "Adres: [ADRES], Gouda"),
        ("Adres: 2801AB 12a", "Adres: [ADRES]"),
        ("Adres: 2801 AB 12-14 achterom", "Adres: [ADRES] achterom"),
        ("Kerkstraat 12, 2801 AB Gouda", "Kerkstraat [ADRES] Gouda"),
        ("Kerkstraat 12a 2801AB Gouda", "Kerkstraat [ADRES] Gouda"),
        ("postcode 2801 ab 12", "postcode [ADRES]"),
        ("postcode 2801ab", "postcode [POSTCODE]"),
        ("In de wijk rond 2801 AB is het druk.", "In de wijk rond [POSTCODE] is het druk."),
    ],
)
def test_address_and_postcode(text: str, expected: str) -> None:
    assert redact(text) == expected


# --------------------------------------------------------------------------------------------
# Negatives: what must stay
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Er ligt al drie weken afval naast de container op de Kerkstraat",
        "De lantaarnpaal op de hoek van de Noord-Hollandstraat is kapot, graag repareren!",
        "Please fix the pothole on Main Street, it's been there since last summer.",
        "Ophalen op 28-11-2026 om 09:30, of op 2026-11-28T09:30:00Z.",
        "Datum: 01-02-2026 12:30, of 01/02/2026, of 01.02.2026 om 09.30 uur.",
        "Open van 09.00-17.00 uur en van 13:00 tot 17:00.",
        "De kosten waren € 1.250,00 en daarna €0,50 per zak, 0.5 procent.",
        "In 2025 en 2026 is het al 3 keer misgegaan, op nummer 12 en 14.",
        "Het gaat om 123456789 euro",  # 9 digits failing the 11-check
        "Zaaknummer 987654321 en 555.555.555",
        "Rekening NL92 ABNA 0417 1643 00 klopt niet",  # wrong IBAN check digits
        "NL92ABNA0417164300 en nl12 abna 0123 4567 89 zijn fout",
        "Mijn melding 7KQ2-M9XD-4HTC is nog open.",  # a tracking code
        "Het was op 1-jan-26 of 12-mei-3, covid-19 en corona-2020.",
        "Een route van 1000km en 2500kg afval, 500 km verderop.",
        "Bel 14 0182 voor de gemeente, of 112 bij nood.",
        "Incompleet nummer: 06-1234567.",
        "Score 0.123456789",
        # Unicode dashes in dates, times and ranges are still dates, times and ranges.
        "Ophalen op 28\u201111\u20112026 om 09:30, of 01\u201302\u20132026 1230 uur.",
        "Open van 09.00\u201317.00 uur, in 2025\u20132026, pagina 10\u201412.",
        # Numbers that start like a plus-less mobile number but are not one.
        "Het gaat om 316123457 euro",  # 9 digits failing the 11-check
        "Zaaknummer 3161234567 en 316123456789",  # 10 and 12 digits
        "Nummer 031612345678 en 4316123456789",  # not "31" at the start of the number
        "Op 31 juni om 6 uur, 12345678 keer",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
    assert sum(redact_with_counts(text)[1].values()) == 0


# --------------------------------------------------------------------------------------------
# Precedence between kinds
# --------------------------------------------------------------------------------------------


def test_email_goes_first_even_when_it_holds_a_phone_number() -> None:
    assert redact("sms naar 0612345678@sms.example.nl") == "sms naar [EMAIL]"


def test_iban_goes_before_phone_and_bsn() -> None:
    # The account number 0417164300 alone would look like a landline number.
    assert redact("IBAN NL91 ABNA 0417 1643 00.") == "IBAN [IBAN]."


def test_invalid_iban_in_printed_form_is_not_redacted_in_part() -> None:
    # "0123 4567 89" would on its own be a phone number; the IBAN-shaped whole is kept intact.
    bban = "ABNA0123456789"
    wrong = make_iban("NL", bban, (iban_check_digits("NL", bban) + 1 - 2) % 97 + 2)
    assert not is_valid_iban(wrong)
    assert redact(f"Rekening {printed(wrong)} graag") == f"Rekening {printed(wrong)} graag"


def test_phone_goes_before_bsn() -> None:
    # 123456782 passes the 11-check, but after +31 it is a phone number, not "+31 [BSN]".
    assert is_valid_bsn("123456782")
    assert redact("bel +31 123456782") == "bel [PHONE]"


def test_a_nine_digit_number_starting_like_a_mobile_is_a_bsn_or_nothing() -> None:
    # "316" and 6 digits is too short for "31" + "6" + 8 digits: the 11-check decides.
    assert is_valid_bsn("316123456") and not is_valid_bsn("316123457")
    assert redact("nummer 316123456 en 316123457") == "nummer [BSN] en 316123457"


def test_a_nine_digit_number_is_never_a_phone_number() -> None:
    # "012345672" starts with a 0 but has only 9 digits: it is a BSN when it passes the 11-check.
    assert is_valid_bsn("012345672")
    assert redact("nummer 012345672") == "nummer [BSN]"


def test_dates_are_protected_from_the_phone_pass() -> None:
    # The digits 0 1 1 9 0 0 0 0 0 0 after the first "01/" would make a Dutch phone number.
    assert (
        redact("Op 01/01/1900 00.00 uur, of 01-02-2026 0930.")
        == "Op 01/01/1900 00.00 uur, of 01-02-2026 0930."
    )


def test_a_date_shaped_tail_of_a_phone_number_is_still_phone() -> None:
    assert redact("bel +31 6 12-03-2026 of +1 (10) 01-01-2020") == "bel [PHONE] of [PHONE]"


def test_phone_next_to_a_date_and_a_postcode() -> None:
    text = "Op 28-11-2026 belde 06-12345678 over Kerkstraat 12, 2801 AB."
    assert redact(text) == "Op 28-11-2026 belde [PHONE] over Kerkstraat [ADRES]."


def test_counts_per_kind_without_values() -> None:
    text = (
        "Jan (jan@example.nl, 06-12345678, +44 20 7946 0958) BSN 123456782, "
        "IBAN NL91ABNA0417164300, auto AB-12-CD, 2801 AB 12 en 2802 CD."
    )
    redacted, counts = redact_with_counts(text)
    assert redacted == (
        "Jan ([EMAIL], [PHONE], [PHONE]) BSN [BSN], IBAN [IBAN], auto [KENTEKEN], [ADRES] en [POSTCODE]."
    )
    assert counts == {
        "email": 1,
        "iban": 1,
        "phone": 2,
        "bsn": 1,
        "kenteken": 1,
        "adres": 1,
        "postcode": 1,
    }
    assert set(counts) == {kind.value for kind in Kind}


def test_placeholders_are_exactly_as_documented() -> None:
    assert set(PLACEHOLDERS.values()) == {
        "[EMAIL]",
        "[PHONE]",
        "[BSN]",
        "[IBAN]",
        "[KENTEKEN]",
        "[ADRES]",
        "[POSTCODE]",
    }


def test_redacting_twice_changes_nothing() -> None:
    once = redact("Bel 06-12345678 of mail jan@example.nl over 2801 AB 12 en AB-12-CD.")
    assert redact(once) == once


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

WORDS = [
    "er", "ligt", "al", "drie", "weken", "afval", "naast", "de", "container", "op", "Kerkstraat",
    "bel", "mij", "graag", "terug", "mijn", "nummer", "is", "melding", "over", "lantaarnpaal",
    "kapot", "stoep", "gemeente", "Gouda", "bedankt", "groet", "en", "of", "via", "rekening",
    "kenteken", "auto", "fout", "geparkeerd", "adres", "please", "call", "me", "at", "my", "the",
    "street", "light", "is", "broken", "thanks", "account", "car", "parked", "email", "address",
]  # fmt: skip
BEFORE = [" ", " (", ": ", ", ", "\n", " '", ' "', " \u00a0"]
AFTER = [" ", ".", ",", ")", "!", "?", ";", "'", '"', "\n", ". "]

words = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)


@st.composite
def embedded(draw: st.DrawFn, value: st.SearchStrategy[str]) -> tuple[str, str]:
    """A value in a random sentence, with spaces or punctuation around it: (value, text)."""
    chosen = draw(value)
    text = draw(words) + draw(st.sampled_from(BEFORE)) + chosen + draw(st.sampled_from(AFTER)) + draw(words)
    return chosen, text


def assert_gone(value: str, text: str, kind: Kind) -> None:
    """The value (and, for numbers, its digits) is gone and the placeholder is there."""
    out = redact(text)
    assert value not in out
    assert PLACEHOLDERS[kind] in out
    if digits_of(value):
        assert digits_of(value) not in digits_of(out)
    # The surrounding words hold no digits: any digit left is a leak.
    assert not has_digit(out), out


digit = st.sampled_from("0123456789")


def digit_string(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=size, max_size=size)


@st.composite
def valid_bsns(draw: st.DrawFn) -> str:
    first_eight = draw(digit_string(8))
    check = bsn_check_digit(first_eight)
    assume(check != 10)
    digits = first_eight + str(check)
    assume(digits != "000000000")
    return draw(bsn_writings(digits))


def bsn_writings(digits: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            digits,
            f"{digits[:3]}.{digits[3:6]}.{digits[6:]}",
            f"{digits[:3]} {digits[3:6]} {digits[6:]}",
            f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
            f"{digits[:4]}.{digits[4:6]}.{digits[6:]}",
            *(f"{digits[:3]}{dash}{digits[3:6]}{dash}{digits[6:]}" for dash in UNICODE_DASHES),
        ]
    )


@st.composite
def invalid_bsns(draw: st.DrawFn) -> str:
    digits = draw(digit_string(9))
    assume(not is_valid_bsn(digits))
    return draw(bsn_writings(digits))


UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ALNUM = UPPER + "0123456789"


def text_of(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size)


# Country, and a strategy for its BBAN (by the country's format).
BBANS: list[tuple[str, st.SearchStrategy[str]]] = [
    ("NL", st.tuples(st.sampled_from(["ABNA", "INGB", "RABO", "TRIO", "SNSB", "BUNQ"]), digit_string(10)).map("".join)),
    ("NL", st.tuples(text_of(UPPER, 4), digit_string(10)).map("".join)),
    ("DE", digit_string(18)),
    ("BE", digit_string(12)),
    ("GB", st.tuples(text_of(UPPER, 4), digit_string(14)).map("".join)),
    ("FR", st.tuples(digit_string(10), text_of(ALNUM, 11), digit_string(2)).map("".join)),
    ("ES", digit_string(20)),
    ("NO", digit_string(11)),
]  # fmt: skip


@st.composite
def iban_parts(draw: st.DrawFn) -> tuple[str, str]:
    country, bban = draw(st.sampled_from(BBANS))
    return country, draw(bban)


def iban_writings(iban: str) -> st.SearchStrategy[str]:
    return st.sampled_from([iban, iban.lower(), printed(iban), printed(iban).lower()])


@st.composite
def valid_ibans(draw: st.DrawFn) -> str:
    country, bban = draw(iban_parts())
    iban = make_iban(country, bban)
    assert is_valid_iban(iban)
    return draw(iban_writings(iban))


@st.composite
def wrong_check_ibans(draw: st.DrawFn) -> str:
    country, bban = draw(iban_parts())
    right = iban_check_digits(country, bban)
    shift = draw(st.integers(min_value=1, max_value=96))
    wrong = (right - 2 + shift) % 97 + 2  # in 02..98 and never congruent to the right one
    iban = make_iban(country, bban, wrong)
    assert not is_valid_iban(iban)
    return draw(iban_writings(iban))


LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
label = st.text(alphabet=LOCAL_CHARS, min_size=1, max_size=10)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    if draw(st.booleans()):
        local += "+" + draw(label)
    labels = draw(st.lists(label, min_size=1, max_size=3))
    if draw(st.booleans()):
        labels[0] = labels[0] + "-" + draw(label)
    tld = draw(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=6)
    )
    return f"{local}@{'.'.join(labels)}.{tld}"


@st.composite
def dutch_phones(draw: st.DrawFn) -> str:
    """A Dutch number (mobile, or landline with a 2- or 3-digit area code) in a common writing."""
    kind = draw(st.sampled_from(["mobile", "area2", "area3"]))
    if kind == "mobile":
        area, rest = "6", draw(digit_string(8))
    elif kind == "area2":
        area, rest = draw(st.sampled_from("1234578")) + draw(digit), draw(digit_string(7))
    else:
        area, rest = draw(st.sampled_from("1234578")) + draw(digit_string(2)), draw(digit_string(6))
    half = len(rest) // 2
    writings = [
        f"0{area}{rest}",
        f"0{area}-{rest}",
        f"0{area} {rest}",
        f"0{area} {rest[:half]} {rest[half:]}",
        f"(0{area}) {rest}",
        f"0{area} - {rest}",
        f"+31 {area} {rest}",
        f"+31{area}{rest}",
        f"+31(0){area}-{rest}",
        f"+31 (0){area} {rest[:half]} {rest[half:]}",
        f"0031{area}{rest}",
        f"0031 {area} {rest}",
    ]
    if kind == "mobile":
        writings.append(f"06 {rest[:2]} {rest[2:4]} {rest[4:6]} {rest[6:]}")
    return draw(st.sampled_from(writings))


# Dashes and spaces as word processors and phones type them: hyphen, non-breaking hyphen, figure
# dash, en dash, em dash, horizontal bar; no-break and narrow no-break space.
UNICODE_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015"
UNICODE_SPACES = "\u00a0\u202f"


@st.composite
def unicode_separated_phones(draw: st.DrawFn) -> str:
    """A Dutch number whose separators are Unicode dashes or spaces ("06\u201112345678")."""
    dash = draw(st.sampled_from(UNICODE_DASHES))
    space = draw(st.sampled_from(UNICODE_SPACES))
    kind = draw(st.sampled_from(["mobile", "area2", "area3"]))
    if kind == "mobile":
        area, rest = "6", draw(digit_string(8))
    elif kind == "area2":
        area, rest = draw(st.sampled_from("1234578")) + draw(digit), draw(digit_string(7))
    else:
        area, rest = draw(st.sampled_from("1234578")) + draw(digit_string(2)), draw(digit_string(6))
    half = len(rest) // 2
    return draw(
        st.sampled_from(
            [
                f"0{area}{dash}{rest}",
                f"0{area} {dash} {rest}",
                f"0{area}{space}{rest}",
                f"0{area}{dash}{rest[:half]}{space}{rest[half:]}",
                f"0{area}{space}{rest[:half]}{space}{rest[half:]}",
                f"+31{space}{area}{dash}{rest}",
                f"+31{dash}{area}{dash}{rest}",
                f"+31{space}(0){area}{dash}{rest}",
                f"0031{dash}{area}{dash}{rest}",
            ]
        )
    )


@st.composite
def plusless_mobiles(draw: st.DrawFn) -> str:
    """A Dutch mobile number in international form without the plus: 31, 6 and 8 digits."""
    rest = draw(digit_string(8))
    separator = draw(st.sampled_from([" ", "-", "\u00a0", *UNICODE_DASHES]))
    return draw(
        st.sampled_from(
            [
                f"316{rest}",
                f"31{separator}6{separator}{rest}",
                f"316{separator}{rest}",
                f"31 6 {rest[:2]} {rest[2:4]} {rest[4:6]} {rest[6:]}",
                f"00316{rest}",
            ]
        )
    )


@st.composite
def international_phones(draw: st.DrawFn) -> str:
    """An E.164 number of another country: +CC and groups, 8 to 15 digits in all."""
    country = draw(st.sampled_from(["1", "32", "33", "44", "49", "90", "212", "351", "352"]))
    size = draw(st.integers(min_value=max(8 - len(country), 6), max_value=15 - len(country)))
    number = draw(st.sampled_from("123456789")) + draw(digit_string(size - 1))
    groups: list[str] = []
    rest = number
    while rest:
        take = draw(st.integers(min_value=2, max_value=4))
        groups.append(rest[:take])
        rest = rest[take:]
    separator = draw(st.sampled_from([" ", "-", "."]))
    if draw(st.booleans()) and len(groups) > 1:
        groups[0] = f"({groups[0]})"
        return f"+{country} {groups[0]} " + separator.join(groups[1:])
    prefix = draw(st.sampled_from(["+", "00"]))
    return f"{prefix}{country} " + separator.join(groups)


SIDECODES = [
    "XX-99-99", "99-99-XX", "99-XX-99", "XX-99-XX", "XX-XX-99", "99-XX-XX", "99-XXX-9",
    "9-XXX-99", "XX-999-X", "X-999-XX", "XXX-99-X", "X-99-XXX", "9-XX-999", "999-XX-9",
]  # fmt: skip
MONTHS = {
    "jan",
    "feb",
    "mrt",
    "maa",
    "apr",
    "mei",
    "jun",
    "jul",
    "aug",
    "sep",
    "okt",
    "oct",
    "nov",
    "dec",
    "mar",
    "may",
}


@st.composite
def plates(draw: st.DrawFn) -> str:
    sidecode = draw(st.sampled_from(SIDECODES))
    letters = draw(st.sampled_from([UPPER, UPPER.lower()]))
    dash = draw(st.sampled_from(["-", "-", *UNICODE_DASHES]))
    plate = "".join(
        draw(st.sampled_from(letters)) if char == "X" else draw(digit) if char == "9" else dash
        for char in sidecode
    )
    assume(not any(group.lower() in MONTHS for group in plate.split(dash)))
    return plate


# In lower case and without a space, these read as amounts ("1000km"), not postcodes.
UNITS = {
    "km",
    "kg",
    "mg",
    "ml",
    "cl",
    "dl",
    "cm",
    "mm",
    "gb",
    "mb",
    "kb",
    "tb",
    "kw",
    "mw",
    "gw",
    "hz",
    "pk",
    "cc",
    "ct",
}


@st.composite
def addresses(draw: st.DrawFn) -> str:
    number = str(draw(st.integers(min_value=1000, max_value=9999)))
    letters = draw(text_of(UPPER, 2))
    assume(letters not in {"SA", "SD", "SS"})
    house = str(draw(st.integers(min_value=1, max_value=2999))) + draw(
        st.sampled_from(["", "a", "B", "-2", "-bis"])
    )
    street = draw(st.sampled_from(["Kerkstraat", "Markt", "Lange Groenendaal", "Burgemeester Jamessingel"]))
    return draw(
        st.sampled_from(
            [
                f"{number} {letters} {house}",
                f"{number}{letters} {house}",
                f"{number}{letters.lower()} {house}" if letters.lower() not in UNITS else f"{number} {letters} {house}",
                f"{number} {letters}, {house}",
                f"{street} {house}, {number} {letters}",
                f"{street} {house} {number}{letters}",
            ]
        )
    )  # fmt: skip


@PROPERTY_SETTINGS
@given(embedded(valid_bsns()))
def test_property_valid_bsn_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.BSN)


@PROPERTY_SETTINGS
@given(embedded(invalid_bsns()))
def test_property_nine_digits_failing_the_11_check_stay(case: tuple[str, str]) -> None:
    _, text = case
    assert redact(text) == text


@PROPERTY_SETTINGS
@given(embedded(valid_ibans()))
def test_property_valid_iban_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.IBAN)


@PROPERTY_SETTINGS
@given(embedded(wrong_check_ibans()))
def test_property_iban_with_wrong_check_digits_stays(case: tuple[str, str]) -> None:
    _, text = case
    assert redact(text) == text


@PROPERTY_SETTINGS
@given(embedded(emails()))
def test_property_email_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.EMAIL)


@PROPERTY_SETTINGS
@given(embedded(dutch_phones()))
def test_property_dutch_phone_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.PHONE)


@PROPERTY_SETTINGS
@given(embedded(unicode_separated_phones()))
def test_property_phone_with_unicode_dashes_and_spaces_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.PHONE)


@PROPERTY_SETTINGS
@given(embedded(plusless_mobiles()))
def test_property_plusless_mobile_number_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.PHONE)


@st.composite
def invalid_bsns_starting_like_a_mobile(draw: st.DrawFn) -> str:
    """Nine digits that start as "316" (a plus-less mobile number's prefix) and fail the 11-check."""
    digits = "316" + draw(digit_string(6))
    assume(not is_valid_bsn(digits))
    return draw(bsn_writings(digits))


@PROPERTY_SETTINGS
@given(embedded(invalid_bsns_starting_like_a_mobile()))
def test_property_nine_digits_starting_316_failing_the_11_check_stay(case: tuple[str, str]) -> None:
    _, text = case
    assert redact(text) == text


@PROPERTY_SETTINGS
@given(embedded(international_phones()))
def test_property_international_phone_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.PHONE)


@PROPERTY_SETTINGS
@given(embedded(plates()))
def test_property_licence_plate_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.KENTEKEN)


@PROPERTY_SETTINGS
@given(embedded(addresses()))
def test_property_address_is_redacted(case: tuple[str, str]) -> None:
    value, text = case
    assert_gone(value, text, Kind.ADRES)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.one_of(
            valid_bsns(),
            valid_ibans(),
            emails(),
            dutch_phones(),
            unicode_separated_phones(),
            plusless_mobiles(),
            international_phones(),
            plates(),
            addresses(),
        ),
        min_size=2,
        max_size=5,
    ),
    st.lists(words, min_size=6, max_size=6),
)
def test_property_several_values_in_one_text_are_all_redacted(values: list[str], fillers: list[str]) -> None:
    text = fillers[0]
    for value, filler in zip(values, fillers[1:], strict=False):
        text += f" {value}, {filler}"
    out = redact(text)
    assert not has_digit(out), out
    assert "@" not in out
    for value in values:
        assert value not in out


@st.composite
def dates_times_amounts(draw: st.DrawFn) -> str:
    """Numbers residents write that are not personal: dates, times, amounts, years, counts."""
    day, month = draw(st.integers(1, 31)), draw(st.integers(1, 12))
    year = draw(st.integers(1900, 2099))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    euros, cents = draw(st.integers(0, 99_999_999)), draw(st.integers(0, 99))
    separator = draw(st.sampled_from(["-", "/", ".", *UNICODE_DASHES]))
    date = draw(
        st.sampled_from(
            [
                f"{day:02d}{separator}{month:02d}{separator}{year}",
                f"{day}{separator}{month}{separator}{year}",
                f"{year}-{month:02d}-{day:02d}",
                f"{year}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00Z",
            ]
        )
    )
    time = draw(
        st.sampled_from([f"{hour:02d}:{minute:02d}", f"{hour:02d}.{minute:02d} uur", f"{hour}.{minute:02d}u"])
    )
    amount = f"{euros:,}".replace(",", ".") + f",{cents:02d}"
    return draw(
        st.sampled_from(
            [
                date,
                f"{date} {time}",
                f"{date} om {time}",
                f"€ {amount}",
                f"€{amount}",
                f"{euros} euro",
                f"in {year}",
                f"{draw(st.integers(1, 999))} keer",
            ]
        )
    )


@PROPERTY_SETTINGS
@given(embedded(dates_times_amounts()))
def test_property_dates_times_amounts_and_years_stay(case: tuple[str, str]) -> None:
    _, text = case
    assert redact(text) == text


@PROPERTY_SETTINGS
@given(st.lists(words, min_size=1, max_size=5).map(". ".join))
def test_property_ordinary_sentences_are_unchanged(text: str) -> None:
    assert redact(text) == text


@PROPERTY_SETTINGS
@given(st.text(alphabet="0123456789 -.,+@()/abnlxAB", max_size=60))
def test_property_redaction_is_idempotent_on_number_soup(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


# --------------------------------------------------------------------------------------------
# The cheap tests before each pass skip only pieces the pass cannot match in
# --------------------------------------------------------------------------------------------


def redact_without_tests(text: str) -> str:
    """The redaction as it was before each pass got its test: every pattern on every piece."""
    from civicsignals.common import redaction

    counts = dict.fromkeys((kind.value for kind in Kind), 0)
    segments: list[tuple[str, bool]] = [(text, False)]
    for pattern, decide, _test in redaction._PASSES:
        segments = redaction._run_pass(segments, pattern, decide, counts)
    return "".join(piece for piece, _ in segments)


# Characters every pattern cares about, so that near-misses (a dash without a plate, three digits
# without a BSN, letters and digits that are almost an IBAN or a postcode) are common.
pass_alphabet = st.sampled_from(
    list("0123456789 -./@()+,abNLBEGRsSxXAZ\u00a0\u202f\u2010\u2011\u2012\u2013\u2014\u2015")
)
near_misses = st.lists(
    st.one_of(
        pass_alphabet,
        st.sampled_from(
            [
                "NL91",
                "nl91abna0417164300",
                "2801 AB",
                "2801ab",
                "06-",
                "+31",
                "@x.nl",
                "12-ab-34",
                "1-1-2026",
                "01/01/1900 00.00",
                "06/12/2026 06.12",
                "123.456.782",
                "31",
                "316",
                "31612345678",
                "0031",
                "06\u2011",
                "28\u201111\u20112026",
                "\u2013",
            ]
        ),
    ),
    max_size=40,
).map("".join)


@PROPERTY_SETTINGS
@given(text=st.one_of(near_misses, st.text(max_size=60)))
def test_the_tests_before_each_pass_change_no_result(text: str) -> None:
    assert redact(text) == redact_without_tests(text)


def test_the_tests_before_each_pass_are_used() -> None:
    """Without this, the property above would pass with tests that never skip anything."""
    from civicsignals.common import redaction

    text = "Bel 06-12345678, er ligt afval."
    skipped = [test for _pattern, _decide, test in redaction._PASSES if not test.search(text)]
    assert len(skipped) >= 3  # e-mail, IBAN and postcode at least
    # The phone pass is skipped where no "+", "0" or "31" could start a number.
    phone_test = next(test for pattern, _decide, test in redaction._PASSES if pattern is redaction._PHONE)
    assert not phone_test.search("Er ligt afval bij nummer 12, al 3 keer.")
    assert phone_test.search("bel 31612345678") and phone_test.search("bel 06\u201112345678")
