"""Refuse input that a database cannot store: a NUL character, NaN or an infinite number.

PostgreSQL's ``text`` and ``jsonb`` refuse U+0000, and ``json``/``jsonb`` refuse NaN and
Infinity. Python's ``json`` module reads ``"\\u0000"``, ``NaN``, ``Infinity`` and ``1e999`` (as
infinity) without complaint, and so does pydantic, and SQLite stores all of them: a request that
passes on SQLite failed on PostgreSQL, in the middle of a transaction, as a 500. RFC 8259 has no
NaN or Infinity, and no field of this platform has a use for U+0000, so one layer in front of
every route of every service refuses them before anything is read or written:

* a JSON body (``application/json`` or ``…+json``) holding U+0000 in a name or a string, or a
  number that is not finite: 422 problem+json with a JSON pointer to each value at fault;
* a form body (``application/x-www-form-urlencoded``), the query string or the path holding
  U+0000 (``%00``): 422 problem+json naming the field or parameter.

Multipart bodies pass untouched (a file may hold any byte); the problem handlers turn what the
database still refuses into a 422 (:func:`civicsignals.common.problems.unstorable_character`).
The check costs one regular-expression scan of the body; only a body that may hold such a value
(an escaped NUL, the words NaN or Infinity, an exponent of three digits) is parsed to find it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from civicsignals.common.problems import pointer, problem_response

# What a body must contain for one of its values to be unstorable: an escaped NUL, a raw NUL
# (never valid inside a JSON string, but valid in a form), NaN or Infinity outside a string, or an
# exponent large enough to overflow a float (1e308 is finite; the parse decides). The literals are
# looked for with ``in`` (a memchr-based scan) and the exponent with a pattern that starts at a
# digit: one alternation of all of them took 4 µs on a portal's 300-byte body, these about 2.
_MAY_HAVE_EXPONENT = re.compile(rb"[0-9][eE]")
_LARGE_EXPONENT = re.compile(rb"[0-9.][eE]\+?[0-9]{3}")
_NUL_ENCODED = re.compile(rb"%00|\x00")
_NUL = "\x00"
_NO_NUL = "a NUL character (U+0000) is not allowed"
_NOT_FINITE = "not a finite number: JSON has no NaN or Infinity"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _NotANumber(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` as Python's JSON reader met them."""


def _may_be_unstorable(body: bytes) -> bool:
    if b"\\u0000" in body or b"\x00" in body or b"NaN" in body or b"Infinity" in body:
        return True
    return _MAY_HAVE_EXPONENT.search(body) is not None and _LARGE_EXPONENT.search(body) is not None


def unstorable_json(body: bytes) -> list[dict[str, str]]:
    """The values of a JSON document that no database of ours stores, each with a JSON pointer;
    empty when there are none or when ``body`` is not JSON at all (the route's own reader then
    answers that)."""
    if not _may_be_unstorable(body):
        return []
    try:
        document = json.loads(body, parse_constant=_NotANumber)
    except (ValueError, RecursionError):
        return []
    errors: list[dict[str, str]] = []
    pending: list[tuple[tuple[Any, ...], Any]] = [((), document)]
    while pending:
        location, value = pending.pop()
        if isinstance(value, _NotANumber) or (isinstance(value, float) and not math.isfinite(value)):
            errors.append({"pointer": pointer(location), "detail": _NOT_FINITE})
        elif isinstance(value, str):
            if _NUL in value:
                errors.append({"pointer": pointer(location), "detail": _NO_NUL})
        elif isinstance(value, dict):
            for name, item in value.items():
                if _NUL in name:
                    errors.append({"pointer": pointer((*location, name)), "detail": f"{_NO_NUL} in a name"})
                pending.append(((*location, name), item))
        elif isinstance(value, list):
            pending.extend(((*location, index), item) for index, item in enumerate(value))
    return sorted(errors, key=lambda error: error["pointer"])


def nul_in_form(encoded: bytes) -> list[dict[str, str]]:
    """The fields of a URL-encoded form or query string whose name or value holds U+0000."""
    if not _NUL_ENCODED.search(encoded):
        return []
    errors = []
    for name, value in parse_qsl(encoded.decode("latin-1"), keep_blank_values=True, encoding="latin-1"):
        if _NUL in name or _NUL in value:
            errors.append({"pointer": pointer((name.replace(_NUL, "\\u0000"),)), "detail": _NO_NUL})
    return errors


def _media_type(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return ""


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class InputGuardMiddleware:
    """Refuse NUL characters and numbers that are not finite before a route sees them (see the
    module's docstring). A JSON or form body is read whole first (the body limit, outside this
    layer, still applies while it is read) and handed on unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        errors = nul_in_form(scope.get("query_string", b""))
        if _NUL in scope.get("path", ""):
            errors.append({"pointer": "", "detail": f"{_NO_NUL} in the path"})
        media_type = _media_type(scope) if scope["method"] in _BODY_METHODS else ""
        body_check = (
            unstorable_json
            if _is_json(media_type)
            else nul_in_form
            if media_type == "application/x-www-form-urlencoded"
            else None
        )
        if not errors and body_check is None:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        if body_check is not None:
            read = await _read_body(receive)
            errors.extend(body_check(b"".join(message.get("body", b"") for message in read)))
        if errors:
            response = problem_response(
                422,
                "the request holds a value that cannot be stored",
                slug="invalid-request",
                errors=errors,
                instance=scope.get("path"),
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(read, receive), send)


async def _read_body(receive: Receive) -> list[Message]:
    """Every message of the request's body, up to the last part or a disconnect."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, as one message, then what comes next."""
    if not messages:
        return receive
    body = b"".join(message.get("body", b"") for message in messages if message["type"] == "http.request")
    queued: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    queued.extend(message for message in messages if message["type"] != "http.request")

    async def replayed() -> Message:
        if queued:
            return queued.pop(0)
        return await receive()

    return replayed
