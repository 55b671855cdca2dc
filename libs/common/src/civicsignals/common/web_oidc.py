"""Staff signing in to a service's own pages through their municipality's OpenID Connect provider.

DESIGN §3: people sign in with the municipality's provider, not with API keys. The pages' login
(:class:`~civicsignals.common.web_login.WebLogin`: insights' dashboard, intake's privacy desk) offers
it for every tenant whose ``oidc`` block names a ``web_client_id``, as the OAuth 2.0 authorization
code flow with PKCE (RFC 7636, ``S256``) for a public client:

1. :meth:`WebOidc.start` sends the browser to the provider's ``authorization_endpoint`` (from its
   discovery document) with a random ``state`` and the PKCE challenge, and sets a short-lived flow
   cookie that holds the tenant, the state and where to go afterwards, signed with the login's key.
   The verifier is never sent to the browser: it is an HMAC of the state under that key, so only
   this service can redeem the code, even for someone who reads the cookie.
2. The provider signs the person in and redirects to the callback with ``code`` and ``state``;
   :meth:`WebOidc.finish` checks the state against the flow cookie (the flow was started by this
   browser), and ``iss`` when the provider sends it (RFC 9207: no answer of another provider is
   taken for this one), then redeems the code at the ``token_endpoint`` with the verifier.
3. The access token is verified exactly as every API call's bearer token is
   (:class:`~civicsignals.common.oidc.OidcVerifier`: signature against the provider's key set,
   issuer, audience, expiry; the tenant's group mapping to scopes and departments), and must be for
   the tenant the flow was started for. Who signs in is what the access token says, the same as on
   the API. The ID token is validated as OpenID Connect Core 1.0 §3.1.3.7 asks (signature against
   the same key set, ``iss``, ``aud`` holding the client id, ``azp`` when given, ``exp``, ``iat``,
   and the ``nonce`` of this flow, an HMAC of its state like the verifier), because one claim of
   it is trusted: ``auth_time``, when the person last really signed in at the provider (without
   it, the time of this sign-in), which a page may keep (:meth:`WebOidc.keep_auth_time`) to know
   how fresh the sign-in behind a login is. The token itself is kept in a cookie of its own only to
   hand back to the provider at sign-out.
4. Signing out (OpenID Connect RP-Initiated Logout 1.0) ends the person's session at the provider
   too, when its discovery document names an ``end_session_endpoint``
   (:meth:`WebOidc.end_session_url`): the browser goes there with the ID token as
   ``id_token_hint``, the client id and the login page as ``post_logout_redirect_uri`` (which the
   municipality registers at its provider), and comes back to the login page. Without it a
   colleague at a shared counter desk who clicks "sign in with the municipality" next would be
   signed in as the person before, whom the provider still knew. A provider without the endpoint,
   or one that cannot be reached, leaves the sign-out local, as before, and the log says so.

5. A fresh sign-in (step-up) before something that must be done by the person at the keyboard
   now, not by whoever finds a login left open (the privacy desk's erasure): a sign-in started
   with a :class:`StepUp` (:meth:`WebOidc.authorization`, for a page that moves on to the
   provider by itself) asks the provider for a sign-in no older than ``max_age`` seconds
   (OpenID Connect Core 1.0 §3.1.2.1; ``prompt=login`` too when that is 0), and the flow cookie
   carries, signed, the age asked, the person who must sign in again and where the page is to
   come back to (its ``resume``, opaque here). :meth:`WebOidc.finish` then requires of the answer
   what the specification requires of the provider (§2: ``auth_time`` is REQUIRED when
   ``max_age`` was asked) and checks what it says the client SHOULD check (§3.1.3.7, item 13):
   ``auth_time`` no older than ``max_age`` (with the tenant's ``leeway_s`` for clocks), and the
   same person as before. ``prompt=login`` alone proves nothing: it travels through the browser,
   which may drop it; ``auth_time`` is signed by the provider.

The flow cookie is ``SameSite=Lax``: the provider's redirect back is a cross-site navigation, which
a ``Strict`` cookie would not accompany. The login cookie that follows stays ``Strict``
(:meth:`~civicsignals.common.web_login.WebLogin.start_session`), so the callback must not answer
with a redirect to the page: that redirect still belongs to the cross-site navigation the
provider's page started, and the browser leaves the new ``Strict`` cookie off it (seen in
Chromium: the person lands on the login form, signed in). The pages answer the callback with a
short page that moves on by itself (``Refresh: 0``, and a link), a navigation of their own site.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError

from civicsignals.common.auth import Principal, get_registry, person_principal
from civicsignals.common.oidc import OidcConfig, TokenError, b64url, b64url_json, check_transport, peek
from civicsignals.common.web_login import SignedIn, SignInLacksScope, WebLogin, labelled_mac

log = logging.getLogger(__name__)

#: How long a started sign-in may take at the provider before the callback is refused.
FLOW_TTL_S = 600


#: Why a sign-in through the provider failed, as the login pages say it to staff (by
#: :attr:`SignInFailed.reason`); the English ``detail`` beside it is for logs and tests.
FAILURE_WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "not_offered": "deze gemeente biedt hier geen inloggen via haar eigen inlogdienst",
        "unreachable": "de inlogdienst van de gemeente is niet bereikbaar; probeer het later opnieuw",
        "flow": "het inloggen duurde te lang of is niet in deze browser begonnen; begin opnieuw",
        "other_provider": "het antwoord kwam van een andere inlogdienst dan de gevraagde",
        "refused": "de inlogdienst heeft u niet ingelogd",
        "not_confirmed": "de inlogdienst heeft het inloggen niet bevestigd; begin opnieuw",
        "token": "het bewijs van de inlogdienst is hier niet geldig",
        "other_tenant": "de inlogdienst heeft u voor een andere gemeente ingelogd",
        "other_person": "bij de inlogdienst heeft iemand anders ingelogd dan wie hier was ingelogd",
        "no_auth_time": "de inlogdienst zegt niet wanneer u voor het laatst inlogde",
        "not_recent": "de inlogdienst heeft u niet opnieuw laten inloggen",
    },
    "en": {
        "not_offered": "this municipality does not offer signing in with its own sign-in service here",
        "unreachable": "the municipality's sign-in service cannot be reached; try again later",
        "flow": "the sign-in took too long or was not started in this browser; start again",
        "other_provider": "the answer came from another sign-in service than the one asked",
        "refused": "the sign-in service did not sign you in",
        "not_confirmed": "the sign-in service did not confirm the sign-in; start again",
        "token": "the sign-in service's proof is not valid here",
        "other_tenant": "the sign-in service signed you in for another municipality",
        "other_person": "someone other than the person signed in here signed in at the sign-in service",
        "no_auth_time": "the sign-in service does not say when you last signed in",
        "not_recent": "the sign-in service did not have you sign in again",
    },
}


@dataclass(frozen=True)
class SignInFailed:
    """The sign-in through the provider did not succeed: ``reason`` (a key of
    :data:`FAILURE_WORDS`) is what the login page says, in its language (:meth:`says`);
    ``detail`` is the English particulars for the log."""

    detail: str
    reason: str = "refused"
    #: The provider's own error code (``access_denied``, ``login_required`` ...), for support.
    provider_error: str = ""

    def says(self, language: str) -> str:
        words = FAILURE_WORDS.get(language, FAILURE_WORDS["en"])
        said = words.get(self.reason, words["refused"])
        return f"{said} ({self.provider_error})" if self.provider_error else said


class _ProviderError(TokenError):
    """The provider could not be asked (``unreachable``) or did not confirm (``not_confirmed``)."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class StepUp:
    """A fresh sign-in asked of a person who is signed in already, before something that must be
    done by the person at the keyboard now (the privacy desk's erasure): the provider is asked for
    a sign-in no older than ``max_age_s`` seconds (0: sign in again whatever the age), by the
    person whose (pseudonymous) ``subject`` the login names. ``resume`` is the page's own note of
    where to come back to, carried signed in the flow cookie and handed back by
    :meth:`WebOidc.finish`; nothing here reads it, so a page that puts personal data in it
    encrypts it first."""

    max_age_s: int
    subject: str
    resume: str = ""


