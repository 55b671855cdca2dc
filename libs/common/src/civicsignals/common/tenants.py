"""Tenant configuration as files (DESIGN §3): one folder per municipality.

```
<tenants_dir>/<tenant>/
    tenant.yaml        name, languages, bounding box, thresholds, retention
    departments.yaml   the departments (codes are NATS subject tokens)
    rules.yaml         routing rules (read by routing)
    keys.yaml          API keys: id, sha256 hash, scopes, created, expires, revoked
```

This module reads and watches those folders, and creates API keys. A folder that fails to load
keeps the last good version in force and the error names the file.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from civicsignals.common.events import check_code

log = logging.getLogger(__name__)

ALL_SCOPES = (
    "signals:write",
    "signals:read",
    "cases:read",
    "cases:write",
    "rules:admin",
    "insights:read",
    "contact:read",
    "admin",
)
KEY_PREFIX = "cs_"


class TenantConfigError(ValueError):
    """A tenant file is missing or invalid; the message names the file."""


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    tenant: str
    key_hash: str
    scopes: frozenset[str]
    created: datetime | None = None
    expires: datetime | None = None
    revoked: bool = False
    description: str = ""


@dataclass
class Tenant:
    code: str
    folder: Path
    settings: dict[str, Any] = field(default_factory=dict)
    departments: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, ApiKeyRecord] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.settings.get("name", self.code))


def hash_key(key: str) -> str:
    """Keys have at least 128 random bits, so one round of SHA-256 is a safe way to store them."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """Keys look like ``cs_<key id>.<secret>``; the id finds the record without a table scan."""
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    return key[len(KEY_PREFIX) :].split(".", 1)[0] or None


def generate_key() -> tuple[str, str]:
    """A new (key id, key): 64 bits of id and 256 bits of secret."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


def _read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise TenantConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc


