"""Field-level encryption of reporters' contact data (DESIGN §4): AES-256-GCM with key ids.

Each ciphertext is stored beside the id of the key that made it, so keys can be rotated: new data
uses the active key, old data stays readable while its key is still configured. The signal id is
bound in as associated data, so a ciphertext copied to another row does not decrypt.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class KeyConfigError(ValueError):
    """The configured keys are unusable; the message says which and why (never the key)."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


class FieldCipher:
    def __init__(self, keys: dict[str, bytes], active_key_id: str) -> None:
        if not keys:
            raise KeyConfigError("no contact-data key is configured")
        for key_id, key in keys.items():
            if len(key) != 32:
                raise KeyConfigError(f"contact-data key {key_id!r} must be 32 bytes (AES-256)")
        if active_key_id not in keys:
            raise KeyConfigError(f"the active contact-data key {active_key_id!r} is not among the keys")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active_key_id = active_key_id

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def seal(self, plaintext: bytes, associated: bytes) -> Sealed:
        nonce = os.urandom(12)
        ciphertext = self._keys[self.active_key_id].encrypt(nonce, plaintext, associated)
        return Sealed(self.active_key_id, nonce, ciphertext)

    def open(self, sealed: Sealed, associated: bytes) -> bytes:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise KeyConfigError(
                f"contact data was sealed with key {sealed.key_id!r}, which is not configured"
            )
        return key.decrypt(sealed.nonce, sealed.ciphertext, associated)


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``id:base64key,id2:base64key``."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (item.strip() for item in spec.split(","))):
        key_id, _, encoded = part.partition(":")
        if not key_id or not encoded:
            raise KeyConfigError("contact-data keys must look like 'id:base64key'")
        try:
            keys[key_id] = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise KeyConfigError(f"contact-data key {key_id!r} is not valid base64") from exc
    return keys


def new_key_spec(key_id: str | None = None) -> str:
    key_id = key_id or f"k{secrets.token_hex(4)}"
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def load_or_create_dev_keys(folder: Path) -> tuple[dict[str, bytes], str]:
    """The embedded run's key: created once under ``<data_dir>/secrets``, never used in production."""
    path = folder / "intake-pii-keys"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(new_key_spec("dev1") + "\n", encoding="utf-8")
        path.chmod(0o600)
    spec = path.read_text(encoding="utf-8").strip()
    keys = parse_keys(spec)
    return keys, spec.split(",")[-1].split(":", 1)[0]
