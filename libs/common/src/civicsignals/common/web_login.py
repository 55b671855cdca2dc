"""Staff signing in to a service's own web pages with an API key (insights' dashboard, intake's
privacy desk).

A browser cannot send ``Authorization: Bearer`` when someone follows a link, so a login form takes
an API key, checks it as every service does, and the service sets an HttpOnly, SameSite=Strict
cookie holding ``tenant.key_id.expiry`` signed with HMAC-SHA256. The key itself is never stored in
the cookie. Each request re-reads the key record, so a revoked or expired key ends its logins at
once. Each service has its own cookie, scope and secret file (:class:`WebLogin`): a login to one
service's pages opens no other's.

Forms that change something also carry a token bound to the login (:meth:`WebLogin.form_token`,
an HMAC of the cookie's value): SameSite=Strict already keeps other sites' forms from sending the
cookie, and the token makes that hold in a browser that does not honour SameSite too.

People may also sign in through the tenant's OpenID Connect provider
(:mod:`civicsignals.common.web_oidc`); their login cookie holds ``~p.<claims>.expiry`` (tenant,
subject, scopes, departments and issuer, as the provider's token gave them when they signed in),
signed the same way. It lasts until it expires or the tenant stops letting people sign in with
that provider: a provider knows no revocation a service could look up on each request, so the
login's lifetime (``session_ttl_s``) bounds how long a person removed from a group keeps access.

Signing in is throttled per client address (:class:`SignInThrottle`, :meth:`WebLogin.sign_in`):
these forms check a key, so without a limit anyone who reaches them could guess keys as fast as
the service answers. Only failed sign-ins spend the client's allowance; once it is spent, every
attempt from that address is refused (429 with ``Retry-After``) before the key is looked at, the
right key included, until the allowance has refilled. The throttle lives in each process, like
:mod:`civicsignals.common.ratelimit`'s buckets it is made of: with N replicas a client may make up
to N times the failures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter
from pydantic import BaseModel, Field

from civicsignals.common.auth import Principal, authenticate, get_registry
from civicsignals.common.oidc import b64url, b64url_json
from civicsignals.common.problems import Problem
from civicsignals.common.ratelimit import TokenBucketLimiter, client_address

log = logging.getLogger(__name__)

SIGN_INS_THROTTLED = Counter(
    "civic_web_login_throttled_total",
    "Sign-in attempts refused because their client address had failed too often",
    ["path"],
)


def load_secret(configured: str, data_dir: Path, filename: str) -> bytes:
    """The cookie-signing key: the configured one, else a random one kept in ``data_dir/filename``
    (so a restart keeps the logins; several replicas need one configured value)."""
    if configured:
        return configured.encode()
    path = data_dir / filename
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret


def labelled_mac(secret: bytes, label: str, payload: str) -> str:
    """HMAC-SHA256 of ``payload`` under ``label`` (``form``, ``person``, ``flow``, ``pkce``): what
    is signed for one purpose never passes for another's."""
    return b64url(hmac.new(secret, f"{label}:{payload}".encode(), hashlib.sha256).digest())


#: The first part of a person's login cookie (no tenant code starts with ``~``).
PERSON_MARK = "~p"


def sign_person(
    secret: bytes, principal: Principal, issuer: str, ttl_s: int, now: float | None = None
) -> str:
    """A login cookie's value for a person signed in through ``issuer``: what their token said
    (tenant, pseudonymous subject, scopes, departments), valid for ``ttl_s`` seconds."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    claims = {
        "t": principal.tenant,
        "s": principal.subject,
        "sc": sorted(principal.scopes),
        "d": sorted(principal.departments),
        "i": issuer,
    }
    payload = f"{PERSON_MARK}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}.{expires}"
    # Under its own label: no key cookie's signature fits a person's, nor the other way round.
    return f"{payload}.{labelled_mac(secret, 'person', payload)}"


def verify_person(secret: bytes, token: str, now: float | None = None) -> dict[str, Any] | None:
    """The claims of a valid, unexpired person's login cookie; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PERSON_MARK:
        return None
    mark, claims, expires, mac = parts
    if not hmac.compare_digest(mac, labelled_mac(secret, "person", f"{mark}.{claims}.{expires}")):
        return None
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    try:
        return b64url_json(claims)
    except ValueError:
        return None


