"""``civicsignals-admin`` (issue 10): validate, diff, keys, tenant new and the admin audit log.

The commands run in-process on copies of the demo tenant folder; keys made here are checked with
the same registry and ``authenticate`` every service uses.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from civicsignals.admin.cli import main
from civicsignals.common.auth import authenticate
from civicsignals.common.problems import Problem
from civicsignals.common.tenants import TenantRegistry, hash_key

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "config" / "tenants" / "demo"

pytestmark = pytest.mark.timeout(60)


class Admin:
    def __init__(self, tmp_path: Path) -> None:
        self.tenants = tmp_path / "tenants"
        shutil.copytree(DEMO, self.tenants / "demo")
        self.audit_db = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"

    def __call__(self, *argv: str | Path) -> tuple[int, str]:
        out = io.StringIO()
        code = main(
            [
                "--tenants-dir",
                str(self.tenants),
                "--audit-db",
                self.audit_db,
                "--actor",
                "ticket:OPS-42",
                *map(str, argv),
            ],
            out=out,
        )
        return code, out.getvalue()


@pytest.fixture
def admin(tmp_path: Path) -> Admin:
    return Admin(tmp_path)


def edit_yaml(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def test_the_demo_folder_validates(admin: Admin) -> None:
    code, out = admin("validate", DEMO)
    assert code == 0
    assert out.strip() == f"{DEMO}: valid"


def test_validate_names_the_file_and_line_of_an_unknown_department(admin: Admin, tmp_path: Path) -> None:
    folder = tmp_path / "proposed" / "demo"
    shutil.copytree(DEMO, folder)
    text = (folder / "rules.yaml").read_text(encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "responsible: burgerzaken" in row)
    (folder / "rules.yaml").write_text(
        text.replace("responsible: burgerzaken", "responsible: burgerzaak"), encoding="utf-8"
    )

    code, out = admin("validate", folder)
    assert code == 1
    assert (
        f"rules.yaml line {line}: names department 'burgerzaak', which departments.yaml does not list" in out
    )

    code, out = admin("validate", "--json", folder)
    assert code == 1
    issues = json.loads(out)["tenants"][str(folder)]
    rules = yaml.safe_load((folder / "rules.yaml").read_text(encoding="utf-8"))["rules"]
    index = next(i for i, rule in enumerate(rules) if rule["then"].get("responsible") == "burgerzaak")
    assert {"line": line, "pointer": f"/rules/{index}/then/responsible"}.items() <= issues[0].items()


def test_validate_reports_schema_errors_unknown_files_and_bad_templates(admin: Admin, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)
    (folder / "departments.yml").write_text("departments: []\n", encoding="utf-8")  # a typo in a name
    (folder / "templates").mkdir(exist_ok=True)
    (folder / "templates" / "acknowledgement.nl.txt").write_text(
        "{% block subject %}Hallo {{ x }\n", encoding="utf-8"
    )
    (folder / "templates" / "acknowledgement.fr.txt").write_text("Bonjour\n", encoding="utf-8")
    edit_yaml(
        folder / "keys.yaml",
        lambda d: d.update(keys=[{"id": "abc", "hash": "md5:0", "scopes": ["everything"]}]),
    )
    code, out = admin("validate", folder)
    assert code == 1
    assert "departments.yml: is not a known tenant file" in out
    assert "acknowledgement.nl.txt line 1: template syntax" in out
    assert "acknowledgement.fr.txt: is in language 'fr', which tenant.yaml does not list" in out
    assert "keys.yaml line 3" in out and "/keys/0/hash" in out and "/keys/0/scopes/0" in out


def test_keys_create_list_rotate_revoke(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = admin(
        "keys",
        "create",
        "--tenant",
        "demo",
        "--scope",
        "signals:write,cases:read",
        "--description",
        "portaal",
    )
    assert code == 0
    key = out.strip()
    assert key.startswith("cs_") and "\n" not in key
    key_id = key[3:].split(".")[0]
    stored = (admin.tenants / "demo" / "keys.yaml").read_text(encoding="utf-8")
    assert key not in stored and hash_key(key) in stored

    registry = TenantRegistry(admin.tenants, check_interval_s=0)
    principal = authenticate(registry, f"Bearer {key}")
    assert (principal.tenant, principal.scopes) == ("demo", frozenset({"signals:write", "cases:read"}))

    code, out = admin("keys", "list", "--tenant", "demo")
    assert code == 0 and key_id in out and "active" in out and key not in out
    assert key.split(".")[1] not in out

    code, out = admin("keys", "rotate", key_id, "--grace-hours", "1")
    assert code == 0
    new_key = out.strip()
    assert new_key != key and new_key.startswith("cs_")
    assert "stays valid until" in capsys.readouterr().err
    assert authenticate(registry, f"Bearer {new_key}").scopes == principal.scopes
    assert authenticate(registry, f"Bearer {key}").tenant == "demo"  # still, during the grace

    code, out = admin("keys", "revoke", key_id)
    assert code == 0
    registry.refresh(force=True)
    with pytest.raises(Problem) as refused:
        authenticate(registry, f"Bearer {key}")
    assert refused.value.detail == "the API key has been revoked"

    listed = json.loads(admin("keys", "list", "--tenant", "demo", "--json")[1])
    states = {entry["id"]: entry["state"] for entry in listed}
    assert states[key_id] == "revoked"

    code, _ = admin("keys", "revoke", "0000000000000000")
    assert code == 2
    code, _ = admin("keys", "create", "--tenant", "demo", "--scope", "signals:delete")
    assert code == 2

    code, out = admin("audit", "--tenant", "demo", "--json")
    rows = json.loads(out)
    assert [(r["action"], r["result"]) for r in rows] == [
        ("key.create", "refused"),
        ("key.revoke", "ok"),
        ("key.rotate", "ok"),
        ("key.create", "ok"),
    ]
    assert {r["actor"] for r in rows} == {"ticket:OPS-42"}
    assert rows[1]["object"] == f"key:{key_id}"
    assert key not in out and new_key not in out


def test_tenant_new_creates_a_folder_that_validates(admin: Admin) -> None:
    code, out = admin("tenant", "new", "gouda", "--name", "Gemeente Gouda")
    assert code == 0
    assert (admin.tenants / "gouda" / "tenant.yaml").exists()
    assert admin("validate", admin.tenants / "gouda") == (0, f"{admin.tenants / 'gouda'}: valid\n")
    assert TenantRegistry(admin.tenants).get("gouda") is not None

    assert admin("tenant", "new", "gouda", "--name", "again")[0] == 2
    assert admin("tenant", "new", "Gouda Stad", "--name", "x")[0] == 2

    admin("keys", "create", "--tenant", "demo", "--scope", "admin")
    code, _ = admin("tenant", "new", "alphen", "--name", "Alphen", "--from", admin.tenants / "demo")
    assert code == 0
    copied = yaml.safe_load((admin.tenants / "alphen" / "keys.yaml").read_text(encoding="utf-8"))
    assert copied["keys"] == []  # another tenant's keys never come along
    assert (
        yaml.safe_load((admin.tenants / "alphen" / "tenant.yaml").read_text(encoding="utf-8"))["name"]
        == "Alphen"
    )
    code, out = admin("validate", admin.tenants)
    assert code == 0, out


def test_validate_finds_a_key_id_used_by_two_tenants(admin: Admin) -> None:
    admin("keys", "create", "--tenant", "demo", "--scope", "admin")
    shutil.copytree(admin.tenants / "demo", admin.tenants / "copy")
    code, out = admin("validate", admin.tenants)
    assert code == 1
    assert "is also used by another tenant" in out


def test_diff_shows_changes_and_signals_that_would_route_elsewhere(admin: Admin, tmp_path: Path) -> None:
    proposed = tmp_path / "proposed" / "demo"
    shutil.copytree(admin.tenants / "demo", proposed)

    def change_rules(rules: dict[str, Any]) -> None:
        for rule in rules["rules"]:
            if rule["id"] == "belastingen":
                rule["then"]["responsible"] = "burgerzaken"
        rules["rules"] = [r for r in rules["rules"] if r["id"] != "wonen"]
        rules["rules"].insert(
            0,
            {
                "id": "wonen-eerst",
                "when": {"topic": ["wonen"], "kind": ["complaint"]},
                "then": {"responsible": "dienstverlening"},
            },
        )

    edit_yaml(proposed / "rules.yaml", change_rules)
    edit_yaml(
        proposed / "departments.yaml",
        lambda d: d.update(departments=[x for x in d["departments"] if x["code"] != "belastingen"]),
    )

    code, out = admin("diff", proposed, "--json")
    assert code == 0, out
    report = json.loads(out)
    changes = {(c["what"], c["change"], c["name"]) for c in report["changes"]}
    assert {
        ("department", "removed", "belastingen"),
        ("rule", "added", "wonen-eerst"),
        ("rule", "removed", "wonen"),
        ("rule", "changed", "belastingen"),
    } <= changes
    assert report["sample_size"] > 0
    moved = {
        (r["signal"]["topic"], r["signal"]["kind"], r["before"]["responsible"], r["after"]["responsible"])
        for r in report["rerouted"]
    }
    assert ("belastingen", "report", "belastingen", "burgerzaken") in moved
    assert ("wonen", "complaint", "wonen", "dienstverlening") in moved
    # a wonen question matched no other rule once 'wonen' was removed: it falls through to 'overig'
    assert ("wonen", "question", "wonen", "klantcontactcentrum") in moved
    assert not any(topic == "afval" for topic, *_ in moved)

    code, out = admin("diff", proposed)
    assert code == 0
    assert "department removed: belastingen" in out and "would go elsewhere" in out

    sample = tmp_path / "sample.jsonl"
    sample.write_text('{"topic": "afval"}\n{"topic": "belastingen", "kind": "question"}\n', encoding="utf-8")
    report = json.loads(admin("diff", proposed, "--sample", sample, "--json")[1])
    assert report["sample_size"] == 2
    assert [r["signal"]["topic"] for r in report["rerouted"]] == ["belastingen"]


def test_diff_refuses_a_folder_that_does_not_validate(admin: Admin, tmp_path: Path) -> None:
    proposed = tmp_path / "proposed" / "demo"
    shutil.copytree(admin.tenants / "demo", proposed)
    edit_yaml(proposed / "tenant.yaml", lambda d: d.update(languages="nl"))
    code, out = admin("diff", proposed)
    assert code == 1
    assert "does not validate" in out
    assert admin("diff", admin.tenants / "demo")[0] == 2  # the folder in force against itself


def test_the_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "civicsignals.admin", "validate", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
