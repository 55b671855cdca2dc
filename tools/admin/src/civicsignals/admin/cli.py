"""``civicsignals-admin``: tenant folders and API keys, from the command line.

```
civicsignals-admin validate DIR                  every file, every cross-reference; exit 1 on a problem
civicsignals-admin diff DIR [--current DIR]      what a changed folder would do, with a routed sample
civicsignals-admin keys create --tenant T --scope S [--scope S] [--expires-in-days N] [--department D]
civicsignals-admin keys list --tenant T
civicsignals-admin keys rotate KEY_ID [--grace-hours H]
civicsignals-admin keys revoke KEY_ID
civicsignals-admin tenant new CODE --name NAME [--languages nl,en] [--from DIR]
civicsignals-admin audit [--tenant T] [--action A]
```

A new key is printed once, on standard output, and never again: only its hash is stored. Every
change (key created, rotated, revoked; tenant created) is written to the admin audit log with the
actor (``--actor``, default ``cli:uid-<uid>``), the object and the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from civicsignals.admin import diff as diff_module
from civicsignals.admin.validate import validate
from civicsignals.common.events import check_code
from civicsignals.common.tenant_schemas import check_folder
from civicsignals.common.tenants import (
    ALL_SCOPES,
    KEYS_HEADER,
    TenantConfigError,
    add_key,
    list_keys,
    revoke_key,
    rotate_key,
)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class AdminError(Exception):
    """A refusal the operator can act on: printed as one line, exit status 2."""


# -- the admin audit log ---------------------------------------------------------------------------


def default_audit_db(tenants_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(tenants_dir.parent / 'db' / 'admin.db').resolve()}"


async def _write_audit(url: str, entry: dict[str, Any]) -> None:
    from civicsignals.common.audit import AuditRecord, record
    from civicsignals.common.db import create_engine, session_factory

    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: AuditRecord.__table__.create(sync, checkfirst=True))  # type: ignore[attr-defined]
        async with session_factory(engine)() as session, session.begin():
            record(session, service="admin", **entry)
    finally:
        await engine.dispose()


async def _read_audit(url: str, tenant: str | None, action: str | None, limit: int) -> list[dict[str, Any]]:
    from sqlmodel import col, select

    from civicsignals.common.audit import AuditRecord
    from civicsignals.common.db import create_engine, session_factory

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: AuditRecord.__table__.create(sync, checkfirst=True))  # type: ignore[attr-defined]
        statement = select(AuditRecord).order_by(col(AuditRecord.id).desc()).limit(limit)
        if tenant:
            statement = statement.where(col(AuditRecord.tenant) == tenant)
        if action:
            statement = statement.where(col(AuditRecord.action) == action)
        async with session_factory(engine)() as session:
            rows = (await session.exec(statement)).all()
        return [row.model_dump(mode="json") for row in rows]
    finally:
        await engine.dispose()


class Admin:
    """The context of one command: where tenants live, who acts, where actions are recorded."""

    def __init__(self, tenants_dir: Path, actor: str, audit_db: str) -> None:
        self.tenants_dir = tenants_dir
        self.actor = actor
        self.audit_db = audit_db

    def audit(self, tenant: str, action: str, obj: str, result: str, detail: str | None = None) -> None:
        entry = {
            "tenant": tenant,
            "actor": self.actor,
            "action": action,
            "object": obj,
            "result": result,
            "detail": detail,
        }
        asyncio.run(_write_audit(self.audit_db, entry))

    def folder(self, tenant: str) -> Path:
        check_code(tenant, "tenant")
        folder = self.tenants_dir / tenant
        if not (folder / "tenant.yaml").exists():
            raise AdminError(f"no tenant {tenant!r} in {self.tenants_dir}")
        return folder

    def tenant_of_key(self, key_id: str, tenant: str | None) -> Path:
        if tenant:
            return self.folder(tenant)
        if self.tenants_dir.is_dir():
            for folder in sorted(p for p in self.tenants_dir.iterdir() if p.is_dir()):
                if any(record.key_id == key_id for record in list_keys(folder)):
                    return folder
        raise AdminError(f"no tenant in {self.tenants_dir} has a key with id {key_id!r}")


# -- commands --------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, out: Any) -> int:
    results = validate(args.directory)
    problems = sum(len(issues) for issues in results.values())
    if args.json:
        payload = {
            str(folder): [
                {"file": str(i.file), "line": i.line, "pointer": i.pointer, "message": i.message}
                for i in issues
            ]
            for folder, issues in results.items()
        }
        out.write(json.dumps({"ok": problems == 0, "tenants": payload}, indent=2) + "\n")
    else:
        for folder, issues in results.items():
            if issues:
                out.write(f"{folder}: {len(issues)} problem(s)\n")
                for issue in issues:
                    out.write(f"  {issue}\n")
            else:
                out.write(f"{folder}: valid\n")
    return EXIT_OK if problems == 0 else EXIT_INVALID


def cmd_diff(args: argparse.Namespace, out: Any) -> int:
    proposed: Path = args.directory
    current: Path = args.current or (args.tenants_dir / proposed.name)
    if current.resolve() == proposed.resolve():
        raise AdminError(f"{proposed} is the folder in force; give the changed copy, or --current")
    sample = diff_module.read_sample(args.sample) if args.sample else None
    report = diff_module.diff(current, proposed, sample)
    if args.json:
        out.write(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    else:
        out.write(f"{report.current or '(new tenant)'} -> {report.proposed}\n")
        for change in report.changes:
            out.write(f"  {change}\n")
        if not report.changes:
            out.write("  no changes to files\n")
        if report.sample_size:
            out.write(
                f"routed {report.sample_size} sample signals: {len(report.rerouted)} would go elsewhere\n"
            )
            groups: dict[tuple[str, str], list[str]] = {}
            for moved in report.rerouted:
                outcome = (diff_module.outcome(moved.before), diff_module.outcome(moved.after))
                topic = str(moved.signal.get("topic"))
                groups.setdefault(outcome, [])
                if topic not in groups[outcome]:
                    groups[outcome].append(topic)
            for (before, after), topics in groups.items():
                count = sum(
                    1
                    for m in report.rerouted
                    if (diff_module.outcome(m.before), diff_module.outcome(m.after)) == (before, after)
                )
                out.write(f"  {count} signal(s) on {', '.join(topics)}:\n    {before}\n -> {after}\n")
        for note in report.notes:
            out.write(f"note: {note}\n")
    return EXIT_INVALID if any("does not validate" in n for n in report.notes) else EXIT_OK


def _scopes(values: list[str]) -> list[str]:
    scopes = sorted({s.strip() for value in values for s in value.split(",") if s.strip()})
    if not scopes:
        raise AdminError("give at least one --scope")
    return scopes


def cmd_keys_create(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    folder = admin.folder(args.tenant)
    scopes = _scopes(args.scope)
    expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    try:
        key_id, key = add_key(
            folder, scopes, description=args.description, expires=expires, departments=args.department
        )
    except ValueError as exc:
        admin.audit(args.tenant, "key.create", "key:-", "refused", str(exc)[:200])
        raise AdminError(str(exc)) from exc
    admin.audit(args.tenant, "key.create", f"key:{key_id}", "ok", f"scopes {','.join(scopes)}")
    _print_new_key(out, key_id, key, args.tenant, scopes, expires)
    return EXIT_OK


def _print_new_key(
    out: Any, key_id: str, key: str, tenant: str, scopes: list[str], expires: datetime | None
) -> None:
    sys.stderr.write(
        f"created key {key_id} for tenant {tenant}, scopes {', '.join(scopes)}"
        + (f", expires {expires.isoformat(timespec='seconds')}" if expires else "")
        + ".\nThe key is shown once, below; only its hash is stored.\n"
    )
    out.write(key + "\n")


def cmd_keys_list(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    folder = admin.folder(args.tenant)
    records = list_keys(folder)
    if args.json:
        out.write(
            json.dumps(
                [
                    {
                        "id": r.key_id,
                        "scopes": sorted(r.scopes),
                        "departments": sorted(r.departments),
                        "state": r.state(),
                        "created": r.created.isoformat() if r.created else None,
                        "expires": r.expires.isoformat() if r.expires else None,
                        "replaced_by": r.replaced_by,
                        "description": r.description,
                    }
                    for r in records
                ],
                indent=2,
            )
            + "\n"
        )
        return EXIT_OK
    out.write(f"{'id':<16}  {'state':<8}  {'created':<25}  {'expires':<25}  scopes\n")
    for r in records:
        created = r.created.isoformat(timespec="seconds") if r.created else "-"
        expires = r.expires.isoformat(timespec="seconds") if r.expires else "-"
        out.write(
            f"{r.key_id:<16}  {r.state():<8}  {created:<25}  {expires:<25}  {','.join(sorted(r.scopes))}"
        )
        out.write(f"  {r.description}\n" if r.description else "\n")
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    folder = admin.tenant_of_key(args.key_id, args.tenant)
    try:
        old, new_id, new_key = rotate_key(folder, args.key_id, grace=timedelta(hours=args.grace_hours))
    except (KeyError, ValueError) as exc:
        admin.audit(folder.name, "key.rotate", f"key:{args.key_id}", "refused", str(exc)[:200])
        raise AdminError(str(exc).strip("'\"")) from exc
    admin.audit(folder.name, "key.rotate", f"key:{args.key_id}", "ok", f"replaced by key {new_id}")
    until = "now" if old.revoked else (old.expires.isoformat(timespec="seconds") if old.expires else "-")
    sys.stderr.write(f"key {args.key_id} stays valid until {until}.\n")
    _print_new_key(out, new_id, new_key, folder.name, sorted(old.scopes), None)
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    folder = admin.tenant_of_key(args.key_id, args.tenant)
    try:
        revoke_key(folder, args.key_id)
    except KeyError as exc:
        admin.audit(folder.name, "key.revoke", f"key:{args.key_id}", "refused", "no such key")
        raise AdminError(str(exc).strip("'\"")) from exc
    admin.audit(folder.name, "key.revoke", f"key:{args.key_id}", "ok")
    out.write(f"revoked key {args.key_id} of tenant {folder.name}; services refuse it within seconds\n")
    return EXIT_OK


def skeleton(code: str, name: str, languages: list[str], triage: str) -> dict[str, str]:
    """The files of a new tenant: valid as they are, to be filled in by the municipality."""
    tenant = {
        "name": name,
        "languages": languages,
        "timezone": "Europe/Amsterdam",
        "retention": {"contact_days_after_close": 90},
    }
    return {
        "tenant.yaml": f"# Settings of {name} (DESIGN §3); see docs/identity.md for every field.\n"
        + yaml.safe_dump(tenant, sort_keys=False, allow_unicode=True),
        "departments.yaml": "# Departments: codes are NATS subject tokens ([a-z0-9-]).\n"
        + yaml.safe_dump(
            {"departments": [{"code": triage, "name": "Klantcontactcentrum (triage)"}]}, sort_keys=False
        ),
        "partners.yaml": "# Partner organisations signals may be forwarded to.\npartners: []\n",
        "rules.yaml": "# Routing rules, evaluated in order; the first that matches decides.\n"
        + yaml.safe_dump(
            {
                "version": 1,
                "triage": {"responsible": triage, "priority": "normal", "sla_days": 2},
                "rules": [
                    {
                        "id": "overig",
                        "when": {},
                        "then": {"responsible": triage, "priority": "normal", "sla_days": 5},
                    }
                ],
            },
            sort_keys=False,
        ),
        "keys.yaml": KEYS_HEADER + "keys: []\n",
    }


def cmd_tenant_new(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    code = args.code
    try:
        check_code(code, "tenant")
    except ValueError as exc:
        raise AdminError(str(exc)) from exc
    folder = admin.tenants_dir / code
    if folder.exists():
        admin.audit(code, "tenant.create", f"tenant:{code}", "refused", "the folder exists")
        raise AdminError(f"{folder} exists already")
    # Built beside the others under a hidden folder (services skip those), then moved in one rename.
    staging = admin.tenants_dir / ".staging" / code
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    if args.copy_from:
        shutil.copytree(args.copy_from, staging, ignore=shutil.ignore_patterns("keys.yaml", ".*"))
        settings_path = staging / "tenant.yaml"
        settings = yaml.safe_load(settings_path.read_text(encoding="utf-8")) or {}
        settings["name"] = args.name
        settings.pop("oidc", None)  # another municipality's provider is never ours
        settings_path.write_text(
            yaml.safe_dump(settings, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        (staging / "keys.yaml").write_text(KEYS_HEADER + "keys: []\n", encoding="utf-8")
    else:
        staging.mkdir(parents=True)
        languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
        for name, text in skeleton(code, args.name, languages, args.triage_department).items():
            (staging / name).write_text(text, encoding="utf-8")
    report = check_folder(staging)
    if not report.ok:
        shutil.rmtree(staging, ignore_errors=True)
        admin.audit(code, "tenant.create", f"tenant:{code}", "refused", "the new folder does not validate")
        raise AdminError("the new folder does not validate: " + "; ".join(str(i) for i in report.issues[:3]))
    staging.rename(folder)
    admin.audit(code, "tenant.create", f"tenant:{code}", "ok")
    out.write(
        f"created {folder}\nnext: civicsignals-admin keys create --tenant {code} --scope signals:write\n"
    )
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, out: Any, admin: Admin) -> int:
    rows = asyncio.run(_read_audit(admin.audit_db, args.tenant, args.action, args.limit))
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        for row in rows:
            out.write(
                f"{row['at']}  {row['tenant']:<12} {row['actor']:<20} {row['action']:<14} {row['object']:<24} {row['result']}"
                + (f"  {row['detail']}" if row.get("detail") else "")
                + "\n"
            )
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="civicsignals-admin", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tenants-dir",
        type=Path,
        default=Path(env.get("CIVIC_TENANTS_DIR", ".data/tenants")),
        help="the folder holding every tenant folder (env CIVIC_TENANTS_DIR; default .data/tenants)",
    )
    parser.add_argument(
        "--actor",
        default=env.get("CIVIC_ADMIN_ACTOR") or f"cli:uid-{os.getuid()}",
        help="who acts, for the audit log",
    )
    parser.add_argument(
        "--audit-db",
        default=env.get("CIVIC_ADMIN_AUDIT_DB", ""),
        help="SQLAlchemy URL of the admin audit log",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "validate", help="check every file of a tenant folder (or of every folder in DIR)"
    )
    p.add_argument("directory", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_validate, needs_admin=False)

    p = commands.add_parser("diff", help="what a changed tenant folder would do, with a routed sample")
    p.add_argument("directory", type=Path, help="the changed folder")
    p.add_argument("--current", type=Path, help="the folder in force (default: <tenants-dir>/<name of DIR>)")
    p.add_argument(
        "--sample", type=Path, help="signals to route: JSON Lines or a JSON array of {topic, kind, channel …}"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_diff, needs_admin=False)

    keys = commands.add_parser("keys", help="create, list, rotate and revoke API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="a new key; printed once")
    p.add_argument("--tenant", required=True)
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        help=f"repeat or comma-separate: {', '.join(ALL_SCOPES)}, partner:<code>",
    )
    p.add_argument(
        "--department", action="append", default=None, help="bind the key to departments (default: all)"
    )
    p.add_argument("--expires-in-days", type=float, default=None)
    p.add_argument("--description", default="")
    p.set_defaults(handler=cmd_keys_create, needs_admin=True)
    p = keys.add_parser("list", help="the keys of a tenant (ids and hashes' metadata, never keys)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_keys_list, needs_admin=True)
    p = keys.add_parser(
        "rotate", help="a new key with the same scopes; the old one expires after a grace period"
    )
    p.add_argument("key_id")
    p.add_argument("--tenant")
    p.add_argument(
        "--grace-hours", type=float, default=24.0, help="how long the old key keeps working (0: revoke now)"
    )
    p.set_defaults(handler=cmd_keys_rotate, needs_admin=True)
    p = keys.add_parser("revoke", help="revoke a key; services refuse it within seconds")
    p.add_argument("key_id")
    p.add_argument("--tenant")
    p.set_defaults(handler=cmd_keys_revoke, needs_admin=True)

    tenant = commands.add_parser("tenant", help="tenant folders").add_subparsers(
        dest="tenant_command", required=True
    )
    p = tenant.add_parser("new", help="create a tenant folder that validates")
    p.add_argument("code", help="lowercase letters, digits and dashes (a NATS subject token)")
    p.add_argument("--name", required=True)
    p.add_argument("--languages", default="nl,en")
    p.add_argument("--triage-department", default="klantcontactcentrum")
    p.add_argument(
        "--from",
        dest="copy_from",
        type=Path,
        help="copy another tenant's folder (without its keys and OIDC provider)",
    )
    p.set_defaults(handler=cmd_tenant_new, needs_admin=True)

    p = commands.add_parser("audit", help="the admin audit log")
    p.add_argument("--tenant")
    p.add_argument("--action")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit, needs_admin=True)
    return parser


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.needs_admin:
            admin = Admin(args.tenants_dir, args.actor, args.audit_db or default_audit_db(args.tenants_dir))
            return int(args.handler(args, out, admin))
        return int(args.handler(args, out))
    except (AdminError, TenantConfigError, ValueError) as exc:
        sys.stderr.write(f"civicsignals-admin: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
