"""The one local entry point: a small reverse proxy that routes by path prefix.

In Kubernetes an ingress routes by path prefix to each service; locally this gateway plays that
role on http://127.0.0.1:8000, so portals, docs and the tracking page use the same URLs in both
places. Services' paths never overlap (DESIGN §1), so the full path is forwarded unchanged: no
prefix is stripped.

Deliberately small: whole bodies are buffered (no streaming), one shared ``httpx.AsyncClient``
keeps connections to the upstreams alive, and redirects are passed back to the client rather than
followed, exactly as an ingress would.
"""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route as StarletteRoute

__all__ = ["DEFAULT_TIMEOUT", "HOP_BY_HOP_HEADERS", "Gateway", "Route", "create_gateway"]

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1 plus the legacy ones still seen in the wild: they describe one connection, not
# the message, so a proxy must not forward them.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Short connect (a local service is either there or not), generous read (classification of a long
# conversation may take a while).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

PROBLEM_JSON = "application/problem+json"

# Every method a service may use; the catch-all route must accept them all.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class Route:
    """One path prefix and the upstream base URL that serves it."""

    prefix: str
    upstream: str

    def matches(self, path: str) -> bool:
        """Match whole path segments: ``/v1/cases`` serves ``/v1/cases/1`` but not ``/v1/casesx``."""
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")


def _normalise(routes: Iterable[tuple[str, str]]) -> list[Route]:
    result: list[Route] = []
    seen: set[str] = set()
    for prefix, upstream in routes:
        if not prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/': {prefix!r}")
        norm = prefix.rstrip("/") or "/"
        if norm in seen:
            raise ValueError(f"duplicate route prefix: {norm!r}")
        url = httpx.URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream must be an absolute http(s) URL: {upstream!r}")
        seen.add(norm)
        result.append(Route(norm, upstream.rstrip("/")))
    # Longest prefix first, so the first match is the most specific one.
    return sorted(result, key=lambda r: len(r.prefix), reverse=True)


