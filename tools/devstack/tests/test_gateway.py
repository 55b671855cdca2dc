"""The gateway forwards to real upstreams by longest prefix and answers problems on failure."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from civicsignals.devstack.gateway import METHODS, Gateway, create_gateway
from civicsignals.devstack.ports import free_port


def upstream(label: str) -> Starlette:
    """An upstream that echoes what it received, plus a few special endpoints."""

    async def echo(request: Request) -> Response:
        return JSONResponse(
            {
                "upstream": label,
                "method": request.method,
                "raw_path": request.scope["raw_path"].decode(),
                "query": request.scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
                "body": (await request.body()).decode(),
            }
        )

    async def redirect(request: Request) -> Response:
        return Response(status_code=307, headers={"location": "/v1/elsewhere"})

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1.5)
        return PlainTextResponse("too late")

    async def cookies(request: Request) -> Response:
        resp = PlainTextResponse("cookies", status_code=201)
        resp.set_cookie("a", "1")
        resp.set_cookie("b", "2")
        return resp

    async def big(request: Request) -> Response:
        return PlainTextResponse("afval " * 2000)

    return Starlette(
        routes=[
            Route("/v1/redirect", redirect),
            Route("/v1/slow", slow),
            Route("/v1/cookies", cookies),
            Route("/v1/big", big),
            Route("/{path:path}", echo, methods=list(METHODS)),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=500)],
    )


@pytest.fixture(scope="module")
def stack(serve_app: Callable[[Any], Any]) -> Iterator[tuple[httpx.Client, int, str]]:
    a = serve_app(upstream("A"))
    b = serve_app(upstream("B"))
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_gateway(
        [("/v1", a.url), ("/v1/cases", b.url), ("/down", down)],
        timeout=httpx.Timeout(0.5, connect=1.0),
    )
    gw = serve_app(app)
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        yield client, gw.port, b.url


def headers_of(data: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in data["headers"]}


def test_longest_prefix_wins_on_segment_boundaries(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    assert client.get("/v1/cases").json()["upstream"] == "B"
    assert client.get("/v1/cases/123/history").json()["upstream"] == "B"
    assert client.get("/v1/casesx").json()["upstream"] == "A"
    assert client.get("/v1/signals").json()["upstream"] == "A"


def test_path_and_query_string_are_forwarded_verbatim(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    data = client.get("/v1/cases/a%2Fb/x?b=2&a=1&a=3&q=hello%20world&empty=&flag").json()
    assert data["raw_path"] == "/v1/cases/a%2Fb/x"
    assert data["query"] == "b=2&a=1&a=3&q=hello%20world&empty=&flag"


def test_method_body_and_headers_are_forwarded(stack: tuple[httpx.Client, int, str]) -> None:
    client, gw_port, b_url = stack
    resp = client.put(
        "/v1/cases/9",
        content=b'{"status": "in_progress"}',
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer secret-key",
            "Idempotency-Key": "k-1",
            "X-Forwarded-For": "10.0.0.1",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "per-connection",
            "Keep-Alive": "timeout=5",
        },
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["method"] == "PUT"
    assert data["body"] == '{"status": "in_progress"}'
    headers = headers_of(data)
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer secret-key"
    assert headers["idempotency-key"] == "k-1"
    assert headers["content-length"] == str(len(b'{"status": "in_progress"}'))
    assert headers["host"] == b_url.removeprefix("http://")
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw_port}"
    assert "x-drop-me" not in headers and "keep-alive" not in headers
    assert headers.get("connection", "keep-alive") == "keep-alive"  # the gateway's own, if any


def test_responses_are_relayed_as_they_are(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    redirect = client.get("/v1/redirect")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/v1/elsewhere"

    cookies = client.get("/v1/cookies")
    assert cookies.status_code == 201
    assert sorted(cookies.headers.get_list("set-cookie")) == [
        "a=1; Path=/; SameSite=lax",
        "b=2; Path=/; SameSite=lax",
    ]

    with client.stream("GET", "/v1/big", headers={"Accept-Encoding": "gzip"}) as big:
        raw = b"".join(big.iter_raw())
    assert big.headers["content-encoding"] == "gzip"
    assert int(big.headers["content-length"]) == len(raw)
    assert gzip.decompress(raw).decode() == "afval " * 2000


def _assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


def test_unknown_prefix_is_a_404_problem(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    body = _assert_problem(client.get("/v2/nothing"), 404)
    assert "/v2/nothing" in body["detail"] and "/v1/cases" in body["detail"]


def test_upstream_down_is_a_502_problem(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    _assert_problem(client.post("/down/x", json={"a": 1}), 502)


def test_upstream_timeout_is_a_504_problem(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    _assert_problem(client.get("/v1/slow"), 504)


def test_own_livez_and_index(stack: tuple[httpx.Client, int, str]) -> None:
    client, _, _ = stack
    assert client.get("/livez").json() == {"status": "ok"}
    index = client.get("/").json()
    assert {r["prefix"] for r in index["routes"]} == {"/v1", "/v1/cases", "/down"}
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html") and "/v1/cases" in page.text


def test_route_table_validation() -> None:
    gateway = Gateway([("/open311/", "http://127.0.0.1:1"), ("/open311/v2", "http://127.0.0.1:2/")])
    route = gateway.resolve("/open311/v2/services.json")
    assert route is not None and route.upstream == "http://127.0.0.1:2"
    assert gateway.resolve("/open311") is not None
    assert gateway.resolve("/other") is None
    with pytest.raises(ValueError, match="start with"):
        Gateway([("v1", "http://127.0.0.1:1")])
    with pytest.raises(ValueError, match="duplicate"):
        Gateway([("/v1", "http://127.0.0.1:1"), ("/v1/", "http://127.0.0.1:2")])
    with pytest.raises(ValueError, match="absolute"):
        Gateway([("/v1", "127.0.0.1:1")])
