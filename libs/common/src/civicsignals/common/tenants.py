"""Tenant configuration as files (DESIGN §3): one folder per municipality.

```
<tenants_dir>/<tenant>/
    tenant.yaml        name, languages, bounding box, thresholds, retention, OIDC provider
    departments.yaml   the departments (codes are NATS subject tokens)
    partners.yaml      partner organisations signals may be forwarded to
    areas.geojson      districts as a GeoJSON FeatureCollection
    taxonomy.yaml      topics and subtopics (optional: the classifier's default otherwise)
    rules.yaml         routing rules (their meaning is checked by routing)
    templates/         resident messages, <name>.<language>.<txt|html>
    keys.yaml          API keys: id, sha256 hash, scopes, created, expires, revoked
```

Every file has a JSON Schema (``tenant_schemas``); a folder is checked file by file and across
files when it loads. This module reads and watches those folders, and creates, rotates and revokes
API keys. A folder that fails to load keeps the last good version in force and the error names the
file and the line. See ``docs/identity.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from civicsignals.common.events import check_code
from civicsignals.common.oidc import OidcConfig, OidcVerifier
from civicsignals.common.tenant_schemas import ConfigIssue, TenantConfigError, check_folder

__all__ = [
    "ALL_SCOPES",
    "ApiKeyRecord",
    "ConfigIssue",
    "ReloadEvent",
    "Tenant",
    "TenantConfigError",
    "TenantRegistry",
    "add_key",
    "hash_key",
    "key_id_of",
    "list_keys",
    "load_tenant",
    "prepare_dev_tenant",
    "revoke_key",
    "rotate_key",
]

log = logging.getLogger(__name__)

ALL_SCOPES = (
    "signals:write",
    "signals:read",
    "cases:read",
    "cases:write",
    "rules:admin",
    "insights:read",
    "contact:read",
    "audit:read",
    "privacy:admin",
    "admin",
)
KEY_PREFIX = "cs_"
KEYS_HEADER = (
    "# API keys of this tenant: only hashes are stored (DESIGN §3). Manage them with the admin command:\n"
    "# civicsignals-admin keys create|list|rotate|revoke\n"
)


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
    departments: frozenset[str] = frozenset()
    """Empty: every department of the tenant; otherwise the key sees only these."""
    revoked_at: datetime | None = None
    replaced_by: str | None = None

    def state(self, now: datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``, as the admin command lists it."""
        if self.revoked:
            return "revoked"
        if self.expires is not None and self.expires <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


@dataclass
class Tenant:
    code: str
    folder: Path
    settings: dict[str, Any] = field(default_factory=dict)
    departments: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    partners: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, Any] | None = None
    taxonomy: dict[str, Any] | None = None
    areas: dict[str, Any] | None = None
    oidc: OidcConfig | None = None

    @property
    def name(self) -> str:
        return str(self.settings.get("name", self.code))


@dataclass(frozen=True)
class ReloadEvent:
    """A tenant folder changed: it was loaded (``ok``), refused (``refused``) or removed (``removed``).

    ``detail`` says what changed (files, key ids) or why it was refused (file and line); it never
    holds a key or personal data, so it can go into the audit log as it is.
    """

    tenant: str
    result: Literal["ok", "refused", "removed"]
    detail: str


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


def _key_record(entry: dict[str, Any], tenant: str, keys_path: Path) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=str(entry["id"]),
        tenant=tenant,
        key_hash=str(entry["hash"]),
        scopes=frozenset(str(scope) for scope in entry.get("scopes") or []),
        created=_parse_time(entry.get("created"), keys_path, "created"),
        expires=_parse_time(entry.get("expires"), keys_path, "expires"),
        revoked=bool(entry.get("revoked", False)),
        description=str(entry.get("description") or ""),
        departments=frozenset(str(code) for code in entry.get("departments") or []),
        revoked_at=_parse_time(entry.get("revoked_at"), keys_path, "revoked_at"),
        replaced_by=entry.get("replaced_by"),
    )


