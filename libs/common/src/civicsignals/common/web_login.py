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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from civicsignals.common.auth import Principal, get_registry


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign(secret: bytes, tenant: str, key_id: str, ttl_s: int, now: float | None = None) -> str:
    """A login cookie's value for the key ``key_id`` of ``tenant``, valid for ``ttl_s`` seconds."""
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


def principal_from_token(request: Request, secret: bytes, token: str | None) -> Principal | None:
    """Whom a login cookie's value stands for, with the key record read again (a revoked or
    expired key, or one moved to another tenant, ends the login); None when it stands for no one."""
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


def form_token(secret: bytes, cookie_value: str) -> str:
    """The anti-forgery token of the forms of one login: it changes with every login and cannot be
    made without the service's secret."""
    return _b64(hmac.new(secret, f"form:{cookie_value}".encode(), hashlib.sha256).digest())


def form_token_matches(secret: bytes, cookie_value: str | None, offered: str | None) -> bool:
    """Whether a posted form's token belongs to the login that posts it."""
    if not cookie_value or not offered:
        return False
    return hmac.compare_digest(form_token(secret, cookie_value), offered)


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

    def form_token(self, request: Request, secret: bytes) -> str:
        """The token the forms of this request's login carry ("" without a login)."""
        value = self.cookie_value(request)
        return form_token(secret, value) if value else ""

    def form_token_matches(self, request: Request, secret: bytes, offered: str | None) -> bool:
        return form_token_matches(secret, self.cookie_value(request), offered)
