"""Standard Webhooks signing (DESIGN §6), our own implementation of the published scheme.

A message is signed as ``HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")``,
base64-encoded and prefixed ``v1,``. Secrets are 24 to 64 random bytes written ``whsec_<base64>``.
During a rotation an endpoint has two valid secrets and the ``webhook-signature`` header carries one
signature for each, separated by a space, so a receiver holding either secret accepts the message.

The tests check this module against the ``standardwebhooks`` package, an implementation that is not
ours, so a mistake here cannot hide behind a matching mistake in a verifier we wrote ourselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"


class InvalidSecret(ValueError):
    """A secret that is not ``whsec_`` + base64 of 24 to 64 bytes (the message never holds it)."""


def generate_secret() -> str:
    """A fresh endpoint secret: 256 random bits."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; raises :class:`InvalidSecret` when it is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("a webhook secret starts with 'whsec_'")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise InvalidSecret("a webhook secret is base64 after 'whsec_'") from exc
    if not 24 <= len(raw) <= 64:
        raise InvalidSecret("a webhook secret holds 24 to 64 bytes")
    return raw


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of a message."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(secrets_in_force: Iterable[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per valid secret, space-separated."""
    values = [signature(secret, webhook_id, timestamp, body) for secret in secrets_in_force]
    if not values:
        raise InvalidSecret("an endpoint without a valid secret cannot sign")
    return " ".join(values)


def webhook_headers(
    secrets_in_force: Iterable[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (signed afresh, with its own timestamp)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_in_force, webhook_id, timestamp, body),
    }


def message_id(*parts: str, prefix: str = "msg_") -> str:
    """A deterministic message id from what the message is (event and destination).

    The same event to the same endpoint always has the same ``webhook-id`` (and the same e-mail
    ``Message-ID``), on every retry and after any crash, so a receiver can drop a copy it has seen.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    # The first 32 base32 characters are those of the first 20 bytes (base32 encodes each 5 bytes
    # on their own): encoding only those is the same id at less cost.
    return prefix + base64.b32encode(digest[:20]).decode().lower()