def load_tenant(folder: Path) -> Tenant:
    """Load and check one tenant folder; raises :class:`TenantConfigError` naming file and line."""
    code = check_code(folder.name, "tenant folder name")
    report = check_folder(folder)
    report.raise_for_issues()
    settings = report.data("tenant.yaml", {})
    departments = {
        str(entry["code"]): dict(entry)
        for entry in report.data("departments.yaml", {}).get("departments") or []
    }
    partners = {
        str(entry["code"]): dict(entry) for entry in report.data("partners.yaml", {}).get("partners") or []
    }
    keys_path = folder / "keys.yaml"
    keys: dict[str, ApiKeyRecord] = {}
    for entry in report.data("keys.yaml", {}).get("keys") or []:
        record = _key_record(entry, code, keys_path)
        keys[record.key_id] = record
    oidc: OidcConfig | None = None
    if settings.get("oidc"):
        try:
            oidc = OidcConfig.model_validate(settings["oidc"])
        except ValidationError as exc:  # the schema should have caught it; say where anyway
            raise TenantConfigError(f"{folder / 'tenant.yaml'}: oidc: {exc.errors()[0]['msg']}") from exc
    return Tenant(
        code=code,
        folder=folder,
        settings=settings,
        departments=departments,
        keys=keys,
        partners=partners,
        rules=report.data("rules.yaml"),
        taxonomy=report.data("taxonomy.yaml"),
        areas=report.data("areas.geojson"),
        oidc=oidc,
    )


def _describe_change(old: Tenant | None, new: Tenant, files: list[str]) -> str:
    """What a reload changed, for the log and the audit record: file names and key ids only."""
    parts = [f"files: {', '.join(files) or '-'}"]
    if old is not None:
        added = sorted(set(new.keys) - set(old.keys))
        revoked = sorted(
            k for k, r in new.keys.items() if r.revoked and k in old.keys and not old.keys[k].revoked
        )
        removed = sorted(set(old.keys) - set(new.keys))
        for label, ids in (("keys added", added), ("keys revoked", revoked), ("keys removed", removed)):
            if ids:
                parts.append(f"{label}: {', '.join(ids)}")
    return "; ".join(parts)


ReloadListener = Callable[[ReloadEvent], None]