def _parse_time(value: Any, path: Path, what: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise TenantConfigError(f"{path}: {what} {value!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def load_tenant(folder: Path) -> Tenant:
    code = check_code(folder.name, "tenant folder name")
    settings = _read_yaml(folder / "tenant.yaml") or {}
    if not isinstance(settings, dict):
        raise TenantConfigError(f"{folder / 'tenant.yaml'}: must be a mapping")
    departments_raw = _read_yaml(folder / "departments.yaml") or {}
    departments: dict[str, dict[str, Any]] = {}
    for entry in departments_raw.get("departments", []) if isinstance(departments_raw, dict) else []:
        try:
            departments[check_code(str(entry["code"]), "department")] = dict(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise TenantConfigError(f"{folder / 'departments.yaml'}: {exc}") from exc
    keys_path = folder / "keys.yaml"
    keys_raw = _read_yaml(keys_path) or {}
    keys: dict[str, ApiKeyRecord] = {}
    for entry in keys_raw.get("keys", []) if isinstance(keys_raw, dict) else []:
        try:
            scopes = frozenset(str(scope) for scope in entry.get("scopes", []))
            record = ApiKeyRecord(
                key_id=str(entry["id"]),
                tenant=code,
                key_hash=str(entry["hash"]),
                scopes=scopes,
                created=_parse_time(entry.get("created"), keys_path, "created"),
                expires=_parse_time(entry.get("expires"), keys_path, "expires"),
                revoked=bool(entry.get("revoked", False)),
                description=str(entry.get("description", "")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise TenantConfigError(f"{keys_path}: key entry lacks {exc}") from exc
        keys[record.key_id] = record
    return Tenant(code=code, folder=folder, settings=settings, departments=departments, keys=keys)


class TenantRegistry:
    """Every tenant folder under one directory, reloaded when a file changes.

    ``refresh`` is cheap (it compares modification times) and is called at most every
    ``check_interval_s`` by readers, so that a revoked key stops working within seconds.
    """

    def __init__(self, root: Path, *, check_interval_s: float = 2.0) -> None:
        self.root = root
        self.check_interval_s = check_interval_s
        self._tenants: dict[str, Tenant] = {}
        self._stamps: dict[str, tuple[tuple[str, float], ...]] = {}
        self._last_check = 0.0
        self.errors: dict[str, str] = {}
        self.refresh(force=True)

    def _stamp(self, folder: Path) -> tuple[tuple[str, float], ...]:
        return tuple(
            sorted((str(path), path.stat().st_mtime) for path in folder.rglob("*") if path.is_file())
        )

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < self.check_interval_s:
            return
        self._last_check = now
        if not self.root.is_dir():
            return
        seen = set()
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            seen.add(folder.name)
            stamp = self._stamp(folder)
            if self._stamps.get(folder.name) == stamp:
                continue
            try:
                self._tenants[folder.name] = load_tenant(folder)
                self.errors.pop(folder.name, None)
            except (TenantConfigError, ValueError) as exc:
                # Keep the last good version in force.
                self.errors[folder.name] = str(exc)
                log.error("tenant %s: configuration refused, keeping the last good one: %s", folder.name, exc)
            self._stamps[folder.name] = stamp
        for gone in set(self._tenants) - seen:
            del self._tenants[gone]
            self._stamps.pop(gone, None)

    def get(self, code: str) -> Tenant | None:
        self.refresh()
        return self._tenants.get(code)

    def codes(self) -> list[str]:
        self.refresh()
        return sorted(self._tenants)

    def find_key(self, key_id: str) -> ApiKeyRecord | None:
        """The record of a key id. An unknown id checks whether any ``keys.yaml`` changed (a folder listing and one
        ``stat`` per tenant) and reloads if so, so a key that was just created works at once."""
        self.refresh()
        record = self._lookup(key_id)
        if record is None and self._keys_changed():
            self.refresh(force=True)
            record = self._lookup(key_id)
        return record

    def _keys_changed(self) -> bool:
        if self.root.is_dir():
            folders = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            if folders != set(self._stamps):
                return True
        for code, tenant in self._tenants.items():
            path = tenant.folder / "keys.yaml"
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if (str(path), mtime) not in self._stamps.get(code, ()):
                return True
        return False

    def _lookup(self, key_id: str) -> ApiKeyRecord | None:
        for tenant in self._tenants.values():
            record = tenant.keys.get(key_id)
            if record is not None:
                return record
        return None


def add_key(
    folder: Path,
    scopes: list[str],
    *,
    description: str = "",
    expires: datetime | None = None,
) -> tuple[str, str]:
    """Create a key for the tenant in ``folder``, store only its hash; returns (key id, key)."""
    keys_path = folder / "keys.yaml"
    data = _read_yaml(keys_path) or {}
    entries = list(data.get("keys", []))
    key_id, key = generate_key()
    entries.append(
        {
            "id": key_id,
            "hash": hash_key(key),
            "scopes": sorted(scopes),
            "created": datetime.now(UTC).isoformat(),
            "expires": expires.isoformat() if expires else None,
            "revoked": False,
            "description": description,
        }
    )
    data["keys"] = entries
    temporary = keys_path.with_suffix(".yaml.tmp")
    temporary.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    temporary.replace(keys_path)
    return key_id, key


def prepare_dev_tenant(config_dir: Path, data_dir: Path, tenant: str = "demo") -> str:
    """Set up the embedded run's tenants under ``data_dir/tenants`` and return the dev key.

    The tenant folders are copied from ``config_dir`` once; the dev key (every scope of ``demo``)
    lands in ``.data/dev-api-key``, and the notifier's service key for intake in
    ``.data/service-keys/notifier/<tenant>``. Both are reused when they still match a stored hash.
    """
    tenants_dir = data_dir / "tenants"
    tenants_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        target = tenants_dir / source.name
        if not target.exists():
            shutil.copytree(source, target)
    folder = tenants_dir / tenant
    registered = load_tenant(folder)

    def _reuse_or_create(path: Path, scopes: list[str], description: str) -> str:
        if path.exists():
            existing = path.read_text(encoding="utf-8").strip()
            key_id = key_id_of(existing)
            record = registered.keys.get(key_id or "")
            if record is not None and record.key_hash == hash_key(existing) and not record.revoked:
                return existing
        _, key = add_key(folder, scopes, description=description)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n", encoding="utf-8")
        path.chmod(0o600)
        return key

    dev_key = _reuse_or_create(data_dir / "dev-api-key", list(ALL_SCOPES), "dev key of the embedded run")
    registered = load_tenant(folder)
    _reuse_or_create(
        data_dir / "service-keys" / "notifier" / tenant, ["contact:read"], "notifier reads contacts"
    )
    return dev_key