@dataclass(frozen=True)
class OidcSignedIn(SignedIn):
    """A person signed in; ``issuer`` is the provider, which their login cookie names, and
    ``id_token`` the provider's ID token ("" when it gave none), for :meth:`WebOidc.keep_id_token`.
    ``authenticated_at`` is when they last really signed in at the provider (the ID token's
    ``auth_time``, else the time of this sign-in), for :meth:`WebOidc.keep_auth_time`;
    ``step_up`` the fresh sign-in this was, when it was one (its checks passed)."""

    issuer: str = ""
    next_url: str = ""
    id_token: str = ""
    authenticated_at: int = 0
    step_up: StepUp | None = None


@dataclass(frozen=True)
class StartedFlow:
    """A sign-in started: ``url`` is the provider's authorization endpoint with the request, where
    the browser must go; ``flow`` the flow cookie's value (:meth:`WebOidc.set_flow_cookie`)."""

    url: str
    flow: str


#: What a ``Refresh`` header's URL keeps unquoted: what Starlette keeps in a redirect's Location.
_URL_SAFE = ":/%#?=@[]!$&'()*+,;"


def refresh_to(url: str) -> str:
    """The ``Refresh`` header of a page that moves on to ``url`` by itself (``0; url=…``), quoted
    as Starlette quotes a redirect's Location, so that nothing in it can end the header.

    The pages answer the provider's callback, and a sign-out that goes on to the provider, with
    such a page rather than a redirect: the login cookie is ``SameSite=Strict`` (a redirect of a
    navigation the provider started would arrive without it), and the pages' CSP
    (``form-action 'self'``) stops a form post that redirects to another site."""
    return f"0; url={quote(url, safe=_URL_SAFE)}"


