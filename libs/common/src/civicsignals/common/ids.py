"""Identifiers: time-ordered ids for rows and events, readable tracking codes for residents."""

from __future__ import annotations

import secrets

from ulid import ULID

# Crockford's base32 without I, L, O and U: nothing a resident can misread when typing a code.
_TRACKING_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TRACKING_CODE_GROUPS = 3
TRACKING_CODE_GROUP_LEN = 4


def new_id() -> str:
    """A ULID: unique, sortable by creation time, which DESIGN §2 asks of event ids."""
    return str(ULID())


def new_tracking_code() -> str:
    """A random code such as ``7KQ2-M9XD-4HTC``: 12 symbols of 5 bits = 60 bits of entropy.

    DESIGN §3 asks for at least 50 bits, so that codes cannot be guessed or enumerated.
    """
    count = TRACKING_CODE_GROUPS * TRACKING_CODE_GROUP_LEN
    # One draw from the OS's CSPRNG, cut into 5-bit symbols (the alphabet has 32), not one draw per
    # symbol: the same entropy at a twelfth of the system calls, on every signal intake accepts.
    bits = secrets.randbits(5 * count)
    symbols = "".join(_TRACKING_ALPHABET[(bits >> (5 * i)) & 0b11111] for i in range(count))
    return "-".join(
        symbols[i : i + TRACKING_CODE_GROUP_LEN] for i in range(0, len(symbols), TRACKING_CODE_GROUP_LEN)
    )


def normalise_tracking_code(code: str) -> str:
    """Accept what a resident types: lower case, spaces, missing dashes, O for 0 and I/L for 1."""
    cleaned = code.upper().replace("-", "").replace(" ", "")
    cleaned = cleaned.replace("O", "0").replace("I", "1").replace("L", "1")
    if len(cleaned) != TRACKING_CODE_GROUPS * TRACKING_CODE_GROUP_LEN:
        return code.upper()
    return "-".join(
        cleaned[i : i + TRACKING_CODE_GROUP_LEN] for i in range(0, len(cleaned), TRACKING_CODE_GROUP_LEN)
    )
