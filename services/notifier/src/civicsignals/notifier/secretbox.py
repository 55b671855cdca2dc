"""Webhook secrets at rest: sealed with AES-256-GCM under a key from settings.

A database dump alone then does not let anyone sign as the municipality. The key id is stored beside
each ciphertext so the key can be replaced later; the endpoint id is bound in as associated data, so
a sealed secret copied to another endpoint does not open.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SecretKeyError(ValueError):
    """The configured key is unusable; the message never holds the key."""


class SecretBox:
    def __init__(self, key_id: str, key: bytes) -> None:
        if len(key) != 32:
            raise SecretKeyError("the webhook-secrets key must be 32 bytes (AES-256)")
        if not key_id or ":" in key_id or "." in key_id:
            raise SecretKeyError("the webhook-secrets key id must be non-empty, without ':' or '.'")
        self.key_id = key_id
        self._aead = AESGCM(key)

    @classmethod
    def from_setting(cls, spec: str, data_dir: Path) -> SecretBox:
        """``id:base64key`` from settings, or the embedded run's key file (created on first use)."""
        if spec:
            key_id, _, encoded = spec.partition(":")
            try:
                key = base64.b64decode(encoded, validate=True)
            except ValueError as exc:
                raise SecretKeyError("the webhook-secrets key is not base64") from exc
            return cls(key_id, key)
        path = data_dir / "secrets" / "notifier-webhook-secrets.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(f"dev1:{base64.b64encode(secrets.token_bytes(32)).decode()}\n")
            temporary.chmod(0o600)
            temporary.replace(path)
        return cls.from_setting(path.read_text(encoding="utf-8").strip(), data_dir)

    def seal(self, secret: str, endpoint_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())
        return f"{self.key_id}.{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, endpoint_id: str) -> str:
        key_id, _, encoded = sealed.partition(".")
        if key_id != self.key_id:
            raise SecretKeyError(f"a webhook secret was sealed with key {key_id!r}, which is not configured")
        raw = base64.b64decode(encoded)
        return self._aead.decrypt(raw[:12], raw[12:], endpoint_id.encode()).decode()
