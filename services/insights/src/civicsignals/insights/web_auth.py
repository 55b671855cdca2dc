"""Signing in to the dashboard.

A browser cannot send ``Authorization: Bearer`` when someone follows a link, so the dashboard
accepts either that header (scripts, the tests) or a login cookie: the login form takes an API key
with ``insights:read``, checks it like every service does, and sets an HttpOnly, SameSite=Strict
cookie holding ``tenant.key_id.expiry`` signed with HMAC-SHA256. The key itself is never stored in
the cookie. Each request re-reads the key record, so a revoked or expired key ends its logins at
once. (Signing in with the municipality's OpenID Connect provider is another piece of work.)
The cookie itself is :mod:`civicsignals.common.web_login`'s, shared with intake's privacy desk,
and so is the throttle of failed sign-ins per client address (``LOGIN.sign_in``, called by the
login form in :mod:`civicsignals.insights.pages`; its limits are ``login_failures_burst`` and
``login_failures_per_minute`` in insights' settings).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request

from civicsignals.common import web_login
from civicsignals.common.auth import Principal, authenticate, get_registry
from civicsignals.common.problems import Problem
from civicsignals.common.web_login import sign, verify

__all__ = [
    "COOKIE",
    "LOGIN",
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


def dashboard_principal(request: Request) -> Principal:
    """Who looks at the dashboard: a bearer key, or else the login cookie; otherwise to the login."""
    if request.headers.get("authorization"):
        principal = authenticate(get_registry(request), request.headers.get("authorization"))
    else:
        found = principal_from_cookie(request, request.app.state.insights_secret)
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