#: An ID token longer than this is not kept (a cookie holds about 4 KB); sign-out then sends none.
MAX_KEPT_ID_TOKEN = 3_000


OidcOutcome = OidcSignedIn | SignInLacksScope | SignInFailed


class WebOidc:
    """The OpenID Connect sign-in of one :class:`WebLogin`; ``callback_path`` is where the provider
    sends the browser back (registered at the provider as the client's redirect URI)."""

    def __init__(self, login: WebLogin, callback_path: str, *, http_timeout_s: float = 10.0) -> None:
        self.login = login
        self.callback_path = callback_path
        self.http_timeout_s = http_timeout_s

    @property
    def flow_cookie(self) -> str:
        return f"{self.login.cookie}_oidc"

    @property
    def id_token_cookie(self) -> str:
        return f"{self.login.cookie}_idt"

    @property
    def auth_time_cookie(self) -> str:
        return f"{self.login.cookie}_at"

    @staticmethod
    def tenants(request: Request) -> list[tuple[str, str]]:
        """(code, name) of every tenant whose staff may sign in through their provider here."""
        registry = get_registry(request)
        offered = []
        for code, config in registry.oidc_configs():
            tenant = registry.get(code)
            if config.web_client_id and tenant is not None:
                offered.append((code, tenant.name))
        return offered

    def callback_url(self, request: Request) -> str:
        """The redirect URI: this service's callback, as the browser reaches this service."""
        return str(request.base_url).rstrip("/") + self.callback_path

    async def start(
        self,
        request: Request,
        secret: bytes,
        tenant: str,
        next_url: str,
        *,
        secure: bool,
        step_up: StepUp | None = None,
    ) -> Response | SignInFailed:
        """The redirect to the tenant's provider, with the flow cookie set; or why not."""
        started = await self.authorization(request, secret, tenant, next_url, step_up=step_up)
        if isinstance(started, SignInFailed):
            return started
        response = RedirectResponse(started.url, status_code=303)
        self.set_flow_cookie(response, started, secure=secure)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def authorization(
        self, request: Request, secret: bytes, tenant: str, next_url: str, *, step_up: StepUp | None = None
    ) -> StartedFlow | SignInFailed:
        """The authorization request to the tenant's provider and the flow cookie that goes with
        it, for a page that sends the browser there itself (a form post cannot answer with a
        redirect to another site under the pages' CSP, ``form-action 'self'``); or why not.

        With ``step_up`` the request asks for a sign-in no older than its ``max_age_s``
        (``max_age``; ``prompt=login`` as well when that is 0, since some providers read
        ``max_age=0`` as "no limit"), and the flow remembers it for :meth:`finish`."""
        config = _web_config(request, tenant)
        if config is None:
            return SignInFailed(
                f"municipality {tenant!r} does not let staff sign in with its provider here", "not_offered"
            )
        try:
            endpoints = await _endpoints(request, config)
        except TokenError as error:
            return SignInFailed(error.detail, getattr(error, "reason", "unreachable"))
        state = secrets.token_urlsafe(24)
        flow: dict[str, Any] = {"t": tenant, "s": state, "n": next_url, "e": int(time.time()) + FLOW_TTL_S}
        params = {
            "response_type": "code",
            "client_id": config.web_client_id,
            "redirect_uri": self.callback_url(request),
            "scope": "openid",
            "state": state,
            "nonce": _nonce(secret, state),
            "code_challenge": b64url(hashlib.sha256(_verifier(secret, state).encode()).digest()),
            "code_challenge_method": "S256",
        }
        if step_up is not None:
            max_age_s = max(0, int(step_up.max_age_s))
            params["max_age"] = str(max_age_s)
            if max_age_s == 0:
                params["prompt"] = "login"
            flow["u"] = {"m": max_age_s, "p": step_up.subject, "r": step_up.resume}
        separator = "&" if "?" in endpoints["authorization_endpoint"] else "?"
        return StartedFlow(
            f"{endpoints['authorization_endpoint']}{separator}{urlencode(params)}", _sealed(secret, flow)
        )

    def set_flow_cookie(self, response: Response, started: StartedFlow, *, secure: bool) -> None:
        """The flow cookie of a started sign-in: HttpOnly, ``SameSite=Lax`` (the provider's redirect
        back is a cross-site navigation), this login's path, :data:`FLOW_TTL_S` long."""
        response.set_cookie(
            self.flow_cookie,
            started.flow,
            max_age=FLOW_TTL_S,
            httponly=True,
            secure=secure,
            samesite="lax",
            path=self.login.path,
        )

    async def finish(self, request: Request, secret: bytes) -> OidcOutcome:
        """Check the provider's answer and redeem its code: who signed in, or why not."""
        flow = _opened(secret, request.cookies.get(self.flow_cookie) or "")
        query = request.query_params
        if flow is None or flow.get("e", 0) < time.time():
            return SignInFailed(
                "the sign-in took too long or was not started in this browser; start again", "flow"
            )
        if not hmac.compare_digest(str(flow.get("s", "")), query.get("state", "")):
            return SignInFailed(
                "the answer does not belong to the sign-in started in this browser; start again", "flow"
            )
        tenant = str(flow.get("t", ""))
        config = _web_config(request, tenant)
        if config is None:
            return SignInFailed(
                f"municipality {tenant!r} no longer lets staff sign in with its provider", "not_offered"
            )
        issuer = config.issuer.rstrip("/")
        if "iss" in query and query["iss"].rstrip("/") != issuer:
            return SignInFailed(
                "the answer came from another identity provider than the one asked", "other_provider"
            )
        if "error" in query:
            # The provider's error code only: its description is free text from outside.
            provider_error = query["error"][:64]
            return SignInFailed(
                f"the identity provider did not sign you in ({provider_error})", "refused", provider_error
            )
        code = query.get("code", "")
        if not code:
            return SignInFailed("the identity provider's answer has no code", "not_confirmed")
        try:
            endpoints = await _endpoints(request, config)
            access_token, id_token = await self._redeem(
                endpoints["token_endpoint"], config, code, request, secret, flow
            )
        except TokenError as error:
            return SignInFailed(error.detail, getattr(error, "reason", "unreachable"))
        try:
            identity = await get_registry(request).oidc.verify(access_token, get_registry(request))
            nonce = _nonce(secret, str(flow.get("s", "")))
            id_claims = await self._id_token_claims(request, config, id_token, nonce) if id_token else {}
        except TokenError as error:
            return SignInFailed(error.detail, getattr(error, "reason", "token"))
        if identity.tenant != tenant:
            return SignInFailed(
                "the identity provider signed you in for another municipality", "other_tenant"
            )
        principal = person_principal(identity)
        if not principal.allows(self.login.scope):
            return SignInLacksScope(principal)
        now = int(time.time())
        auth_time = _auth_time(id_claims)
        step_up = _step_up_of(flow)
        if step_up is not None:
            refused = _step_up_refused(step_up, principal, auth_time, now, config.leeway_s)
            if refused is not None:
                return refused
        return OidcSignedIn(
            principal,
            issuer=identity.issuer,
            next_url=str(flow.get("n", "")),
            id_token=id_token,
            # A provider that sends no auth_time signed the person in no later than now.
            authenticated_at=min(auth_time, now) if auth_time is not None else now,
            step_up=step_up,
        )

    def flow_step_up(self, request: Request, secret: bytes) -> StepUp | None:
        """The fresh sign-in the request's flow was started for (its ``resume`` included), also
        when the sign-in failed, so that the page can say what did not happen; None for an
        ordinary sign-in or a request without a flow of this service."""
        flow = _opened(secret, request.cookies.get(self.flow_cookie) or "")
        return _step_up_of(flow) if flow else None

    def flow_next(self, request: Request, secret: bytes) -> str:
        """Where the sign-in being finished was to lead (its ``next_url``), also when it failed,
        so that the login page shown again keeps the page asked for and its language; "" when
        the request carries no flow of this service."""
        flow = _opened(secret, request.cookies.get(self.flow_cookie) or "")
        return str(flow.get("n", "")) if flow else ""

    def end_flow(self, response: Response) -> None:
        response.delete_cookie(self.flow_cookie, path=self.login.path)

    def keep_id_token(self, response: Response, signed_in: OidcSignedIn, *, ttl_s: int, secure: bool) -> None:
        """Keep the provider's ID token beside the login cookie (HttpOnly, SameSite=Strict, this
        login's path, as long as the login), to hand back at sign-out as ``id_token_hint``: the
        provider then knows which session of which client to end, and may send the browser back.
        Nothing is kept when the provider gave none, or one too long for a cookie."""
        token = signed_in.id_token
        if not token or len(token) > MAX_KEPT_ID_TOKEN:
            return
        response.set_cookie(
            self.id_token_cookie,
            token,
            max_age=ttl_s,
            httponly=True,
            secure=secure,
            samesite="strict",
            path=self.login.path,
        )

    def forget_id_token(self, response: Response) -> None:
        response.delete_cookie(self.id_token_cookie, path=self.login.path)

    def keep_auth_time(
        self, response: Response, secret: bytes, signed_in: OidcSignedIn, *, ttl_s: int, secure: bool
    ) -> None:
        """Keep when the person behind a new login last really signed in at the provider
        (:attr:`OidcSignedIn.authenticated_at`) beside the login cookie, signed, for the person
        and tenant it is about (HttpOnly, SameSite=Strict, this login's path, as long as the
        login): what needs a recent sign-in asks :meth:`authenticated_at`. A cookie of its own,
        so that the login cookie (:mod:`~civicsignals.common.web_login`) stays as it is."""
        principal = signed_in.principal
        value = {"t": principal.tenant, "s": principal.subject, "a": int(signed_in.authenticated_at)}
        response.set_cookie(
            self.auth_time_cookie,
            _sealed(secret, value, label="auth_time"),
            max_age=ttl_s,
            httponly=True,
            secure=secure,
            samesite="strict",
            path=self.login.path,
        )

    def authenticated_at(self, request: Request, secret: bytes, principal: Principal) -> int | None:
        """When ``principal`` (a person signed in here) last really signed in at their provider,
        as kept at sign-in (:meth:`keep_auth_time`); None when nothing valid is kept for exactly
        that person and tenant (a key's login, a login from before this was kept, a cookie of
        someone else's or one not signed with this service's key): the caller takes that as "not
        recently"."""
        if principal.subject_kind != "person":
            return None
        kept = _opened(secret, request.cookies.get(self.auth_time_cookie) or "", label="auth_time")
        if kept is None or kept.get("t") != principal.tenant or kept.get("s") != principal.subject:
            return None
        at = kept.get("a")
        return at if isinstance(at, int) and not isinstance(at, bool) else None

    def forget_auth_time(self, response: Response) -> None:
        response.delete_cookie(self.auth_time_cookie, path=self.login.path)

    async def end_session_url(
        self, request: Request, principal: Principal | None, return_to: str, *, language: str
    ) -> str | None:
        """Where to send the browser to end a signed-in person's session at their provider too
        (RP-Initiated Logout): the provider's ``end_session_endpoint`` with ``id_token_hint`` (when
        kept), ``client_id``, ``post_logout_redirect_uri`` (``return_to``, an absolute URL the
        municipality registered at its provider) and ``ui_locales``. None for a key's login, a
        tenant that no longer signs staff in through its provider, a provider without the endpoint,
        or one that cannot be reached now: then the sign-out stays local, as it was."""
        if principal is None or principal.subject_kind != "person":
            return None
        config = _web_config(request, principal.tenant)
        if config is None:
            return None
        try:
            document = await get_registry(request).oidc.discovery(config)
        except TokenError as error:
            log.warning(
                "web sign-out: the identity provider of %s cannot be reached (%s); signed out here only",
                principal.tenant,
                error.detail,
            )
            return None
        endpoint = document.get("end_session_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            log.info(
                "web sign-out: the identity provider of %s offers no end_session_endpoint; signed out "
                "here only",
                principal.tenant,
            )
            return None
        try:
            check_transport(endpoint)
        except TokenError as error:
            log.warning("web sign-out: %s; signed out here only", error.detail)
            return None
        params = {"client_id": str(config.web_client_id), "post_logout_redirect_uri": return_to}
        hint = request.cookies.get(self.id_token_cookie) or ""
        if hint and len(hint) <= MAX_KEPT_ID_TOKEN:
            params = {"id_token_hint": hint, **params}
        params["ui_locales"] = language
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode(params)}"

    async def _redeem(
        self,
        token_endpoint: str,
        config: OidcConfig,
        code: str,
        request: Request,
        secret: bytes,
        flow: dict[str, Any],
    ) -> tuple[str, str]:
        """The access token the code stands for (the provider checks the PKCE verifier), and the
        ID token beside it ("" when the provider gave none)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.callback_url(request),
            "client_id": str(config.web_client_id),
            "code_verifier": _verifier(secret, str(flow.get("s", ""))),
        }
        answer = await self._request("POST", token_endpoint, data=form)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise _ProviderError("the identity provider's answer holds no access token", "not_confirmed")
        id_token = answer.get("id_token")
        return token, id_token if isinstance(id_token, str) else ""

    async def _id_token_claims(
        self, request: Request, config: OidcConfig, id_token: str, nonce: str
    ) -> dict[str, Any]:
        """The claims of the provider's ID token, validated as OpenID Connect Core 1.0 §3.1.3.7
        asks: signed with a key of the provider's key set (the service's cached one, which the
        bearer tokens use too; fetched again for a key id it lacks, so a key the provider just
        rotated in is known), not an access token (``typ``), ``iss`` the tenant's issuer, ``aud``
        holding the client id (and ``azp``, when given, being it), ``exp`` and ``iat`` present and
        ``exp`` not past, and ``nonce`` the one this flow sent. Its ``auth_time`` is then trusted;
        a :class:`TokenError` (reason ``token``) otherwise."""
        client_id = str(config.web_client_id)
        header, _ = peek(id_token)
        if str(header.get("typ", "")).lower() in ("at+jwt", "application/at+jwt"):
            raise _ProviderError("the identity provider gave an access token as the ID token", "token")
        try:
            claims = (await get_registry(request).oidc.decode_signed(id_token, config)).claims
            jwt.JWTClaimsRegistry(
                now=int(time.time()),
                leeway=config.leeway_s,
                iss={"essential": True, "values": [config.issuer, config.issuer.rstrip("/")]},
                aud={"essential": True, "values": [client_id]},
                exp={"essential": True},
                iat={"essential": True},
            ).validate(claims)
        except ExpiredTokenError as exc:
            raise _ProviderError("the identity provider's ID token has expired", "token") from exc
        except JoseError as exc:
            detail = getattr(exc, "description", None) or type(exc).__name__
            raise _ProviderError(
                f"the identity provider's ID token is not valid here: {detail}", "token"
            ) from exc
        if "azp" in claims and claims["azp"] != client_id:
            raise _ProviderError("the identity provider's ID token is for another client (azp)", "token")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise _ProviderError("the identity provider's ID token is not for this sign-in (nonce)", "token")
        return claims

    async def _request(self, method: str, url: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        check_transport(url)
        try:
            async with httpx.AsyncClient(timeout=self.http_timeout_s, follow_redirects=False) as client:
                response = await client.request(
                    method, url, data=data, headers={"Accept": "application/json"}
                )
            value = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("web sign-in: cannot reach the identity provider at %s: %s", url, type(exc).__name__)
            raise _ProviderError(
                "the identity provider cannot be reached; try again later", "unreachable"
            ) from exc
        if response.status_code != 200 or not isinstance(value, dict):
            error = value.get("error") if isinstance(value, dict) else None
            log.info("web sign-in: %s %s answered %s (%s)", method, url, response.status_code, error)
            raise _ProviderError(
                "the identity provider did not confirm the sign-in; start again", "not_confirmed"
            )
        return value


async def _endpoints(request: Request, config: OidcConfig) -> dict[str, str]:
    """The provider's authorization and token endpoints, from its discovery document (read and
    kept by the service's token verifier, which reads its key set's address there too)."""
    document = await get_registry(request).oidc.discovery(config)
    endpoints = {name: document.get(name) for name in ("authorization_endpoint", "token_endpoint")}
    for endpoint in endpoints.values():
        if not isinstance(endpoint, str):
            raise _ProviderError(
                "the identity provider's discovery document names no sign-in endpoints", "unreachable"
            )
        check_transport(endpoint)
    return {name: str(value) for name, value in endpoints.items()}


def _web_config(request: Request, tenant: str) -> OidcConfig | None:
    found = get_registry(request).get(tenant)
    config = found.oidc if found is not None else None
    return config if config is not None and config.web_client_id else None


def _verifier(secret: bytes, state: str) -> str:
    """The PKCE verifier of one flow: 43 characters only the service can make from its state."""
    return labelled_mac(secret, "pkce", state)


def _nonce(secret: bytes, state: str) -> str:
    """The ``nonce`` of one flow, which its ID token must carry back: like the verifier, made from
    the state under the service's key, so nothing more needs to be kept."""
    return labelled_mac(secret, "nonce", state)


