"""A small OpenID Connect token issuer on loopback, for development and tests.

It is a real issuer, not a mock of our checks: RSA keys made with joserfc, a discovery document
at ``/.well-known/openid-configuration``, its key set at ``/jwks``, and a token endpoint
(``POST /token``, OAuth 2.0 client credentials) that signs JWTs with the claims registered for
each client. The services verify those tokens exactly as they verify a municipality's provider.
Keys can be rotated (the old key stays published until dropped), so key-set refresh is testable.

For staff signing in to the services' pages it also speaks the authorization code flow with PKCE
(RFC 7636, ``S256`` only) for public clients (:meth:`DevIssuer.add_web_client`): ``GET /authorize``
signs in whoever :meth:`DevIssuer.sign_in_as` named (there is no password form) and redirects to
the client's registered redirect URI with a one-time code; ``POST /token`` with
``grant_type=authorization_code`` checks the code, the redirect URI and the verifier, and answers
an access token (the person's claims, for the services' audience) and an ID token (the nonce and
``auth_time``, for the client). ``auth_time`` is when the person last really signed in here:
when :meth:`DevIssuer.sign_in_as` named them (or the time it was given), not when the code was
made. ``max_age`` and ``prompt`` (OpenID Connect Core 1.0 §3.1.2.1) are honoured as a provider
with a password form honours them: a sign-in older than ``max_age`` seconds, or ``prompt=login``,
has the person sign in again (here: as if they typed their password, which
:attr:`DevIssuer.sign_in_prompts` records, and the session's sign-in time becomes now), or, with
``prompt=none``, answers ``login_required``. Tests may make it a provider that leaves
``auth_time`` out or ignores ``max_age`` (:attr:`DevIssuer.includes_auth_time`,
:attr:`DevIssuer.honours_max_age`), which the client must catch.

``GET /logout``, its ``end_session_endpoint`` (OpenID Connect RP-Initiated Logout 1.0), ends the
session: nobody is signed in at it afterwards, so the next ``/authorize`` answers
``login_required`` until :meth:`DevIssuer.sign_in_as` names someone again, as a provider whose
user signed out asks for a password. It sends the browser back to a ``post_logout_redirect_uri``
only when that is registered for the client and a valid ID token of that client comes with it
as ``id_token_hint``, as the specification asks; otherwise it answers with a page of its own.

Never run it anywhere but on loopback: it hands a token to anyone who knows a client's secret,
and signs anyone in as the person it was told.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import yaml
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


def set_tenant_oidc(folder: Path, block: dict[str, Any] | None) -> None:
    """Write ``block`` as the ``oidc:`` of a tenant folder's ``tenant.yaml`` (None removes it):
    how tests and the embedded run point a tenant at an issuer such as this one."""
    path = folder / "tenant.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if block is None:
        settings.pop("oidc", None)
    else:
        settings["oidc"] = block
    path.write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False), encoding="utf-8")


@dataclass
class Client:
    secret: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class WebClient:
    """A public client of the authorization code flow: no secret, PKCE instead."""

    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)


@dataclass
class Grant:
    """An authorization code not yet redeemed: for whom, and what redeeming it must show."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    subject: str
    claims: dict[str, Any]
    expires: float
    #: When the person last really signed in (the ID token's ``auth_time``).
    auth_time: int = 0


