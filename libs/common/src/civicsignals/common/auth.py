"""Who calls, checked the same way by every service (DESIGN §3).

``Authorization: Bearer <credential>`` carries one of two things, told apart by their shape:

* an **API key** (``cs_<key id>.<secret>``) of a service account: the key id picks the record, the
  hash is compared in constant time, then revocation and expiry are checked;
* a **token** of the municipality's OpenID Connect provider (a signed JWT) for a person: checked
  against the provider's JWKS, issuer, audience and expiry (:mod:`civicsignals.common.oidc`), its
  claims mapped to tenant, scopes and departments.

Either becomes a :class:`Principal`; the route's scope is checked last. Logs and audit records
carry the key id or the person's subject id, never the key, the token, a name or an address.
"""

from __future__ import annotations

import hmac
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from civicsignals.common.oidc import Identity, TokenError, looks_like_jwt
from civicsignals.common.problems import Problem
from civicsignals.common.tenants import KEY_PREFIX, ApiKeyRecord, TenantRegistry, hash_key, key_id_of

log = logging.getLogger(__name__)

#: The attribute a scope dependency carries, so tests and tools can tell which scope a route needs.
SCOPE_ATTRIBUTE = "__civicsignals_scope__"
#: The scopes any one of which an :func:`any_scope_dependency` accepts (a frozenset).
ANY_SCOPE_ATTRIBUTE = "__civicsignals_any_scope__"


@dataclass(frozen=True)
class Principal:
    """Who calls: a tenant, the key id (never the key) or person, the scopes and departments granted.

    ``departments`` empty means every department of the tenant. ``key_id`` is empty for a person;
    ``subject`` is the key id for a key and the provider's subject id (or its pseudonym) for a person.
    """

    tenant: str
    key_id: str
    scopes: frozenset[str]
    departments: frozenset[str] = field(default_factory=frozenset)
    subject_kind: Literal["key", "person"] = "key"
    subject: str = ""

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def partners(self) -> frozenset[str]:
        """The partner organisations this caller acts for: the codes of its ``partner:<code>`` scopes."""
        return frozenset(scope.split(":", 1)[1] for scope in self.scopes if scope.startswith("partner:"))

    def sees_department(self, department: str) -> bool:
        """Whether this caller may see what belongs to ``department`` (cases, feeds)."""
        return not self.departments or department in self.departments or "admin" in self.scopes

    @property
    def actor(self) -> str:
        """How logs and audit records name the caller: ``key:<id>`` or ``person:<subject id>``."""
        if self.subject_kind == "person":
            return f"person:{self.subject}"
        return f"key:{self.key_id}"


_UNAUTHORISED_HEADERS = {"WWW-Authenticate": 'Bearer realm="civicsignals"'}
_NO_CREDENTIALS = "send an API key as 'Authorization: Bearer <key>'"


def _unauthenticated(detail: str) -> Problem:
    return Problem(401, detail, slug="unauthenticated", headers=_UNAUTHORISED_HEADERS)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise _unauthenticated(_NO_CREDENTIALS)
    credential = authorization[7:].strip()
    if not credential:
        raise _unauthenticated(_NO_CREDENTIALS)
    return credential


def authenticate(registry: TenantRegistry, authorization: str | None) -> Principal:
    """Check a bearer API key against the tenants' key files; raises a 401 problem when it fails."""
    key = _bearer(authorization)
    key_id = key_id_of(key)
    record = registry.find_key(key_id) if key_id else None
    # Compare even when no record was found, so that timing tells nothing about which ids exist.
    expected = record.key_hash if record else "sha256:" + "0" * 64
    matches = hmac.compare_digest(hash_key(key).encode(), expected.encode())
    if record is None or not matches:
        log.info("auth: refused an API key (key id %s)", key_id if record else "unknown")
        raise _unauthenticated("the API key is not valid")
    if record.revoked:
        log.info("auth: refused revoked key %s", record.key_id)
        raise _unauthenticated("the API key has been revoked")
    if record.expires is not None and record.expires <= datetime.now(UTC):
        log.info("auth: refused expired key %s", record.key_id)
        raise _unauthenticated("the API key has expired")
    return _principal_of(record)


def _principal_of(record: ApiKeyRecord) -> Principal:
    return Principal(
        tenant=record.tenant,
        key_id=record.key_id,
        scopes=record.scopes,
        departments=record.departments,
        subject_kind="key",
        subject=record.key_id,
    )


