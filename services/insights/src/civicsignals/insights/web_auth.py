"""Signing in to the dashboard.

A browser cannot send ``Authorization: Bearer`` when someone follows a link, so the dashboard
accepts either that header (scripts, the tests) or a login cookie: the login form takes an API key
with ``insights:read``, checks it like every service does, and sets an HttpOnly, SameSite=Strict
cookie holding ``tenant.key_id.expiry`` signed with HMAC-SHA256. The key itself is never stored in
the cookie. Each request re-reads the key record, so a revoked or expired key ends its logins at
once. (Signing in with the municipality's OpenID Connect provider is another piece of work.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from fastapi import Request

from civicsignals.common.auth import Principal, authenticate, get_registry
from civicsignals.common.problems import Problem

COOKIE = "civic_insights"
SCOPE = "insights:read"


class LoginRequired(Exception):
    """No valid login: the HTML pages answer with a redirect to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The cookie-signing key: the configured one, else a random one kept in the data directory."""
    if configured:
        return configured.encode()
    path = data_dir / "insights-session-secret"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign(secret: bytes, tenant: str, key_id: str, ttl_s: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = f"{tenant}.{key_id}.{expires}"
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify(secret: bytes, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(tenant, key id) of a valid, unexpired token; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4:
        return None
    tenant, key_id, expires, mac = parts
    expected = _b64(hmac.new(secret, f"{tenant}.{key_id}.{expires}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, expected):
        return None
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    return tenant, key_id


def principal_from_cookie(request: Request, secret: bytes) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    verified = verify(secret, token)
    if verified is None:
        return None
    tenant, key_id = verified
    record = get_registry(request).find_key(key_id)
    if record is None or record.revoked or record.tenant != tenant:
        return None
    if record.expires is not None and record.expires.timestamp() <= time.time():
        return None
    return Principal(tenant=record.tenant, key_id=record.key_id, scopes=record.scopes)


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
