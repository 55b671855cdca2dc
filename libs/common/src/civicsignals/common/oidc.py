"""People sign in with their municipality's OpenID Connect provider (DESIGN §3).

A service receives the provider's bearer token (a signed JWT) and checks it itself: the signature
against the provider's JWKS, then issuer, audience, expiry and not-before. Which tenant a token
speaks for follows from the tenant folders: each ``tenant.yaml`` may name its provider in an
``oidc:`` block; several tenants may share one provider and tell their people apart by a claim
(``tenant_claim``). Claims become scopes and departments through the same block.

The JWKS is cached per URL and fetched again when it grows old or when a token names a key id
the cache does not hold (the provider rotated its keys), at most once per
``min_refresh_interval_s`` so that tokens with invented key ids cannot make us hammer the
provider. Everything is checked with joserfc, a maintained JOSE library; nothing here
re-implements cryptography.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from civicsignals.common.tenants import TenantRegistry

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256")
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class OidcConfig(BaseModel):
    """A tenant's ``oidc:`` block (schema in ``schemas/tenant.schema.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    audience: str | list[str]
    jwks_url: str | None = Field(default=None, description="empty: from the issuer's discovery document")
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    leeway_s: int = 30
    subject_claim: str = "sub"
    tenant_claim: str | None = Field(default=None, description="needed when tenants share an issuer")
    tenant_value: str | None = Field(default=None, description="the tenant claim's value; default the code")
    scope_claim: str | None = "scope"
    groups_claim: str | None = "groups"
    departments_claim: str | None = None
    group_scopes: dict[str, list[str]] = Field(default_factory=dict)
    group_departments: dict[str, list[str]] = Field(default_factory=dict)
    web_client_id: str | None = Field(
        default=None,
        description="the client id staff sign in with on the services' own pages (authorization code "
        "flow with PKCE, a public client); None: those pages take API keys only",
    )

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class TokenError(Exception):
    """A bearer token was refused; ``status`` is 401 (not valid) or 403 (valid, but not for us)."""

    def __init__(self, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class Identity:
    """What a valid token says, after the tenant's mapping: never a name or an e-mail address."""

    tenant: str
    subject: str
    scopes: frozenset[str]
    departments: frozenset[str]
    issuer: str


def looks_like_jwt(token: str) -> bool:
    """A JWS compact serialisation: three base64url parts; API keys (``cs_…``) never look like this."""
    return bool(_JWT_SHAPE.fullmatch(token))


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWTs and the staff pages' signed cookies write it."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_json(part: str) -> dict[str, Any]:
    """The JSON object in a base64url part (padding optional); ``ValueError`` for anything else."""
    padded = part + "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims *before* verification: only to pick the tenant and the key set to verify with."""
    try:
        header, payload, _ = token.split(".")
        return b64url_json(header), b64url_json(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError("the bearer token is not a readable JWT") from exc


def check_transport(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise TokenError(f"the identity provider's URL must use https: {url}", 401)


def pseudonymous_subject(issuer: str, subject: str) -> str:
    """The subject as it may appear in logs and audit records.

    Most providers give an opaque id; one that uses an e-mail address or a phone number as the
    subject gets a stable pseudonym instead, so that no personal data reaches the audit log.
    """
    if re.fullmatch(r"[A-Za-z0-9._:|-]{1,128}", subject) and not re.search(r"\d{7,}", subject):
        return subject
    return "h-" + hashlib.sha256(f"{issuer}|{subject}".encode()).hexdigest()[:24]


def _claim_values(claims: dict[str, Any], name: str | None) -> list[str]:
    """A claim as a list of strings: a space-separated string or a list (dots reach into objects)."""
    if not name:
        return []
    value: Any = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in value if isinstance(item, str | int)]
    return []


def map_claims(
    config: OidcConfig, claims: dict[str, Any], known_scopes: set[str]
) -> tuple[set[str], set[str]]:
    """Scopes and departments of a person: from the scope claim (only scopes we know), the groups
    claim through ``group_scopes``/``group_departments``, and the departments claim."""
    scopes = {
        s for s in _claim_values(claims, config.scope_claim) if s in known_scopes or s.startswith("partner:")
    }
    departments = set(_claim_values(claims, config.departments_claim))
    for group in _claim_values(claims, config.groups_claim):
        scopes.update(config.group_scopes.get(group, []))
        departments.update(config.group_departments.get(group, []))
    return scopes, departments


@dataclass
class _CachedKeys:
    keys: KeySet
    fetched: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OidcVerifier:
    """Verifies bearer tokens against the tenants' providers; one per service process.

    ``jwks_ttl_s``: a key set older than this is fetched again before use.
    ``min_refresh_interval_s``: a token with an unknown key id fetches the key set again, but not
    more often than this.
    """

    def __init__(
        self,
        *,
        jwks_ttl_s: float = 900.0,
        min_refresh_interval_s: float = 10.0,
        http_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks_ttl_s = jwks_ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.http_timeout_s = http_timeout_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._keys: dict[str, _CachedKeys] = {}
        self._discovery: dict[str, tuple[float, dict[str, Any]]] = {}
        self.fetches = 0

    async def _get_json(self, url: str) -> dict[str, Any]:
        check_transport(url)
        try:
            async with httpx.AsyncClient(timeout=self.http_timeout_s, follow_redirects=False) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            value = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("oidc: cannot read %s: %s", url, type(exc).__name__)
            raise TokenError("the identity provider cannot be reached to check the token", 401) from exc
        if not isinstance(value, dict):
            raise TokenError("the identity provider answered something that is not JSON", 401)
        return value

    async def discovery(self, config: OidcConfig) -> dict[str, Any]:
        """The provider's discovery document, checked to be its issuer's, kept ``jwks_ttl_s``: the
        key set's address here, the staff pages' sign-in endpoints (:mod:`.web_oidc`)."""
        issuer = config.issuer.rstrip("/")
        cached = self._discovery.get(issuer)
        if cached is not None and self.clock() - cached[0] < self.jwks_ttl_s:
            return cached[1]
        document = await self._get_json(f"{issuer}/.well-known/openid-configuration")
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            raise TokenError("the identity provider's discovery document does not fit its issuer", 401)
        self._discovery[issuer] = (self.clock(), document)
        return document

    async def jwks_url(self, config: OidcConfig) -> str:
        if config.jwks_url:
            return config.jwks_url
        jwks_uri = (await self.discovery(config)).get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise TokenError("the identity provider's discovery document names no key set", 401)
        return jwks_uri

    async def _key_set(self, url: str, *, refresh_for_kid: bool = False) -> KeySet:
        cached = self._keys.get(url)
        now = self.clock()
        if cached is not None:
            fresh = now - cached.fetched < self.jwks_ttl_s
            may_refresh = now - cached.fetched >= self.min_refresh_interval_s
            if fresh and not (refresh_for_kid and may_refresh):
                return cached.keys
            if refresh_for_kid and not may_refresh:
                return cached.keys
        entry = self._keys.setdefault(url, _CachedKeys(KeySet([]), float("-inf")))
        async with entry.lock:
            if entry.fetched > now:  # someone else fetched while we waited
                return entry.keys
            document = await self._get_json(url)
            try:
                entry.keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, KeyError, TypeError, ValueError) as exc:
                raise TokenError("the identity provider's key set cannot be read", 401) from exc
            entry.fetched = self.clock()
            self.fetches += 1
            log.info("oidc: fetched %d keys from %s", len(entry.keys.keys), url)
        return entry.keys

    async def decode_signed(self, token: str, config: OidcConfig) -> jwt.Token:
        """``token`` decoded once its signature checks out against the provider's key set: the
        cached one, fetched again (within ``min_refresh_interval_s``) for a key id it lacks. Raises
        joserfc's errors (``InvalidKeyIdError`` for a key the provider does not publish) and a
        :class:`TokenError` when the key set cannot be read. The bearer tokens (:meth:`verify`) and
        the staff pages' ID tokens (:mod:`.web_oidc`) share the cache."""
        url = await self.jwks_url(config)
        keys = await self._key_set(url)
        try:
            return jwt.decode(token, keys, algorithms=config.algorithms)
        except InvalidKeyIdError:
            keys = await self._key_set(url, refresh_for_kid=True)
            return jwt.decode(token, keys, algorithms=config.algorithms)

    async def verify(self, token: str, registry: TenantRegistry) -> Identity:
        """The identity a token proves, or a :class:`TokenError` that says why not."""
        header, unverified = peek(token)
        issuer = str(unverified.get("iss", "")).rstrip("/")
        tenant, config = self._tenant_for(registry, issuer, unverified)
        try:
            verified = await self.decode_signed(token, config)
        except InvalidKeyIdError as exc:
            raise TokenError(
                "the token was signed with a key the identity provider does not publish"
            ) from exc
        except JoseError as exc:
            log.info("oidc: token refused (%s, kid %s)", type(exc).__name__, header.get("kid"))
            raise TokenError("the token's signature is not valid") from exc
        claims = verified.claims
        registry_options: dict[str, Any] = {
            "iss": {"essential": True, "values": [config.issuer, config.issuer.rstrip("/")]},
            "aud": {"essential": True, "values": config.audiences},
            "exp": {"essential": True},
        }
        try:
            jwt.JWTClaimsRegistry(
                now=int(self.wall_clock()), leeway=config.leeway_s, **registry_options
            ).validate(claims)
        except ExpiredTokenError as exc:
            raise TokenError("the token has expired") from exc
        except JoseError as exc:
            raise TokenError(
                f"the token is not valid here: {getattr(exc, 'description', None) or exc}"
            ) from exc
        subject = claims.get(config.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise TokenError(f"the token has no '{config.subject_claim}' claim")
        from civicsignals.common.tenants import ALL_SCOPES

        scopes, departments = map_claims(config, claims, set(ALL_SCOPES))
        return Identity(
            tenant=tenant,
            subject=pseudonymous_subject(issuer, subject),
            scopes=frozenset(scopes),
            departments=frozenset(departments),
            issuer=issuer,
        )

    def _tenant_for(
        self, registry: TenantRegistry, issuer: str, claims: dict[str, Any]
    ) -> tuple[str, OidcConfig]:
        candidates = [
            (code, config) for code, config in registry.oidc_configs() if config.issuer.rstrip("/") == issuer
        ]
        if not candidates:
            raise TokenError("no tenant trusts the issuer of this token")
        matching: list[tuple[str, OidcConfig]] = []
        for code, config in candidates:
            if config.tenant_claim is None or _claim_values(claims, config.tenant_claim) == [
                config.tenant_value or code
            ]:
                matching.append((code, config))
        if len(matching) != 1:
            # Several tenants share the provider without a claim to tell them apart, or none matches.
            raise TokenError("the token does not say which municipality it is for", 401)
        return matching[0]
