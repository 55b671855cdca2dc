"""Identifiers: ULIDs for rows and events, tracking codes for residents (DESIGN §2, §3)."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from civicsignals.common import ids
from civicsignals.common.ids import new_id, new_tracking_code, normalise_tracking_code

ALPHABET = ids._TRACKING_ALPHABET
CODE_PATTERN = re.compile(rf"^[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}$")


def test_tracking_codes_carry_at_least_50_bits() -> None:
    assert len(set(ALPHABET)) == len(ALPHABET) == 32
    symbols = ids.TRACKING_CODE_GROUPS * ids.TRACKING_CODE_GROUP_LEN
    bits = symbols * math.log2(len(ALPHABET))
    assert bits >= 50
    code = new_tracking_code()
    assert len(code.replace("-", "")) == symbols


def test_tracking_codes_are_readable_and_random() -> None:
    codes = [new_tracking_code() for _ in range(2000)]
    assert all(CODE_PATTERN.fullmatch(code) for code in codes)
    assert len(set(codes)) == len(codes)
    # Every symbol turns up: nothing in the generator narrows the alphabet.
    assert set("".join(codes).replace("-", "")) == set(ALPHABET)


def test_the_alphabet_leaves_out_what_residents_misread() -> None:
    for letter in "ILOU":
        assert letter not in ALPHABET


def test_normalisation_of_what_a_resident_types() -> None:
    assert normalise_tracking_code("7KQ2-M9XD-4HTC") == "7KQ2-M9XD-4HTC"
    assert normalise_tracking_code("7kq2-m9xd-4htc") == "7KQ2-M9XD-4HTC"
    assert normalise_tracking_code("7KQ2M9XD4HTC") == "7KQ2-M9XD-4HTC"
    assert normalise_tracking_code(" 7KQ2 M9XD 4HTC ") == "7KQ2-M9XD-4HTC"
    assert normalise_tracking_code("1O2I-3L45-6789") == "1021-3145-6789"
    assert normalise_tracking_code("io0l-ABCD-EFGH") == "1001-ABCD-EFGH"


def test_normalisation_leaves_what_cannot_be_a_code_recognisably_wrong() -> None:
    assert normalise_tracking_code("abc") == "ABC"
    assert normalise_tracking_code("7KQ2-M9XD-4HTC-X") == "7KQ2-M9XD-4HTC-X"
    assert not CODE_PATTERN.fullmatch(normalise_tracking_code("7KQ2-M9XD"))


_TYPOS = {"0": "0Oo", "1": "1IiLl"}


@st.composite
def typed_versions(draw: st.DrawFn) -> tuple[str, str]:
    """A code and the way a resident might type it: any case, dashes or spaces or nothing,
    O for zero and I or L for one."""
    code = draw(st.text(alphabet=ALPHABET, min_size=12, max_size=12))
    canonical = "-".join(code[i : i + 4] for i in range(0, 12, 4))
    typed = []
    for position, symbol in enumerate(code):
        if position and position % 4 == 0:
            typed.append(draw(st.sampled_from(["-", " ", ""])))
        symbol = draw(st.sampled_from(_TYPOS.get(symbol, symbol)))
        typed.append(draw(st.sampled_from([symbol.upper(), symbol.lower()])))
    return canonical, "".join(typed)


@given(typed_versions())
def test_every_typed_version_of_a_code_finds_the_code(versions: tuple[str, str]) -> None:
    canonical, typed = versions
    assert normalise_tracking_code(typed) == canonical


@given(st.text(max_size=30))
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalise_tracking_code(text)
    assert normalise_tracking_code(once) == once


def test_ids_are_ulids_in_creation_order() -> None:
    made = [new_id() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", value) for value in made)
    assert len(set(made)) == len(made)
    assert made == sorted(made)