def _auth_time(claims: dict[str, Any]) -> int | None:
    """The ID token's ``auth_time`` (a NumericDate: a non-negative number of seconds), whole
    seconds; None when it has none or one that is no time."""
    value = claims.get("auth_time")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _step_up_of(flow: dict[str, Any]) -> StepUp | None:
    """The fresh sign-in a flow was started for, from its ``u``; None for an ordinary sign-in."""
    asked = flow.get("u")
    if not isinstance(asked, dict):
        return None
    return StepUp(
        max_age_s=int(asked.get("m", 0)), subject=str(asked.get("p", "")), resume=str(asked.get("r", ""))
    )


def _step_up_refused(
    step_up: StepUp, principal: Principal, auth_time: int | None, now: int, leeway_s: int
) -> SignInFailed | None:
    """Why the answer to a fresh sign-in does not prove one, or None when it does: the person who
    signed in must be the one who was asked to; the ID token must say when they signed in
    (``auth_time``, REQUIRED when ``max_age`` was asked: OpenID Connect Core 1.0 §2), and that must
    be within ``max_age`` (§3.1.3.7, item 13; ``leeway_s`` for the provider's clock). A provider
    that ignored ``max_age`` or ``prompt=login`` and answered from the session it had fails here."""
    if principal.subject != step_up.subject:
        return SignInFailed(
            "the identity provider signed in another person than the one asked to sign in again",
            "other_person",
        )
    if auth_time is None:
        return SignInFailed(
            "the identity provider's ID token has no auth_time, which it must have when max_age is asked",
            "no_auth_time",
        )
    age = now - auth_time
    if age > step_up.max_age_s + leeway_s:
        return SignInFailed(
            f"the identity provider did not have the person sign in again: auth_time is {age} s old, "
            f"max_age was {step_up.max_age_s} s",
            "not_recent",
        )
    return None


def _sealed(secret: bytes, value: dict[str, Any], label: str = "flow") -> str:
    """``value`` as a cookie's value: base64url JSON, signed under ``label`` (what is signed for the
    flow never passes for a kept auth time, nor the other way round). Signed, not encrypted."""
    payload = b64url(json.dumps(value, separators=(",", ":")).encode())
    return f"{payload}.{labelled_mac(secret, label, payload)}"


def _opened(secret: bytes, sealed: str, label: str = "flow") -> dict[str, Any] | None:
    payload, _, mac = sealed.partition(".")
    if not payload or not hmac.compare_digest(mac, labelled_mac(secret, label, payload)):
        return None
    try:
        return b64url_json(payload)
    except ValueError:
        return None
