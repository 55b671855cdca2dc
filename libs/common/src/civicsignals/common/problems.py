"""RFC 9457 problem details for every error a service returns.

Every 4xx and 5xx is ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail``
and, for invalid input, ``errors``: one entry per field with a JSON pointer to it. No stack trace
ever leaves a service, and bad input is never a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://civicsignals.nl/problems/"
API_VERSION = "1.0.0"


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
