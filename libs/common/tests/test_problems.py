"""RFC 9457 problem details and request limits (DESIGN §5), through a real service app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from civicsignals.common.problems import PROBLEM_JSON, document_problems, install_problem_handlers, pointer

pytestmark = pytest.mark.timeout(30)

MAX_BODY_BYTES = 2048  # as in conftest.py


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is a problem document of ``status``, and leaks nothing of the server."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"] == "about:blank" or body["type"].startswith("https://civicsignals.nl/problems/")
    assert "Traceback" not in response.text
    return body


class Thing(BaseModel):
    name: str


@pytest.fixture
def headers(tenant_key: Any) -> dict[str, str]:
    return dict(tenant_key.authorization)


async def test_malformed_json_is_a_400(service: Any, headers: dict[str, str]) -> None:
    response = await service.client.post(
        "/v1/signals",
        content=b'{"text": "kapotte lantaarn", ',
        headers={**headers, "content-type": "application/json"},
    )
    body = assert_problem(response, 400)
    assert body["type"] == "https://civicsignals.nl/problems/malformed-request"
    assert body["instance"] == "/v1/signals"
    assert body["errors"][0]["pointer"] == ""


async def test_a_missing_field_is_a_422_with_a_pointer(service: Any, headers: dict[str, str]) -> None:
    response = await service.client.post("/v1/signals", json={"channel": "web"}, headers=headers)
    body = assert_problem(response, 422)
    assert body["type"] == "https://civicsignals.nl/problems/invalid-request"
    assert body["errors"] == [{"pointer": "/text", "detail": "this field is required"}]


async def test_every_invalid_field_gets_its_own_pointer(service: Any, headers: dict[str, str]) -> None:
    response = await service.client.post(
        "/v1/signals",
        json={"text": "", "channel": "fax", "location": {"lat": 123, "lon": 4.7}},
        headers=headers,
    )
    body = assert_problem(response, 422)
    pointers = sorted(error["pointer"] for error in body["errors"])
    assert pointers == ["/channel", "/location/lat", "/text"]
    assert all(error["detail"] for error in body["errors"])


async def test_a_body_of_the_wrong_shape_is_a_422(service: Any, headers: dict[str, str]) -> None:
    response = await service.client.post("/v1/signals", json=["not", "an", "object"], headers=headers)
    body = assert_problem(response, 422)
    assert body["errors"][0]["pointer"] == ""


async def test_an_unknown_route_is_a_404_problem(service: Any) -> None:
    body = assert_problem(await service.client.get("/v1/nothing-here"), 404)
    assert body["instance"] == "/v1/nothing-here"


async def test_a_wrong_method_is_a_405_problem_with_allow(service: Any) -> None:
    response = await service.client.delete("/v1/echo")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


async def test_a_raised_problem_keeps_its_type_and_extensions(service: Any) -> None:
    body = assert_problem(await service.client.get("/v1/conflict"), 409)
    assert body["type"] == "https://civicsignals.nl/problems/conflict"
    assert body["detail"] == "the case was changed meanwhile"
    assert body["current_sequence"] == 7


async def test_an_unexpected_error_is_a_500_without_details(service: Any) -> None:
    response = await service.client.get("/v1/boom")
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert body["detail"] == "an unexpected error occurred; it has been logged"


async def test_a_declared_body_over_the_limit_is_a_413(service: Any, headers: dict[str, str]) -> None:
    response = await service.client.post(
        "/v1/signals", json={"text": "x" * (MAX_BODY_BYTES + 1), "channel": "web"}, headers=headers
    )
    body = assert_problem(response, 413)
    assert body["type"] == "https://civicsignals.nl/problems/body-too-large"


async def test_a_streamed_body_over_the_limit_is_a_413(service: Any, headers: dict[str, str]) -> None:
    """No Content-Length (chunked): the limit is counted while the body arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(4):
            yield b"x" * 1000
        yield b'", "channel": "web"}'

    response = await service.client.post(
        "/v1/signals", content=chunks(), headers={**headers, "content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    body = assert_problem(response, 413)
    assert body["type"] == "https://civicsignals.nl/problems/body-too-large"


async def test_a_body_just_under_the_limit_is_accepted(service: Any, headers: dict[str, str]) -> None:
    text = "x" * (MAX_BODY_BYTES - len('{"text": "", "channel": "web"}'))
    response = await service.client.post(
        "/v1/signals", json={"text": text, "channel": "web"}, headers=headers
    )
    assert response.status_code == 201, response.text


async def test_problem_handlers_on_a_bare_app() -> None:
    """``install_problem_handlers`` alone is enough for a FastAPI app to answer in problems."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/things")
    async def create(body: Thing) -> dict[str, str]:
        return {"name": body.name}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
        body = assert_problem(await client.post("/things", json={}), 422)
        assert body["errors"] == [{"pointer": "/name", "detail": "this field is required"}]
        assert_problem(await client.get("/nothing"), 404)
        assert (await client.post("/things", json={"name": "a"})).json() == {"name": "a"}


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (("body", "text"), "/text"),
        (("body", "location", "lat"), "/location/lat"),
        (("body", "turns", 0, "speaker"), "/turns/0/speaker"),
        (("query", "cursor"), "/cursor"),
        (("body", "a/b", "c~d"), "/a~1b/c~0d"),
        (("body",), ""),
    ],
)
def test_json_pointers(location: tuple[Any, ...], expected: str) -> None:
    assert pointer(location) == expected


async def test_the_openapi_document_describes_problems_not_fastapis_422(service: Any) -> None:
    """Clients are generated from the document: its 422 must be the problem+json the handlers send."""
    document = (await service.client.get("/openapi.json")).json()
    unprocessable = document["paths"]["/v1/signals"]["post"]["responses"]["422"]
    assert set(unprocessable["content"]) == {PROBLEM_JSON}
    assert unprocessable["content"][PROBLEM_JSON]["schema"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]
    assert "HTTPValidationError" not in str(document)


def test_a_route_with_its_own_error_format_is_told_what_still_comes_as_a_problem() -> None:
    """Open311's routes answer bad input with their own 400 error arrays; only the input guard's
    422 (a value no database stores) reaches their clients as problem+json."""
    app = FastAPI()

    @app.get(
        "/own",
        responses={400: {"description": "an error array", "content": {"application/json": {"schema": {}}}}},
    )
    async def own(q: str) -> dict[str, str]:
        return {"q": q}

    document = document_problems(app.openapi())
    unprocessable = document["paths"]["/own"]["get"]["responses"]["422"]
    assert set(unprocessable["content"]) == {PROBLEM_JSON}
    assert "before the route" in unprocessable["description"]
    assert "HTTPValidationError" not in document.get("components", {}).get("schemas", {})
