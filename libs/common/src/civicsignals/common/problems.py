"""RFC 9457 problem details for every error a service returns.

Every 4xx and 5xx is ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail``
and, for invalid input, ``errors``: one entry per field with a JSON pointer to it. No stack trace
ever leaves a service, and bad input is never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://civicsignals.nl/problems/"
API_VERSION = "1.0.0"


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for problem+json answers, so clients and schemathesis know their shape."""
    return {
        status: {"description": text, "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
        for status, text in descriptions.items()
    }


_GENERATED_422 = "#/components/schemas/HTTPValidationError"


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the services really answer to bad input (in place).

    FastAPI describes a 422 of ``application/json`` ``HTTPValidationError`` for every route with
    parameters or a body; the problem handlers answer ``application/problem+json`` instead
    (:func:`install_problem_handlers`), so generated clients and schemathesis were told the wrong
    shape. Routes that answer invalid input in a format of their own (Open311's error arrays, a
    declared 400 that is not problem+json) still get a 422 problem+json from the input guard, which
    runs before them, for a value no database stores; their 422 says just that.
    """
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            generated = responses.get("422", {}).get("content", {}).get("application/json", {})
            if generated.get("schema", {}).get("$ref") != _GENERATED_422:
                continue
            own_400 = responses.get("400", {}).get("content", {})
            description = (
                "A value no database stores (U+0000, NaN, Infinity), refused before the route"
                if own_400 and PROBLEM_JSON not in own_400
                else "Invalid fields, with a JSON pointer to each"
            )
            responses["422"] = {
                "description": description,
                "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
            }
    schemas = openapi.get("components", {}).get("schemas", {})
    if _GENERATED_422.rsplit("/", 1)[1] in schemas and _GENERATED_422 not in repr(openapi.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return openapi


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers
        self.extensions = extensions


def pointer(location: tuple[Any, ...] | list[Any]) -> str:
    """A JSON pointer (RFC 6901) to the field, from a pydantic error location."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    escaped = [str(part).replace("~", "~0").replace("/", "~1") for part in parts]
    return "/" + "/".join(escaped) if escaped else ""


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_errors(raw_errors: Any) -> tuple[int, list[dict[str, str]]]:
    """Turn FastAPI's validation errors into (status, errors); malformed JSON is a 400, the rest 422."""
    errors: list[dict[str, str]] = []
    status = 422
    for error in raw_errors:
        if error.get("type") == "json_invalid":
            status = 400
            errors.append({"pointer": "", "detail": f"the body is not valid JSON: {error.get('msg', '')}"})
            continue
        message = str(error.get("msg", "invalid"))
        location = error.get("loc", ())
        if error.get("type") == "missing":
            message = "this field is required"
        errors.append({"pointer": pointer(location), "detail": message})
    return status, errors


# SQLSTATE classes that mean "the server is not there right now": connection exceptions, and the
# administrator shutting down, a crash shutdown, or a server still starting up.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> bool:
    """True when an error means the database cannot be reached now (restart, failover, network)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    for seen in _error_chain(exc):
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if (
            _sqlstate(seen).startswith(_UNAVAILABLE_SQLSTATES)
            or type(seen).__name__ == "ConnectionDoesNotExistError"
        ):
            return True
    return False


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors behind it: the driver's error hides behind SQLAlchemy's and the
    adapter's (a few levels at most)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


def _sqlstate(error: BaseException) -> str:
    return str(getattr(error, "sqlstate", "") or "")


# SQLSTATEs of a value the database's encoding cannot hold: U+0000 in text (22021) or in jsonb (22P05).
_UNSTORABLE_SQLSTATES = ("22021", "22P05")


def unstorable_character(exc: BaseException) -> bool:
    """True when PostgreSQL refused a value for a character it cannot store (U+0000). The input
    guard (``inputguard.py``) refuses those in JSON, forms, query strings and paths before a
    route runs; this catches what it cannot see (a multipart form's text field), as the client's
    error it is, after the transaction rolled back."""
    return any(_sqlstate(seen) in _UNSTORABLE_SQLSTATES for seen in _error_chain(exc))


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            slug=exc.slug,
            title=exc.title,
            errors=exc.errors,
            headers=exc.headers,
            instance=request.url.path,
            **exc.extensions,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, errors = validation_errors(exc.errors())
        detail = "the request body is not valid JSON" if status == 400 else "the request has invalid fields"
        return problem_response(
            status,
            detail,
            slug="malformed-request" if status == 400 else "invalid-request",
            errors=errors,
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(
            exc.status_code, detail, headers=getattr(exc, "headers", None), instance=request.url.path
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if unstorable_character(exc):
            return problem_response(
                422,
                "the request holds a character that cannot be stored (U+0000); nothing was stored",
                slug="invalid-request",
                instance=request.url.path,
                headers={"API-Version": API_VERSION},
            )
        if not database_unavailable(exc):
            return await _unexpected(request, exc)
        # The database is restarting or unreachable: nothing was acknowledged, the client may retry.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            503,
            "the database is unavailable; nothing was stored, retry shortly",
            slug="database-unavailable",
            instance=request.url.path,
            headers={"Retry-After": "2", "API-Version": API_VERSION},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Answered outside the middleware that adds API-Version, so it is set here.
        return problem_response(
            500,
            "an unexpected error occurred; it has been logged",
            instance=request.url.path,
            headers={"API-Version": API_VERSION},
        )
