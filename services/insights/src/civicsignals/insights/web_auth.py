"""Signing in to the dashboard.

A browser cannot send ``Authorization: Bearer`` when someone follows a link, so the dashboard
accepts either that header (scripts, the tests: an API key, or a person's token from the
municipality's OpenID Connect provider, checked as the API checks them) or a login cookie, which
staff get in one of two ways:

* **through their municipality's OpenID Connect provider** (:data:`OIDC`, DESIGN §3), for every
  tenant whose ``oidc`` block names a ``web_client_id``: the login page links to
  ``/dashboard/login/oidc``, the provider sends the browser back to
  ``/dashboard/login/oidc/callback``, and the cookie then holds what the provider's token said
  (tenant, pseudonymous subject, scopes, departments, issuer), signed. It lasts ``session_ttl_s``
  unless the tenant drops ``web_client_id`` or changes its issuer first;
* **with an API key** typed into the login form (scripts and service accounts): the cookie holds
  ``tenant.key_id.expiry`` signed with HMAC-SHA256, never the key, and each request re-reads the
  key record, so a revoked or expired key ends its logins at once.

Either cookie is HttpOnly and SameSite=Strict. It is :mod:`civicsignals.common.web_login`'s, shared
with intake's privacy desk, and so are the provider's flow (:mod:`civicsignals.common.web_oidc`)
and the throttle of failed key sign-ins per client address (``LOGIN.sign_in``, called by the login
form in :mod:`civicsignals.insights.pages`; its limits are ``login_failures_burst`` and
``login_failures_per_minute`` in insights' settings).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from civicsignals.common import web_login
from civicsignals.common.auth import Principal, authenticate_bearer, get_registry
from civicsignals.common.problems import Problem
from civicsignals.common.web_login import sign, verify
from civicsignals.common.web_oidc import WebOidc

__all__ = [
    "COOKIE",
    "LOGIN",
    "OIDC",
    "OIDC_CALLBACK",
    "SCOPE",
    "LoginRequired",
    "dashboard_principal",
    "load_secret",
    "principal_from_cookie",
    "safe_next",
    "sign",
    "verify",
]

COOKIE = "civic_insights"
SCOPE = "insights:read"
LOGIN = web_login.WebLogin(
    cookie=COOKIE, scope=SCOPE, signing_key_file="insights-session-secret", path="/dashboard"
)
#: Where the provider sends the browser back: under the login's path, so the flow cookie goes with it.
#: Each provider must register ``<public base URL>`` + this as a redirect URI of the tenant's
#: ``web_client_id``.
OIDC_CALLBACK = "/dashboard/login/oidc/callback"
OIDC = WebOidc(LOGIN, OIDC_CALLBACK)


class LoginRequired(Exception):
    """No valid login: the HTML pages answer with a redirect to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The cookie-signing key: the configured one, else a random one kept in the data directory."""
    return LOGIN.load_secret(configured, data_dir)


def principal_from_cookie(request: Request, secret: bytes) -> Principal | None:
    return LOGIN.principal(request, secret)


async def dashboard_principal(request: Request) -> Principal:
    """Who looks at the dashboard: a bearer key or person's token, or else the login cookie (a key's
    or a person's); otherwise to the login."""
    if request.headers.get("authorization"):
        principal = await authenticate_bearer(get_registry(request), request.headers.get("authorization"))
    else:
        # A key's login reads the key record, which may touch the disk: off the event loop.
        found = await run_in_threadpool(principal_from_cookie, request, request.app.state.insights_secret)
        if found is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        principal = found
    if not principal.allows(SCOPE):
        raise Problem(403, f"this key lacks the scope '{SCOPE}'", slug="forbidden")
    request.state.principal = principal
    return principal


def safe_next(value: str | None) -> str:
    """Only a path of the dashboard itself may follow a login (no open redirect)."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"