def sign(secret: bytes, tenant: str, key_id: str, ttl_s: int, now: float | None = None) -> str:
    """A login cookie's value for the key ``key_id`` of ``tenant``, valid for ``ttl_s`` seconds."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = f"{tenant}.{key_id}.{expires}"
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{b64url(mac)}"


def verify(secret: bytes, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(tenant, key id) of a valid, unexpired token; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4:
        return None
    tenant, key_id, expires, mac = parts
    expected = b64url(hmac.new(secret, f"{tenant}.{key_id}.{expires}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, expected):
        return None
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    return tenant, key_id


def principal_from_token(request: Request, secret: bytes, token: str | None) -> Principal | None:
    """Whom a login cookie's value stands for, with the key record read again (a revoked or
    expired key, or one moved to another tenant, ends the login); None when it stands for no one."""
    if not token:
        return None
    if token.startswith(f"{PERSON_MARK}."):
        return _person_from_token(request, secret, token)
    verified = verify(secret, token)
    if verified is None:
        return None
    tenant, key_id = verified
    record = get_registry(request).find_key(key_id)
    if record is None or record.revoked or record.tenant != tenant:
        return None
    if record.expires is not None and record.expires.timestamp() <= time.time():
        return None
    return Principal(
        tenant=record.tenant,
        key_id=record.key_id,
        scopes=record.scopes,
        departments=record.departments,
        subject=record.key_id,
    )


def _person_from_token(request: Request, secret: bytes, token: str) -> Principal | None:
    """A person's login, while their tenant still lets people sign in with the provider that
    signed them in (removing ``web_client_id`` or changing the issuer ends every such login)."""
    claims = verify_person(secret, token)
    if claims is None:
        return None
    tenant = get_registry(request).get(str(claims.get("t", "")))
    config = tenant.oidc if tenant is not None else None
    if config is None or not config.web_client_id or config.issuer.rstrip("/") != claims.get("i"):
        return None
    return Principal(
        tenant=str(claims["t"]),
        key_id="",
        scopes=frozenset(claims.get("sc") or ()),
        departments=frozenset(claims.get("d") or ()),
        subject_kind="person",
        subject=str(claims.get("s", "")),
    )


def form_token(secret: bytes, cookie_value: str) -> str:
    """The anti-forgery token of the forms of one login: it changes with every login and cannot be
    made without the service's secret."""
    return labelled_mac(secret, "form", cookie_value)


def form_token_matches(secret: bytes, cookie_value: str | None, offered: str | None) -> bool:
    """Whether a posted form's token belongs to the login that posts it."""
    if not cookie_value or not offered:
        return False
    return hmac.compare_digest(form_token(secret, cookie_value), offered)


