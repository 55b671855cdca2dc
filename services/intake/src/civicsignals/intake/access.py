"""Who may call intake, from where and how often (DESIGN §3 and §5).

* Keys and scopes are checked by the common ``scope_dependency``; on top of it intake refuses a
  browser request whose ``Origin`` the key's tenant does not list in ``cors_origins`` (so a key of
  one tenant cannot be used from another tenant's portal page), and takes a token from the key's
  rate-limit bucket (429 with ``Retry-After``).
* Public routes (tracking, feedback, Open311 reads) are limited per client address instead.
* CORS: :class:`TenantCorsMiddleware` answers preflights for origins that any tenant lists (the
  browser sends no key with a preflight, so the tenant is not known yet) and adds the CORS headers
  to responses for those origins; the per-tenant check happens with the key, as above.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from civicsignals.common.auth import (
    ANY_SCOPE_ATTRIBUTE,
    SCOPE_ATTRIBUTE,
    Principal,
    any_scope_dependency,
    authenticate,
    authenticate_bearer,
    scope_dependency,
)
from civicsignals.common.problems import Problem, problem_response
from civicsignals.common.ratelimit import client_address
from civicsignals.common.tenants import TenantRegistry
from civicsignals.intake.flows import IntakeContext
from civicsignals.intake.tenantconfig import cors_origins


def _context(request: Request) -> IntakeContext:
    context: IntakeContext = request.app.state.intake
    return context


def check_origin(request: Request, registry: TenantRegistry, tenant_code: str) -> None:
    """A browser request (it carries ``Origin``) must come from one of the tenant's origins."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    tenant = registry.get(tenant_code)
    allowed = cors_origins(tenant) if tenant is not None else frozenset()
    if origin.rstrip("/") not in allowed:
        raise Problem(403, "this origin is not allowed for the key's municipality", slug="origin-not-allowed")


def authorised(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """``scope_dependency`` (or, given several scopes, ``any_scope_dependency``) plus the tenant's
    origin check and the caller's rate limit."""
    check_scope = scope_dependency(scopes[0]) if len(scopes) == 1 else any_scope_dependency(*scopes)

    async def _dependency(request: Request) -> Principal:
        return _admitted(request, await check_scope(request))

    if len(scopes) == 1:
        setattr(_dependency, SCOPE_ATTRIBUTE, scopes[0])
    else:
        setattr(_dependency, ANY_SCOPE_ATTRIBUTE, frozenset(scopes))
    _dependency.__name__ = check_scope.__name__
    return _dependency


def staff_or_partner(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """A read that staff (any of ``scopes``) and partner organisations (a ``partner:<code>``
    scope) may make; which objects a partner sees is for the flow to decide. With the tenant's
    origin check and the caller's rate limit, as :func:`authorised`."""

    async def _dependency(request: Request) -> Principal:
        ctx = _context(request)
        principal = await authenticate_bearer(ctx.runtime.tenants, request.headers.get("authorization"))
        if not (any(principal.allows(scope) for scope in scopes) or principal.partners):
            raise Problem(
                403,
                f"this key needs one of the scopes {', '.join(repr(s) for s in scopes)} or a partner:<code> scope",
                slug="forbidden",
            )
        request.state.principal = principal
        return _admitted(request, principal)

    return _dependency


def _admitted(request: Request, principal: Principal) -> Principal:
    """The checks every key-authenticated request passes after its scope: the tenant's origins,
    then the key's rate limit."""
    ctx = _context(request)
    check_origin(request, ctx.runtime.tenants, principal.tenant)
    ctx.key_limiter.check(principal.actor, what="this API key")
    return principal


def authorise_key(request: Request, api_key: str | None, scopes: tuple[str, ...]) -> Principal:
    """Open311's ``api_key`` form field: the same keys, checked the same way; 403 as the spec says."""
    ctx = _context(request)
    if not api_key:
        raise Problem(403, "api_key is missing", slug="unauthenticated")
    try:
        principal = authenticate(ctx.runtime.tenants, f"Bearer {api_key}")
    except Problem as exc:
        raise Problem(403, f"invalid api_key: {exc.detail}", slug="unauthenticated") from None
    if not any(principal.allows(scope) or _has_prefix(principal, scope) for scope in scopes):
        raise Problem(403, f"this api_key lacks the scope '{scopes[0]}'", slug="forbidden")
    request.state.principal = principal
    return _admitted(request, principal)


def _has_prefix(principal: Principal, scope: str) -> bool:
    """``partner:*`` matches any ``partner:<code>`` scope."""
    return scope.endswith(":*") and any(s.startswith(scope[:-1]) for s in principal.scopes)


def public_limit(request: Request) -> None:
    """The rate limit of routes anyone may call, per client address."""
    _context(request).public_limiter.check(f"ip:{client_address(request)}", what="this address")


EXPOSED_HEADERS = "Location, Retry-After, API-Version, Idempotent-Replayed"
ALLOWED_HEADERS = {"authorization", "content-type", "idempotency-key", "accept"}


class TenantCorsMiddleware:
    """CORS with the origins each tenant lists in ``tenant.yaml`` (``cors_origins``)."""

    def __init__(self, app: ASGIApp, registry: TenantRegistry, max_age_s: int = 600) -> None:
        self.app = app
        self.registry = registry
        self.max_age_s = max_age_s

    def _allowed(self, origin: str) -> bool:
        origin = origin.rstrip("/")
        for code in self.registry.codes():
            tenant = self.registry.get(code)
            if tenant is not None and origin in cors_origins(tenant):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self._allowed(origin)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, origin, allowed, headers)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, _send)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, origin: str, allowed: bool, headers: Headers
    ) -> None:
        if not allowed:
            response = problem_response(403, "this origin is not allowed", slug="origin-not-allowed")
            await response(scope, receive, send)
            return
        requested = {
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        }
        refused = requested - ALLOWED_HEADERS
        if refused or headers["access-control-request-method"].upper() not in ("GET", "POST"):
            response = problem_response(
                403, "the preflight asks for a method or headers intake does not allow", slug="cors-refused"
            )
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", b"GET, POST"),
                    (
                        b"access-control-allow-headers",
                        b"Authorization, Content-Type, Idempotency-Key, Accept",
                    ),
                    (b"access-control-max-age", str(self.max_age_s).encode()),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