def _connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in ``Connection``: hop-by-hop for this message too (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _end_to_end(
    headers: Sequence[tuple[bytes, bytes]], drop: Iterable[str] = ()
) -> list[tuple[bytes, bytes]]:
    skip = {h.encode() for h in HOP_BY_HOP_HEADERS} | {h.encode() for h in drop}
    skip |= _connection_tokens(headers)
    return [(k, v) for k, v in headers if k.lower() not in skip]


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response.

    ``type`` is ``about:blank``: these are plain HTTP failures of the local gateway, for which the
    RFC says the title is the status phrase and no further semantics are implied.
    """
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


class Gateway:
    """Routing table plus the shared HTTP client; the ASGI app wraps one of these."""

    def __init__(
        self, routes: Iterable[tuple[str, str]], *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT
    ) -> None:
        """Validate and sort ``routes``; the client is created on startup (or first use)."""
        self.routes = _normalise(routes)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The one client shared by every request (connection pooling to the upstreams).

        ``trust_env=False``: a proxy configured in the environment must not intercept loopback
        traffic. ``follow_redirects=False``: a redirect is the client's business, not ours.
        """
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the shared client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def resolve(self, path: str) -> Route | None:
        """The route with the longest prefix matching ``path``, if any."""
        return next((r for r in self.routes if r.matches(path)), None)

    async def forward(self, request: Request) -> Response:
        """Send ``request`` to its upstream and relay the answer, or answer a problem."""
        path = request.url.path
        route = self.resolve(path)
        if route is None:
            prefixes = ", ".join(sorted(r.prefix for r in self.routes))
            return problem(404, "Not Found", f"No service serves {path}. Known prefixes: {prefixes}.")

        scope = request.scope
        raw_path: bytes = scope.get("raw_path") or path.encode()
        raw_path = raw_path.split(b"?", 1)[0]
        query: bytes = scope.get("query_string", b"")
        base = httpx.URL(route.upstream)
        target = base.copy_with(
            raw_path=base.raw_path.rstrip(b"/") + raw_path + (b"?" + query if query else b"")
        )

        headers = _end_to_end(request.headers.raw, drop=("host", "content-length"))
        headers = [
            (k, v)
            for k, v in headers
            if k.lower() not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
        ]
        client_host = request.client.host if request.client else ""
        previous_for = request.headers.get("x-forwarded-for")
        forwarded_for = f"{previous_for}, {client_host}" if previous_for else client_host
        headers.append((b"x-forwarded-for", forwarded_for.encode("latin-1")))
        headers.append((b"x-forwarded-proto", request.url.scheme.encode("latin-1")))
        if "host" in request.headers:
            headers.append((b"x-forwarded-host", request.headers["host"].encode("latin-1")))

        body = await request.body()
        upstream_request = self.client.build_request(request.method, target, headers=headers, content=body)
        try:
            upstream = await self.client.send(upstream_request, stream=True)
            try:
                # Raw bytes: the body stays exactly as the upstream encoded it (gzip included),
                # matching the Content-Encoding header relayed below.
                content = b"".join([chunk async for chunk in upstream.aiter_raw()])
            finally:
                await upstream.aclose()
        except httpx.TimeoutException as exc:
            log.warning("upstream %s timed out for %s %s: %r", route.upstream, request.method, path, exc)
            return problem(504, "Gateway Timeout", f"The service at {route.upstream} did not answer in time.")
        except httpx.TransportError as exc:
            log.warning("upstream %s failed for %s %s: %r", route.upstream, request.method, path, exc)
            return problem(
                502,
                "Bad Gateway",
                f"The service at {route.upstream} is not reachable ({type(exc).__name__}). Is it running?",
            )

        response = Response(content=content, status_code=upstream.status_code)
        out = _end_to_end(upstream.headers.raw)
        no_body_status = upstream.status_code < 200 or upstream.status_code in (204, 304)
        if request.method != "HEAD" and not no_body_status:
            # The upstream may have sent the body chunked (a hop-by-hop framing dropped above);
            # the client gets it with an exact length instead.
            out = [(k, v) for k, v in out if k.lower() != b"content-length"]
            out.append((b"content-length", str(len(content)).encode()))
        response.raw_headers = out
        return response

    def index(self, request: Request) -> Response:
        """List the routes: JSON for programs, a small HTML page for a browser."""
        routes = sorted(self.routes, key=lambda r: r.prefix)
        accept = request.headers.get("accept", "")
        if "text/html" in accept:
            rows = "".join(
                f"<tr><td><a href='{html.escape(r.prefix)}'>{html.escape(r.prefix)}</a></td>"
                f"<td>{html.escape(r.upstream)}</td>"
                f"<td><a href='{html.escape(r.upstream)}/docs'>docs</a></td></tr>"
                for r in routes
            )
            page = (
                "<!doctype html><html lang='en'><meta charset='utf-8'><title>Civic Signals</title>"
                "<h1>Civic Signals &mdash; local entry point</h1>"
                "<table><tr><th>prefix</th><th>upstream</th><th></th></tr>"
                f"{rows}</table></html>"
            )
            return HTMLResponse(page)
        return JSONResponse(
            {
                "name": "Civic Signals local entry point",
                "routes": [{"prefix": r.prefix, "upstream": r.upstream} for r in routes],
                "livez": "/livez",
            }
        )


def create_gateway(
    routes: Sequence[tuple[str, str]], *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT
) -> Starlette:
    """Build the gateway ASGI app routing ``(prefix, upstream base URL)`` pairs.

    The gateway answers ``/`` (an index of the routes) and ``/livez`` itself; every other path is
    forwarded to the route with the longest matching prefix, or answered with a 404 problem.
    The :class:`Gateway` is available as ``app.state.gateway``.

    Serve it with ``proxy_headers=False`` (uvicorn): the gateway is the edge, and uvicorn would
    otherwise replace the peer address with a client-supplied ``X-Forwarded-For`` from loopback.
    """
    gateway = Gateway(routes, timeout=timeout)

    async def dispatch(request: Request) -> Response:
        path = request.url.path
        if path == "/" and request.method in ("GET", "HEAD"):
            return gateway.index(request)
        if path == "/livez" and request.method in ("GET", "HEAD"):
            return JSONResponse({"status": "ok"})
        return await gateway.forward(request)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _ = gateway.client  # create it on the server's event loop
        try:
            yield
        finally:
            await gateway.aclose()

    app = Starlette(routes=[StarletteRoute("/{path:path}", dispatch, methods=METHODS)], lifespan=lifespan)
    app.state.gateway = gateway
    return app