class SignInThrottle:
    """Failed sign-ins per client address: a token bucket of ``burst`` failures per address that
    refills at ``per_minute`` failures a minute (:class:`TokenBucketLimiter`, whose injectable
    clock lets the arithmetic be tested without a server).

    An attempt takes a failure from the allowance *before* the key is checked, and a successful
    sign-in gives it back (:meth:`succeeded`): a success costs nothing, and attempts made at the
    same moment cannot together spend more than the allowance holds, as they could if each only
    looked first and paid after a failure. An attempt refused for want of allowance spends nothing,
    so waiting ``Retry-After`` seconds is always enough.
    """

    def __init__(
        self,
        burst: int,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.burst = burst
        self.per_minute = per_minute
        self._failures = TokenBucketLimiter(per_minute / 60.0, burst, max_keys=max_clients, clock=clock)
        self._max_clients = max_clients
        self._refusing: OrderedDict[str, None] = OrderedDict()

    def admit(self, client: str) -> int:
        """0 when ``client`` may try a key now (the attempt counts as failed until :meth:`succeeded`
        says otherwise); else the whole seconds, at least 1, until it may try again."""
        wait = self._failures.acquire(client)
        if wait <= 0:
            self._refusing.pop(client, None)
            return 0
        return max(1, math.ceil(wait))

    def first_refusal(self, client: str) -> bool:
        """Whether this refusal of ``client`` is the first since it was last let through: a guesser
        hammering the form is refused many times a second, and the log needs to hear of it once
        (the metric counts every refusal)."""
        if client in self._refusing:
            self._refusing.move_to_end(client)
            return False
        self._refusing[client] = None
        if len(self._refusing) > self._max_clients:
            self._refusing.popitem(last=False)
        return True

    def succeeded(self, client: str) -> None:
        """The attempt :meth:`admit` let through signed in: it does not count as a failure."""
        self._failures.give_back(client)


class SignInThrottleSettings(BaseModel):
    """The throttle's two settings, for a service's settings class to inherit beside
    ``ServiceSettings`` (so each service reads them under its own prefix, e.g.
    ``CIVIC_INTAKE_LOGIN_FAILURES_BURST``)."""

    login_failures_burst: int = Field(
        default=10,
        ge=1,
        description="failed sign-ins on the service's staff login a client address may make in a row "
        "before it must wait (429 with Retry-After); counted per replica",
    )
    login_failures_per_minute: float = Field(
        default=5.0, gt=0, description="how fast a client address's allowance of failed sign-ins refills"
    )


@dataclass(frozen=True)
class SignInThrottled:
    """Refused before the key was looked at: the client's failures are used up."""

    retry_after_s: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class SignInRefused:
    """The key is not valid, revoked or expired: :func:`authenticate`'s 401 problem, whose detail
    says which."""

    problem: Problem


@dataclass(frozen=True)
class SignInLacksScope:
    """A valid key without the scope the pages need (a failed sign-in all the same)."""

    principal: Principal


@dataclass(frozen=True)
class SignedIn:
    principal: Principal


SignInOutcome = SignInThrottled | SignInRefused | SignInLacksScope | SignedIn


@dataclass(frozen=True)
class WebLogin:
    """One service's staff login: its cookie's name and path, the scope its pages need, and the
    file in the data directory that keeps its signing key when none is configured."""

    cookie: str
    scope: str
    signing_key_file: str
    path: str = "/"

    def load_secret(self, configured: str, data_dir: Path) -> bytes:
        return load_secret(configured, data_dir, self.signing_key_file)

    def cookie_value(self, request: Request) -> str | None:
        return request.cookies.get(self.cookie)

    def principal(self, request: Request, secret: bytes) -> Principal | None:
        """Whom the request's login cookie stands for (any scope), or None."""
        return principal_from_token(request, secret, self.cookie_value(request))

    def start_session(
        self,
        response: Response,
        secret: bytes,
        principal: Principal,
        *,
        ttl_s: int,
        secure: bool,
        issuer: str | None = None,
    ) -> None:
        """Set the login cookie for ``principal`` on ``response``: signed, HttpOnly, SameSite=Strict,
        for this login's path only, ``Secure`` when served over HTTPS. A person (signed in through
        the provider ``issuer``) gets a cookie holding what their token said; a key, its id."""
        if principal.subject_kind == "person":
            if not issuer:
                raise ValueError("a person's login needs the issuer that signed them in")
            value = sign_person(secret, principal, issuer.rstrip("/"), ttl_s)
        else:
            value = sign(secret, principal.tenant, principal.key_id, ttl_s)
        response.set_cookie(
            self.cookie,
            value,
            max_age=ttl_s,
            httponly=True,
            secure=secure,
            samesite="strict",
            path=self.path,
        )

    def end_session(self, response: Response) -> None:
        response.delete_cookie(self.cookie, path=self.path)

    def form_token(self, request: Request, secret: bytes) -> str:
        """The token the forms of this request's login carry ("" without a login)."""
        value = self.cookie_value(request)
        return form_token(secret, value) if value else ""

    def form_token_matches(self, request: Request, secret: bytes, offered: str | None) -> bool:
        return form_token_matches(secret, self.cookie_value(request), offered)

    @property
    def _throttle_attribute(self) -> str:
        return f"{self.cookie}_sign_in_throttle"

    def throttle(self, app: Any, limits: SignInThrottleSettings) -> SignInThrottle:
        """This login's throttle in ``app``, made from ``limits`` on first use. One per app, not one
        per process: each app (each test's) starts with every client's allowance full."""
        throttle: SignInThrottle | None = getattr(app.state, self._throttle_attribute, None)
        if throttle is None:
            throttle = SignInThrottle(limits.login_failures_burst, limits.login_failures_per_minute)
            self.use_throttle(app, throttle)
        return throttle

    def use_throttle(self, app: Any, throttle: SignInThrottle) -> None:
        """Give ``app`` this throttle instead of one made from its settings (a test's, with a clock
        it moves)."""
        setattr(app.state, self._throttle_attribute, throttle)

    async def sign_in(self, request: Request, api_key: str, limits: SignInThrottleSettings) -> SignInOutcome:
        """Check an API key typed into this login's form, throttled per client address.

        A client whose failures are used up is refused before the key is looked at, so that
        guessing stops, and so that even the right key cannot tell a guesser it was right. The
        caller answers :class:`SignInThrottled` with 429 and its ``headers``, and the others as it
        always did; a :class:`SignedIn` is the only outcome that costs the client nothing.
        """
        throttle = self.throttle(request.app, limits)
        client = client_address(request)
        retry_after_s = throttle.admit(client)
        if retry_after_s:
            SIGN_INS_THROTTLED.labels(request.url.path).inc()
            if throttle.first_refusal(client):
                # The path and the wait only: never the key, and not the address (personal data).
                log.warning(
                    "web login: too many failed sign-ins from one address on %s; refused without "
                    "checking the key, retry after %d s (further refusals of that address are "
                    "counted in civic_web_login_throttled_total, not logged)",
                    request.url.path,
                    retry_after_s,
                )
            return SignInThrottled(retry_after_s)
        try:
            # Reading the key files may touch the disk: off the event loop, as the API's check does.
            principal = await run_in_threadpool(authenticate, get_registry(request), f"Bearer {api_key}")
        except Problem as refused:
            return SignInRefused(refused)
        if not principal.allows(self.scope):
            return SignInLacksScope(principal)
        throttle.succeeded(client)
        return SignedIn(principal)
