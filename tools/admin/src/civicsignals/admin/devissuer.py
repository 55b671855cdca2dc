"""A small OpenID Connect token issuer on loopback, for development and tests.

It is a real issuer, not a mock of our checks: RSA keys made with joserfc, a discovery document
at ``/.well-known/openid-configuration``, its key set at ``/jwks``, and a token endpoint
(``POST /token``, OAuth 2.0 client credentials) that signs JWTs with the claims registered for
each client. The services verify those tokens exactly as they verify a municipality's provider.
Keys can be rotated (the old key stays published until dropped), so key-set refresh is testable.

Never run it anywhere but on loopback: it hands a token to anyone who knows a client's secret.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class Client:
    secret: str
    claims: dict[str, Any] = field(default_factory=dict)


class DevIssuer:
    """``with DevIssuer() as issuer:`` serves on a free loopback port until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, audience: str = "civicsignals") -> None:
        self.audience = audience
        self.keys: list[RSAKey] = []
        self.clients: dict[str, Client] = {}
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
        **claims: Any,
    ) -> str:
        """A signed access token; ``key`` defaults to the newest key (a foreign key makes a forgery)."""
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
        return jwt.encode({"alg": "RS256", "kid": signing.kid, "typ": "at+jwt"}, payload, signing)

    def add_client(self, client_id: str, claims: dict[str, Any], secret: str | None = None) -> str:
        """Register a client whose tokens carry ``claims`` (``sub`` included); returns its secret."""
        secret = secret or secrets.token_urlsafe(24)
        self.clients[client_id] = Client(secret=secret, claims=dict(claims))
        return secret

    # -- HTTP --------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "token_endpoint": f"{self.url}/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    def _token_response(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
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
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
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
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
