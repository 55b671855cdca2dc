"""Tenant folders (DESIGN §3): loading, keys, and keeping the last good version."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from civicsignals.common.tenants import TenantRegistry, key_id_of


def _touch_later(path: Path) -> None:
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_registry_reads_tenants_departments_and_keys(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", ["signals:write"], name="Gemeente Gouda", departments=["wegen", "groen"])
    registry = TenantRegistry(gouda.tenants_dir)

    assert registry.codes() == ["gouda"]
    tenant = registry.get("gouda")
    assert tenant is not None
    assert tenant.name == "Gemeente Gouda"
    assert sorted(tenant.departments) == ["groen", "wegen"]
    record = registry.find_key(gouda.key_id)
    assert record is not None
    assert record.tenant == "gouda"
    assert record.scopes == frozenset({"signals:write"})
    assert key_id_of(gouda.key) == gouda.key_id


def test_a_broken_file_keeps_the_last_good_version(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", departments=["wegen"])
    registry = TenantRegistry(gouda.tenants_dir, check_interval_s=0)
    departments = gouda.folder / "departments.yaml"

    departments.write_text("departments:\n  - code: wegen\n  - code: [unclosed\n", encoding="utf-8")
    _touch_later(departments)
    registry.refresh(force=True)

    tenant = registry.get("gouda")
    assert tenant is not None and list(tenant.departments) == ["wegen"]
    error = registry.errors["gouda"]
    assert "departments.yaml" in error and "line" in error

    departments.write_text("departments:\n  - code: wegen\n  - code: groen\n", encoding="utf-8")
    _touch_later(departments)
    registry.refresh(force=True)
    tenant = registry.get("gouda")
    assert tenant is not None and sorted(tenant.departments) == ["groen", "wegen"]
    assert "gouda" not in registry.errors


def test_an_invalid_department_code_is_refused_with_the_file(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", departments=["Wegen en Verkeer"])
    registry = TenantRegistry(gouda.tenants_dir)
    assert registry.get("gouda") is None
    assert "departments.yaml" in registry.errors["gouda"]


def test_a_removed_tenant_disappears(make_tenant: Any) -> None:
    gouda = make_tenant("gouda")
    other = make_tenant("bodegraven")
    registry = TenantRegistry(gouda.tenants_dir, check_interval_s=0)
    assert registry.codes() == ["bodegraven", "gouda"]

    for path in other.folder.iterdir():
        path.unlink()
    other.folder.rmdir()

    assert registry.codes() == ["gouda"]
    assert registry.find_key(other.key_id) is None


# -- schemas, lines, reloads, keys (issue 10) ------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]


def test_the_demo_tenant_folder_validates() -> None:
    from civicsignals.common.tenant_schemas import check_folder

    report = check_folder(REPO / "config" / "tenants" / "demo", strict=True)
    assert report.issues == []
    assert "tenant.yaml" in report.documents and "rules.yaml" in report.documents


def test_every_schema_is_a_valid_json_schema() -> None:
    from jsonschema import Draft202012Validator

    from civicsignals.common.tenant_schemas import TENANT_FILES, schema

    for kind in TENANT_FILES.values():
        Draft202012Validator.check_schema(schema(kind))


def test_a_schema_error_names_the_file_the_line_and_the_pointer(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", departments=["wegen"])
    (gouda.folder / "tenant.yaml").write_text(
        "name: Gouda\nlanguages: [nl]\nbounding_box:\n  min_lat: 52.0\n  min_lon: 4.6\n  max_lat: 95\n  max_lon: 4.8\n",
        encoding="utf-8",
    )
    registry = TenantRegistry(gouda.tenants_dir)
    assert registry.get("gouda") is None
    error = registry.errors["gouda"]
    assert "tenant.yaml line 6" in error
    assert "/bounding_box/max_lat" in error
    [issue] = registry.issues["gouda"]
    assert (issue.line, issue.pointer) == (6, "/bounding_box/max_lat")


def test_the_reopening_window_is_whole_days_or_null(make_tenant: Any) -> None:
    from civicsignals.common.wording import DEFAULT_REOPEN_WITHIN_DAYS, reopen_within_days

    gouda = make_tenant("gouda", departments=["wegen"])
    tenant_yaml = gouda.folder / "tenant.yaml"
    assert (
        reopen_within_days(TenantRegistry(gouda.tenants_dir).get("gouda")) == DEFAULT_REOPEN_WITHIN_DAYS == 30
    )
    tenant_yaml.write_text("name: Gouda\nresidents:\n  reopen_within_days: 14\n", encoding="utf-8")
    assert reopen_within_days(TenantRegistry(gouda.tenants_dir).get("gouda")) == 14
    tenant_yaml.write_text("name: Gouda\nresidents:\n  reopen_within_days: null\n", encoding="utf-8")
    lifted = TenantRegistry(gouda.tenants_dir).get("gouda")
    assert lifted is not None and reopen_within_days(lifted) is None
    assert reopen_within_days(None) == 30
    tenant_yaml.write_text("name: Gouda\nresidents:\n  reopen_within_days: two weeks\n", encoding="utf-8")
    registry = TenantRegistry(gouda.tenants_dir)
    assert registry.get("gouda") is None
    [issue] = registry.issues["gouda"]
    assert (issue.line, issue.pointer) == (3, "/residents/reopen_within_days")


def test_a_rule_naming_an_unknown_department_is_refused_with_its_line(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", departments=["wegen", "kcc"])
    (gouda.folder / "rules.yaml").write_text(
        "triage: {responsible: kcc}\nrules:\n  - id: a\n    when: {topic: [x]}\n    then:\n      responsible: riolering\n",
        encoding="utf-8",
    )
    registry = TenantRegistry(gouda.tenants_dir)
    assert registry.get("gouda") is None
    assert "rules.yaml line 6" in registry.errors["gouda"]
    assert "riolering" in registry.errors["gouda"]


def test_a_refused_change_keeps_the_last_good_version_and_listeners_hear_of_it(make_tenant: Any) -> None:
    from civicsignals.common.tenants import ReloadEvent

    gouda = make_tenant("gouda", departments=["wegen"])
    registry = TenantRegistry(gouda.tenants_dir, check_interval_s=0)
    events: list[ReloadEvent] = []
    registry.add_listener(events.append)
    settings = gouda.folder / "tenant.yaml"

    settings.write_text("name: Gouda\nlanguages: dutch\n", encoding="utf-8")
    _touch_later(settings)
    tenant = registry.get("gouda")
    assert tenant is not None and tenant.settings["languages"] == ["nl", "en"]
    assert [(e.tenant, e.result) for e in events] == [("gouda", "refused")]
    assert "tenant.yaml line 2" in events[0].detail

    settings.write_text("name: Gouda\nlanguages: [nl]\n", encoding="utf-8")
    _touch_later(settings)
    tenant = registry.get("gouda")
    assert tenant is not None and tenant.settings["languages"] == ["nl"]
    assert [(e.tenant, e.result) for e in events] == [("gouda", "refused"), ("gouda", "ok")]
    assert "tenant.yaml" in events[1].detail


def test_a_revoked_key_is_refused_once_the_check_interval_has_passed(make_tenant: Any) -> None:
    """Revocation is effective within ``check_interval_s`` (2 s) in every process, without a restart."""
    from civicsignals.common.tenants import revoke_key

    now = [1000.0]
    gouda = make_tenant("gouda")
    registry = TenantRegistry(gouda.tenants_dir, clock=lambda: now[0])
    assert registry.check_interval_s == 2.0
    record = registry.find_key(gouda.key_id)
    assert record is not None and not record.revoked

    revoke_key(gouda.folder, gouda.key_id)
    _touch_later(gouda.folder / "keys.yaml")
    now[0] += 1.0  # within the interval the cached record still answers
    record = registry.find_key(gouda.key_id)
    assert record is not None and not record.revoked
    now[0] += 1.0  # two seconds after the last check the file is looked at again
    record = registry.find_key(gouda.key_id)
    assert record is not None and record.revoked and record.state() == "revoked"


def test_rotate_keeps_scopes_and_lets_the_old_key_expire_after_the_grace(make_tenant: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from civicsignals.common.tenants import add_key, hash_key, list_keys, rotate_key

    gouda = make_tenant("gouda", ["cases:read"], departments=["wegen"])
    key_id, _ = add_key(
        gouda.folder, ["cases:read", "cases:write"], departments=["wegen"], description="dept"
    )
    old, new_id, new_key = rotate_key(gouda.folder, key_id, grace=timedelta(hours=2))

    assert old.replaced_by == new_id and not old.revoked
    assert old.expires is not None
    assert timedelta(hours=1, minutes=59) < old.expires - datetime.now(UTC) <= timedelta(hours=2)
    records = {r.key_id: r for r in list_keys(gouda.folder)}
    assert records[new_id].scopes == frozenset({"cases:read", "cases:write"})
    assert records[new_id].departments == frozenset({"wegen"})
    assert records[new_id].key_hash == hash_key(new_key)
    assert new_key not in (gouda.folder / "keys.yaml").read_text(encoding="utf-8")

    now_revoked, _, _ = rotate_key(gouda.folder, new_id, grace=timedelta(0))
    assert now_revoked.revoked


def test_add_key_refuses_unknown_scopes(make_tenant: Any) -> None:
    import pytest

    from civicsignals.common.tenants import add_key

    gouda = make_tenant("gouda")
    with pytest.raises(ValueError, match="unknown scope"):
        add_key(gouda.folder, ["signals:delete"])
    assert add_key(gouda.folder, ["partner:woonpartners"])[0]


def test_prepare_dev_tenant_writes_the_service_keys(tmp_path: Path) -> None:
    from civicsignals.common.tenants import list_keys, prepare_dev_tenant

    data = tmp_path / "data"
    dev_key = prepare_dev_tenant(REPO / "config" / "tenants", data)
    intake_key = (data / "service-keys" / "intake" / "demo").read_text(encoding="utf-8").strip()
    notifier_key = (data / "service-keys" / "notifier" / "demo").read_text(encoding="utf-8").strip()
    registry = TenantRegistry(data / "tenants")
    scopes = {
        key: registry.find_key(key_id_of(key) or "").scopes  # type: ignore[union-attr]
        for key in (dev_key, intake_key, notifier_key)
    }
    assert scopes[intake_key] == frozenset({"cases:read", "cases:write"})
    assert scopes[notifier_key] == frozenset({"contact:read"})
    assert "audit:read" in scopes[dev_key]
    # a second run reuses every key
    assert prepare_dev_tenant(REPO / "config" / "tenants", data) == dev_key
    assert len(list_keys(data / "tenants" / "demo")) == 3