class TenantRegistry:
    """Every tenant folder under one directory, reloaded when a file changes.

    ``refresh`` is cheap (it compares modification times) and is called at most every
    ``check_interval_s`` by readers, so that a revoked key stops working within that many seconds
    (2 s by default) in every process, without a restart. A changed folder is checked in full; a
    broken change is refused (``errors`` says why, with file and line) and the last good version
    stays in force. Listeners hear of every load, refusal and removal (the audit log is one).
    """

    def __init__(
        self,
        root: Path,
        *,
        check_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._tenants: dict[str, Tenant] = {}
        self._stamps: dict[str, tuple[tuple[str, float], ...]] = {}
        self._last_check = float("-inf")
        self.errors: dict[str, str] = {}
        self.issues: dict[str, list[ConfigIssue]] = {}
        self.listeners: list[ReloadListener] = []
        self.oidc = OidcVerifier()
        self.refresh(force=True)

    def add_listener(self, listener: ReloadListener) -> None:
        self.listeners.append(listener)

    def _notify(self, event: ReloadEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("tenant reload listener failed")

    def _stamp(self, folder: Path) -> tuple[tuple[str, float], ...]:
        stamps = []
        for path in folder.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and not path.name.startswith("."):
                    stamps.append((str(path.relative_to(folder)), path.stat().st_mtime))
        return tuple(sorted(stamps))

    def refresh(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_check < self.check_interval_s:
            return
        self._last_check = now
        if not self.root.is_dir():
            return
        seen = set()
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            seen.add(folder.name)
            stamp = self._stamp(folder)
            previous_stamp = self._stamps.get(folder.name)
            if previous_stamp == stamp:
                continue
            changed = sorted(
                {name for name, _ in stamp} ^ {name for name, _ in previous_stamp or ()}
                | {name for name, mtime in stamp if (name, mtime) not in set(previous_stamp or ())}
            )
            old = self._tenants.get(folder.name)
            try:
                tenant = load_tenant(folder)
            except (TenantConfigError, ValueError) as exc:
                # Keep the last good version in force.
                self.errors[folder.name] = str(exc)
                self.issues[folder.name] = list(getattr(exc, "issues", []))
                log.error("tenant %s: configuration refused, keeping the last good one: %s", folder.name, exc)
                self._notify(ReloadEvent(folder.name, "refused", str(exc)[:1000]))
            else:
                self._tenants[folder.name] = tenant
                self.errors.pop(folder.name, None)
                self.issues.pop(folder.name, None)
                detail = _describe_change(old, tenant, changed)
                log.info("tenant %s: configuration loaded (%s)", folder.name, detail)
                self._notify(ReloadEvent(folder.name, "ok", detail))
            self._stamps[folder.name] = stamp
        for gone in set(self._tenants) - seen:
            del self._tenants[gone]
            self._notify(ReloadEvent(gone, "removed", "the tenant folder is gone"))
        for gone in set(self._stamps) - seen:
            self._stamps.pop(gone, None)
            self.errors.pop(gone, None)

    def get(self, code: str) -> Tenant | None:
        self.refresh()
        return self._tenants.get(code)

    def codes(self) -> list[str]:
        self.refresh()
        return sorted(self._tenants)

    def oidc_configs(self) -> Iterator[tuple[str, OidcConfig]]:
        """Each tenant that lets people sign in with OpenID Connect, with its provider's settings."""
        self.refresh()
        for code, tenant in sorted(self._tenants.items()):
            if tenant.oidc is not None:
                yield code, tenant.oidc

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
        for code in self._stamps:
            path = self.root / code / "keys.yaml"
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if ("keys.yaml", mtime) not in self._stamps.get(code, ()):
                return True
        return False

    def _lookup(self, key_id: str) -> ApiKeyRecord | None:
        for tenant in self._tenants.values():
            record = tenant.keys.get(key_id)
            if record is not None:
                return record
        return None


# -- key management (the admin command and the embedded run) ---------------------------------------


@contextlib.contextmanager
def _keys_file(folder: Path) -> Iterator[dict[str, Any]]:
    """``keys.yaml`` opened for a change under an exclusive lock, written atomically on success."""
    keys_path = folder / "keys.yaml"
    with (folder / ".keys.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = _read_yaml(keys_path) or {}
            if not isinstance(data, dict):
                raise TenantConfigError(f"{keys_path}: must be a mapping with a list 'keys'")
            data["keys"] = list(data.get("keys") or [])
            yield data
            temporary = keys_path.with_name(".keys.yaml.tmp")
            temporary.write_text(KEYS_HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            temporary.replace(keys_path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_scopes(scopes: list[str]) -> list[str]:
    for scope in scopes:
        if scope not in ALL_SCOPES and not (
            scope.startswith("partner:") and check_code(scope[8:], "partner")
        ):
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(ALL_SCOPES)}, partner:<code>")
    return sorted(set(scopes))


def add_key(
    folder: Path,
    scopes: list[str],
    *,
    description: str = "",
    expires: datetime | None = None,
    departments: list[str] | None = None,
) -> tuple[str, str]:
    """Create a key for the tenant in ``folder``, store only its hash; returns (key id, key)."""
    checked = _check_scopes(scopes)
    key_id, key = generate_key()
    entry: dict[str, Any] = {
        "id": key_id,
        "hash": hash_key(key),
        "scopes": checked,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "expires": expires.isoformat(timespec="seconds") if expires else None,
        "revoked": False,
        "description": description,
    }
    if departments:
        entry["departments"] = sorted(check_code(code, "department") for code in departments)
    with _keys_file(folder) as data:
        data["keys"].append(entry)
    return key_id, key


def list_keys(folder: Path) -> list[ApiKeyRecord]:
    """The keys of one tenant folder as stored (hashes, never keys)."""
    data = _read_yaml(folder / "keys.yaml") or {}
    return [_key_record(entry, folder.name, folder / "keys.yaml") for entry in data.get("keys") or []]


def _find_entry(data: dict[str, Any], key_id: str, folder: Path) -> dict[str, Any]:
    for entry in data["keys"]:
        if str(entry.get("id")) == key_id:
            return dict(entry) if not isinstance(entry, dict) else entry
    raise KeyError(f"{folder / 'keys.yaml'}: no key with id {key_id!r}")


def revoke_key(folder: Path, key_id: str) -> ApiKeyRecord:
    """Mark a key revoked; every service refuses it within its registry's check interval."""
    with _keys_file(folder) as data:
        entry = _find_entry(data, key_id, folder)
        entry["revoked"] = True
        entry["revoked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return _key_record(entry, folder.name, folder / "keys.yaml")


def rotate_key(
    folder: Path, key_id: str, *, grace: timedelta = timedelta(hours=24)
) -> tuple[ApiKeyRecord, str, str]:
    """A new key with the old one's scopes and departments; the old one expires after ``grace``.

    Returns (the old key's record as it now stands, new key id, new key). A zero grace revokes the
    old key at once.
    """
    new_id, new_key = generate_key()
    now = datetime.now(UTC)
    with _keys_file(folder) as data:
        old = _find_entry(data, key_id, folder)
        if old.get("revoked"):
            raise ValueError(f"key {key_id} is revoked; create a new key instead")
        entry: dict[str, Any] = {
            "id": new_id,
            "hash": hash_key(new_key),
            "scopes": list(old.get("scopes") or []),
            "created": now.isoformat(timespec="seconds"),
            "expires": None,
            "revoked": False,
            "description": str(old.get("description") or ""),
        }
        if old.get("departments"):
            entry["departments"] = list(old["departments"])
        data["keys"].append(entry)
        old["replaced_by"] = new_id
        if grace <= timedelta(0):
            old["revoked"] = True
            old["revoked_at"] = now.isoformat(timespec="seconds")
        else:
            current = _parse_time(old.get("expires"), folder / "keys.yaml", "expires")
            until = now + grace
            if current is None or until < current:
                old["expires"] = until.isoformat(timespec="seconds")
    return _key_record(old, folder.name, folder / "keys.yaml"), new_id, new_key


def prepare_dev_tenant(config_dir: Path, data_dir: Path, tenant: str = "demo") -> str:
    """Set up the embedded run's tenants under ``data_dir/tenants`` and return the dev key.

    The tenant folders are copied from ``config_dir`` once; the dev key (every scope of ``demo``)
    lands in ``.data/dev-api-key``, notifier's service key for intake in
    ``.data/service-keys/notifier/<tenant>`` (``contact:read``) and intake's service key for routing
    in ``.data/service-keys/intake/<tenant>`` (``cases:read`` for an access request's case notes,
    ``cases:write`` for the updates it passes on). Each is reused while it still matches a stored
    hash and holds every scope it needs; one that lacks a scope (a ``.data`` made before the scope
    was needed) is revoked and replaced, so an existing embedded run keeps working.
    """
    tenants_dir = data_dir / "tenants"
    tenants_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        target = tenants_dir / source.name
        if not target.exists():
            shutil.copytree(source, target)
    folder = tenants_dir / tenant

    def _reuse_or_create(path: Path, scopes: list[str], description: str) -> str:
        registered = {record.key_id: record for record in list_keys(folder)}
        if path.exists():
            existing = path.read_text(encoding="utf-8").strip()
            record = registered.get(key_id_of(existing) or "")
            if record is not None and record.key_hash == hash_key(existing) and record.state() == "active":
                if set(scopes) <= record.scopes:
                    return existing
                revoke_key(folder, record.key_id)
        _, key = add_key(folder, scopes, description=description)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n", encoding="utf-8")
        path.chmod(0o600)
        return key

    dev_key = _reuse_or_create(data_dir / "dev-api-key", list(ALL_SCOPES), "dev key of the embedded run")
    _reuse_or_create(
        data_dir / "service-keys" / "notifier" / tenant, ["contact:read"], "notifier reads contacts"
    )
    _reuse_or_create(
        data_dir / "service-keys" / "intake" / tenant,
        ["cases:read", "cases:write"],
        "intake reads case notes from and writes updates to routing",
    )
    load_tenant(folder)  # refuse to start the embedded run on a broken folder, with file and line
    return dev_key