class DevIssuer:
    """``with DevIssuer() as issuer:`` serves on a free loopback port until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, audience: str = "civicsignals") -> None:
        self.audience = audience
        self.keys: list[RSAKey] = []
        self.clients: dict[str, Client] = {}
        self.web_clients: dict[str, WebClient] = {}
        self.grants: dict[str, Grant] = {}
        self.person: tuple[str, dict[str, Any]] | None = None
        #: When the person of the session last really signed in here (``auth_time``); None: no
        #: session, so the next ``/authorize`` is a sign-in (after ``/logout`` in ``make run``).
        self.authenticated_at: float | None = None
        #: Whether the person signs in again when asked (``max_age`` exceeded, ``prompt=login``), as
        #: if they typed their password; False: they cancel, and the client gets ``access_denied``.
        self.signs_in_again_when_asked = True
        #: Why each ``/authorize`` that asked the person to sign in again did so (``prompt=login``,
        #: ``max_age``, ``no session``), in order: what a test reads to know a sign-in was asked.
        self.sign_in_prompts: list[str] = []
        #: Whether ID tokens carry ``auth_time``: OpenID Connect requires it when ``max_age`` was
        #: asked, but a provider may leave it out; tests turn it off to see the client refuse.
        self.includes_auth_time = True
        #: Whether ``max_age`` and ``prompt=login`` make the person sign in again; a provider may
        #: ignore them and answer from the session it has, which the client must catch by
        #: ``auth_time``; tests turn it off to see that.
        self.honours_max_age = True
        #: Whether ``/authorize`` without anyone signed in says ``login_required`` (after a
        #: sign-out) rather than ``access_denied`` (the person cancelled).
        self.signed_out = False
        #: Every ``/logout`` that ended a session: its client and whether it came with a valid hint.
        self.logouts: list[dict[str, Any]] = []
        #: Whether discovery names ``/logout`` as ``end_session_endpoint`` (a provider may not).
        self.offers_logout = True
        #: Whether the person signed in before signs in again at the next ``/authorize`` after a
        #: ``/logout``, as if they typed their password (``make run``: this issuer has no password
        #: form, and a developer who signed out wants to sign in again); tests leave it off.
        self.sign_in_again_after_logout = False
        self.jwks_requests = 0
        self._lock = threading.Lock()
        self.rotate()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- keys and tokens ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def rotate(self, *, drop_old: bool = False) -> RSAKey:
        """A new signing key (the one tokens are signed with from now on); old keys stay published."""
        key = RSAKey.generate_key(
            2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"}
        )
        with self._lock:
            self.keys = [key] if drop_old else [*self.keys, key]
        return key

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def issue(
        self,
        subject: str,
        *,
        audience: str | list[str] | None = None,
        expires_in: int = 300,
        issuer: str | None = None,
        key: RSAKey | None = None,
        header_typ: str = "at+jwt",
        **claims: Any,
    ) -> str:
        """A signed access token (``header_typ`` ``JWT`` for an ID token, which must not pass for an
        access token, nor the other way round); ``key`` defaults to the newest key (a foreign key
        makes a forgery)."""
        now = int(time.time())
        payload = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": now,
            "nbf": now - 1,
            "exp": now + expires_in,
            "jti": secrets.token_hex(8),
            **claims,
        }
        signing = key or self.keys[-1]
        return jwt.encode({"alg": "RS256", "kid": signing.kid, "typ": header_typ}, payload, signing)

    def add_client(self, client_id: str, claims: dict[str, Any], secret: str | None = None) -> str:
        """Register a client whose tokens carry ``claims`` (``sub`` included); returns its secret."""
        secret = secret or secrets.token_urlsafe(24)
        self.clients[client_id] = Client(secret=secret, claims=dict(claims))
        return secret

    def add_web_client(
        self, client_id: str, redirect_uris: list[str], post_logout_redirect_uris: list[str] | None = None
    ) -> None:
        """Register a public client of the authorization code flow (PKCE, no secret), and where it
        may have the browser sent back after a sign-out."""
        self.web_clients[client_id] = WebClient(
            redirect_uris=list(redirect_uris), post_logout_redirect_uris=list(post_logout_redirect_uris or [])
        )

    def sign_in_as(
        self, subject: str | None, *, authenticated_at: float | None = None, **claims: Any
    ) -> None:
        """Who ``/authorize`` signs in from now on (``None``: nobody, the user cancels), with the
        claims of their access token (``groups``, ``scope``, ...). They sign in at this issuer now,
        as if they typed their password, or at ``authenticated_at`` (a test's way to a session
        signed in long ago, whose ``auth_time`` is that old)."""
        with self._lock:
            self.person = None if subject is None else (subject, dict(claims))
            if subject is None:
                self.authenticated_at = None
            else:
                self.authenticated_at = time.time() if authenticated_at is None else authenticated_at
            self.signed_out = False

    def _end_session(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``GET /logout``: end the session, then send the browser back where the client asked
        if that may be done (a registered URI, and a valid ID token of the client as the hint)."""

        def one(name: str) -> str:
            values = query.get(name, [])
            return values[0] if len(values) == 1 else ""

        client_id = one("client_id")
        hint = one("id_token_hint")
        hinted = None
        if hint:
            try:
                claims = jwt.decode(hint, KeySet(list(self.keys))).claims
            except Exception:  # joserfc raises several kinds for a bad token; all mean "no hint"
                claims = {}
            if claims.get("iss") == self.issuer and (not client_id or claims.get("aud") == client_id):
                hinted = str(claims.get("aud"))
        client = self.web_clients.get(client_id or hinted or "")
        with self._lock:
            if not self.sign_in_again_after_logout:
                self.person = None
                self.signed_out = True
            # The session ends: the next /authorize is a sign-in (make run's: by the same person).
            self.authenticated_at = None
            self.logouts.append({"client_id": client_id, "hinted": hinted is not None})
        back = one("post_logout_redirect_uri")
        if back and client is not None and hinted is not None and back in client.post_logout_redirect_uris:
            state = one("state")
            return 302, {"Location": back + (f"?{urlencode({'state': state})}" if state else "")}, {}
        return 200, {}, {"signed_out": True, "redirect": False}

    def _authorize(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, headers, error body) of ``GET /authorize``: a redirect when the request names a
        known client and one of its redirect URIs, else an error page of our own (never a redirect
        to a URI the client did not register, RFC 6749 section 4.1.2.1)."""

        def one(name: str) -> str:
            values = query.get(name, [])
            return values[0] if len(values) == 1 else ""

        client = self.web_clients.get(one("client_id"))
        redirect_uri = one("redirect_uri")
        if client is None or redirect_uri not in client.redirect_uris:
            return (
                400,
                {},
                {"error": "invalid_request", "error_description": "unknown client or redirect_uri"},
            )
        state = one("state")

        def back(**params: str) -> tuple[int, dict[str, str], dict[str, Any]]:
            given = {**params, "state": state, "iss": self.issuer}
            return 302, {"Location": f"{redirect_uri}?{urlencode(given)}"}, {}

        if one("response_type") != "code":
            return back(error="unsupported_response_type")
        if one("code_challenge_method") != "S256" or not one("code_challenge"):
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        if "openid" not in one("scope").split():
            return back(error="invalid_scope")
        prompt = set(one("prompt").split())
        if "none" in prompt and len(prompt) > 1:
            return back(error="invalid_request", error_description="prompt=none goes with no other value")
        max_age = one("max_age")
        if max_age and not max_age.isdigit():
            return back(error="invalid_request", error_description="max_age is a number of seconds")
        with self._lock:
            if self.person is None:
                return back(error="login_required" if self.signed_out else "access_denied")
            subject, claims = self.person
            why = self._sign_in_needed(prompt, int(max_age) if max_age else None)
            if why:
                if "none" in prompt:
                    return back(error="login_required")  # no sign-in may be shown
                self.sign_in_prompts.append(why)
                if not self.signs_in_again_when_asked:
                    return back(error="access_denied")  # they cancelled at the password form
                self.authenticated_at = time.time()  # they typed their password
            code = secrets.token_urlsafe(24)
            self.grants[code] = Grant(
                client_id=one("client_id"),
                redirect_uri=redirect_uri,
                code_challenge=one("code_challenge"),
                nonce=one("nonce") or None,
                subject=subject,
                claims=claims,
                expires=time.time() + 60,
                auth_time=int(self.authenticated_at or time.time()),
            )
        return back(code=code)

    def _sign_in_needed(self, prompt: set[str], max_age: int | None) -> str:
        """Why the person must sign in again before a code is given ("" when not): there is no
        session (after a sign-out), ``prompt=login`` asks for it, or the session's sign-in is older
        than ``max_age`` seconds (unless this issuer plays one that ignores both)."""
        if self.authenticated_at is None:
            return "no session"
        if not self.honours_max_age:
            return ""
        if "login" in prompt:
            return "prompt=login"
        if max_age is not None and time.time() - self.authenticated_at > max_age:
            return "max_age"
        return ""

    def _code_response(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """``POST /token`` with ``grant_type=authorization_code``: a code is redeemed once."""
        code = form.get("code", [""])[0]
        with self._lock:
            grant = self.grants.pop(code, None)
        if grant is None or grant.expires < time.time():
            return 400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"}
        if form.get("client_id", [""])[0] != grant.client_id:
            return 400, {
                "error": "invalid_grant",
                "error_description": "the code was issued to another client",
            }
        if form.get("redirect_uri", [""])[0] != grant.redirect_uri:
            return 400, {
                "error": "invalid_grant",
                "error_description": "redirect_uri differs from the request's",
            }
        verifier = form.get("code_verifier", [""])[0]
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if not verifier or not hmac.compare_digest(challenge, grant.code_challenge):
            return 400, {"error": "invalid_grant", "error_description": "code_verifier does not match"}
        access = self.issue(grant.subject, **grant.claims)
        nonce: dict[str, Any] = {"nonce": grant.nonce} if grant.nonce else {}
        auth_time: dict[str, Any] = {"auth_time": grant.auth_time} if self.includes_auth_time else {}
        id_token = self.issue(grant.subject, audience=grant.client_id, header_typ="JWT", **nonce, **auth_time)
        return 200, {"access_token": access, "id_token": id_token, "token_type": "Bearer", "expires_in": 300}

    # -- HTTP --------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            **({"end_session_endpoint": f"{self.url}/logout"} if self.offers_logout else {}),
            "grant_types_supported": ["client_credentials", "authorization_code"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            # /authorize answers only the code flow (no implicit "token", no "id_token").
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }

    def _token_response(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type", [""])[0] == "authorization_code":
            return self._code_response(form)
        if form.get("grant_type", [""])[0] != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client = self.clients.get(form.get("client_id", [""])[0])
        offered = form.get("client_secret", [""])[0]
        if client is None or not hmac.compare_digest(client.secret.encode(), offered.encode()):
            return 401, {"error": "invalid_client"}
        claims = dict(client.claims)
        subject = str(claims.pop("sub", form["client_id"][0]))
        expires_in = int(claims.pop("expires_in", 300))
        token = self.issue(subject, expires_in=expires_in, **claims)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._send(200, issuer.discovery())
                elif self.path == "/jwks":
                    issuer.jwks_requests += 1
                    self._send(200, issuer.jwks())
                elif urlsplit(self.path).path == "/authorize":
                    status, headers, body = issuer._authorize(parse_qs(urlsplit(self.path).query))
                    self._send(status, body, headers)
                elif urlsplit(self.path).path == "/logout" and issuer.offers_logout:
                    status, headers, body = issuer._end_session(parse_qs(urlsplit(self.path).query))
                    self._send(status, body, headers)
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if self.path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                self._send(*issuer._token_response(form))

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: tests read what matters from the responses

        return Handler

    def start(self) -> DevIssuer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dev-oidc-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; also for an issuer never started (``shutdown`` would
        then wait forever for a loop that does not run)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