async def authenticate_bearer(registry: TenantRegistry, authorization: str | None) -> Principal:
    """An API key or an OpenID Connect token, told apart by shape; raises a 401 problem when it fails."""
    credential = _bearer(authorization)
    if credential.startswith(KEY_PREFIX) or not looks_like_jwt(credential):
        principal = _verified_keys(registry).principal(registry, credential)
        if principal is not None:
            return principal
        # Reading key files may touch the disk: keep it off the event loop.
        principal = await run_in_threadpool(authenticate, registry, authorization)
        _verified_keys(registry).remember(credential, registry)
        return principal
    try:
        identity = await registry.oidc.verify(credential, registry)
    except TokenError as error:
        raise _unauthenticated(error.detail) from error
    return person_principal(identity)


def person_principal(identity: Identity) -> Principal:
    """The caller a verified OpenID Connect token stands for (on the API and the staff pages)."""
    return Principal(
        tenant=identity.tenant,
        key_id="",
        scopes=identity.scopes,
        departments=identity.departments,
        subject_kind="person",
        subject=identity.subject,
    )


class VerifiedKeys:
    """API keys this process has verified, so a portal's every request need not go through a
    worker thread (the thread hop cost more than the rest of the check).

    Entries are keyed by the key's hash, never the key, and hold the registry's record object.
    A hit is only taken while the registry still returns that very object for the key id: the
    registry replaces every record when a ``keys.yaml`` changes (it looks every
    ``check_interval_s``), so rotation and revocation end the entry exactly when the uncached
    check would start refusing. Revocation and expiry are checked again on every hit.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._records: dict[str, ApiKeyRecord] = {}

    def principal(self, registry: TenantRegistry, credential: str) -> Principal | None:
        if not self._records:
            return None
        hashed = hash_key(credential)
        record = self._records.get(hashed)
        if record is None:
            return None
        current = registry.find_key(record.key_id)  # the interval-gated refresh, in memory
        if (
            current is not record
            or record.revoked
            or (record.expires is not None and record.expires <= datetime.now(UTC))
        ):
            self._records.pop(hashed, None)
            return None
        return _principal_of(record)

    def remember(self, credential: str, registry: TenantRegistry) -> None:
        key_id = key_id_of(credential)
        record = registry.find_key(key_id) if key_id else None
        hashed = hash_key(credential)
        if record is None or not hmac.compare_digest(hashed.encode(), record.key_hash.encode()):
            return
        if len(self._records) >= self.max_entries:
            self._records.clear()
        self._records[hashed] = record


_VERIFIED: weakref.WeakKeyDictionary[TenantRegistry, VerifiedKeys] = weakref.WeakKeyDictionary()


def _verified_keys(registry: TenantRegistry) -> VerifiedKeys:
    cache = _VERIFIED.get(registry)
    if cache is None:
        cache = _VERIFIED[registry] = VerifiedKeys()
    return cache


def get_registry(request: Request) -> TenantRegistry:
    registry: TenantRegistry = request.app.state.tenants
    return registry


def scope_dependency(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency for a route that needs ``scope``; use it as
    ``Writer = Annotated[Principal, Depends(scope_dependency("signals:write"))]``.

    It runs before the body is validated, so a caller without a valid credential learns nothing
    about what the route expects.
    """

    async def _dependency(request: Request) -> Principal:
        principal = await authenticate_bearer(get_registry(request), request.headers.get("authorization"))
        if not principal.allows(scope):
            log.info("auth: %s lacks scope %s", principal.actor, scope)
            raise Problem(403, f"this key lacks the scope '{scope}'", slug="forbidden")
        request.state.principal = principal
        return principal

    setattr(_dependency, SCOPE_ATTRIBUTE, scope)
    _dependency.__name__ = f"requires_{scope.replace(':', '_')}"
    return _dependency


def any_scope_dependency(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """Like :func:`scope_dependency`, for a route that any one of ``scopes`` opens (a read that
    administrators and writers may both do)."""
    if not scopes:
        raise ValueError("name at least one scope")

    async def _dependency(request: Request) -> Principal:
        principal = await authenticate_bearer(get_registry(request), request.headers.get("authorization"))
        if not any(principal.allows(scope) for scope in scopes):
            log.info("auth: %s lacks every scope of %s", principal.actor, ", ".join(scopes))
            raise Problem(
                403,
                f"this key lacks one of the scopes {', '.join(repr(s) for s in scopes)}",
                slug="forbidden",
            )
        request.state.principal = principal
        return principal

    setattr(_dependency, ANY_SCOPE_ATTRIBUTE, frozenset(scopes))
    _dependency.__name__ = "requires_any_of_" + "_".join(scope.replace(":", "_") for scope in scopes)
    return _dependency
