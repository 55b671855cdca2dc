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
