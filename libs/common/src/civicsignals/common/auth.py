"""API keys checked the same way by every service (DESIGN §3).

``Authorization: Bearer <key>``: the key id picks the record, the hash is compared in constant
time, then expiry, revocation and the route's scope are checked. Logs and audit records carry the
key id, never the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Request

from civicsignals.common.problems import Problem
from civicsignals.common.tenants import TenantRegistry, hash_key, key_id_of


@dataclass(frozen=True)
class Principal:
    """Who calls: a tenant, a key id (never the key) and the scopes granted."""

    tenant: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"


_UNAUTHORISED_HEADERS = {"WWW-Authenticate": 'Bearer realm="civicsignals"'}


def authenticate(registry: TenantRegistry, authorization: str | None) -> Principal:
    """Check a bearer key against the tenants' key files; raises a 401 problem when it fails."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Problem(
            401,
            "send an API key as 'Authorization: Bearer <key>'",
            slug="unauthenticated",
            headers=_UNAUTHORISED_HEADERS,
        )
    key = authorization[7:].strip()
    key_id = key_id_of(key)
    record = registry.find_key(key_id) if key_id else None
    # Compare even when no record was found, so that timing tells nothing about which ids exist.
    expected = record.key_hash if record else "sha256:" + "0" * 64
    matches = hmac.compare_digest(hash_key(key).encode(), expected.encode())
    if record is None or not matches:
        raise Problem(401, "the API key is not valid", slug="unauthenticated", headers=_UNAUTHORISED_HEADERS)
    if record.revoked:
        raise Problem(
            401, "the API key has been revoked", slug="unauthenticated", headers=_UNAUTHORISED_HEADERS
        )
    if record.expires is not None and record.expires <= datetime.now(UTC):
        raise Problem(401, "the API key has expired", slug="unauthenticated", headers=_UNAUTHORISED_HEADERS)
    return Principal(tenant=record.tenant, key_id=record.key_id, scopes=record.scopes)


def get_registry(request: Request) -> TenantRegistry:
    registry: TenantRegistry = request.app.state.tenants
    return registry


def scope_dependency(scope: str) -> Callable[[Request], Principal]:
    """A dependency for a route that needs ``scope``; use it as
    ``Writer = Annotated[Principal, Depends(scope_dependency("signals:write"))]``."""

    def _dependency(request: Request) -> Principal:
        principal = authenticate(get_registry(request), request.headers.get("authorization"))
        if not principal.allows(scope):
            raise Problem(403, f"this key lacks the scope '{scope}'", slug="forbidden")
        request.state.principal = principal
        return principal

    return _dependency
