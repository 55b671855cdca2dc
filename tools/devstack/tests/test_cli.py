"""The dev runner's configuration: one service table, one env mapping, one banner."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from civicsignals.devstack import cli
from civicsignals.devstack.gateway import Gateway


def test_service_table() -> None:
    assert [(s.name, s.port) for s in cli.SERVICES] == [
        ("intake", 8001),
        ("classifier", 8002),
        ("routing", 8003),
        ("notifier", 8004),
        ("insights", 8005),
    ]
    gateway = Gateway(cli.gateway_routes())
    for spec in cli.SERVICES:
        for prefix in spec.prefixes:
            route = gateway.resolve(prefix + "/x")
            assert route is not None and route.upstream == spec.base_url
    route = gateway.resolve("/open311/v2/requests.json")
    assert route is not None and route.upstream == "http://127.0.0.1:8001"


def test_service_env_for_notifier(tmp_path: Path) -> None:
    data = tmp_path / ".data"
    env = cli.service_env("notifier", data_dir=data, nats_url="nats://127.0.0.1:4333", smtp_port=1025)
    assert env == {
        "CIVIC_NOTIFIER_PORT": "8004",
        "CIVIC_NOTIFIER_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'db' / 'notifier.db'}",
        "CIVIC_NOTIFIER_NATS_URL": "nats://127.0.0.1:4333",
        "CIVIC_NOTIFIER_TENANTS_DIR": str(data / "tenants"),
        "CIVIC_NOTIFIER_DATA_DIR": str(data),
        "CIVIC_NOTIFIER_SMTP_HOST": "127.0.0.1",
        "CIVIC_NOTIFIER_SMTP_PORT": "1025",
        "CIVIC_NOTIFIER_INTAKE_URL": "http://127.0.0.1:8001",
        "CIVIC_NOTIFIER_ALLOW_PRIVATE_ENDPOINTS": "true",
    }


def test_service_env_for_intake_and_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = cli.service_env("intake", data_dir=Path(".data"), nats_url="nats://x:1", smtp_port=1)
    assert env["CIVIC_INTAKE_PUBLIC_BASE_URL"] == "http://127.0.0.1:8000"
    assert env["CIVIC_INTAKE_ROUTING_URL"] == "http://127.0.0.1:8003"
    assert env["CIVIC_INTAKE_NOTIFIER_URL"] == "http://127.0.0.1:8004"
    assert env["CIVIC_INTAKE_DATA_DIR"] == str(tmp_path.resolve() / ".data")  # always absolute
    assert not any("SMTP" in key for key in env)
    classifier = cli.service_env("classifier", data_dir=tmp_path, nats_url="nats://x:1", smtp_port=1)
    assert sorted(classifier) == [
        "CIVIC_CLASSIFIER_DATABASE_URL",
        "CIVIC_CLASSIFIER_DATA_DIR",
        "CIVIC_CLASSIFIER_NATS_URL",
        "CIVIC_CLASSIFIER_PORT",
        "CIVIC_CLASSIFIER_TENANTS_DIR",
    ]
    with pytest.raises(KeyError):
        cli.service_env("nonexistent", data_dir=tmp_path, nats_url="", smtp_port=1)
    assert cli.service_command("routing") == [sys.executable, "-m", "civicsignals.routing", "serve"]


def test_prepare_data_dir(tmp_path: Path) -> None:
    dirs = cli.prepare_data_dir(tmp_path / ".data")
    assert sorted(dirs) == sorted(cli.DATA_SUBDIRS)
    assert all(p.is_dir() and p.is_absolute() for p in dirs.values())


def test_missing_tenant_hook_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "civicsignals.common.tenants", None)  # makes the import fail
    with pytest.raises(cli.DevstackError, match="prepare_dev_tenant"):
        cli.load_prepare_dev_tenant()


def test_run_refuses_a_missing_config_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "--data-dir", str(tmp_path / ".data"), "--config-dir", str(tmp_path / "none")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().out
    assert not (tmp_path / ".data").exists()  # nothing was started or created


def test_banner_has_a_working_curl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = cli.banner(
        data_dir=tmp_path / ".data",
        nats_url="nats://127.0.0.1:4333",
        mail_dir=tmp_path / ".data" / "mail",
        smtp_port=1025,
        logs_dir=tmp_path / ".data" / "logs",
    )
    assert "http://127.0.0.1:8000" in text and "http://127.0.0.1:8004/docs" in text
    assert "nats://127.0.0.1:4333" in text and "/v1/tracking/" in text
    start = text.index("curl -sS -X POST")
    command = text[start : text.index("\n\n", start)].replace("\\\n", " ")
    args = shlex.split(command)
    assert args[args.index("-X") + 1 : args.index("-X") + 3] == ["POST", "http://127.0.0.1:8000/v1/signals"]
    assert "Authorization: Bearer $(cat .data/dev-api-key)" in args
    assert json.loads(args[args.index("-d") + 1]) == cli.SAMPLE_SIGNAL


def test_the_demo_staff_sign_in_through_the_development_provider(tmp_path: Path) -> None:
    """make run points its copy of the demo tenant at the development identity provider; the copy
    still validates, and a provider the developer configured there is left alone."""
    from civicsignals.common.tenant_schemas import check_folder

    folder = tmp_path / "demo"
    shutil.copytree(Path(__file__).resolve().parents[3] / "config" / "tenants" / "demo", folder)
    cli.let_demo_staff_sign_in(folder, "http://127.0.0.1:8009")
    block = yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))["oidc"]
    assert block["web_client_id"] == cli.DEV_WEB_CLIENT and block["issuer"] == "http://127.0.0.1:8009"
    assert block["group_scopes"] == {cli.DEV_STAFF_GROUP: cli.DEV_STAFF_SCOPES}
    report = check_folder(folder)
    assert not report.issues, report.issues

    cli.let_demo_staff_sign_in(folder, "http://127.0.0.1:9999")  # the next run's port
    assert yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))["oidc"]["issuer"].endswith(
        ":9999"
    )
    settings = yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))
    settings["oidc"] = {"issuer": "https://login.example.nl", "audience": "x", "web_client_id": "own"}
    (folder / "tenant.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    cli.let_demo_staff_sign_in(folder, "http://127.0.0.1:8009")
    assert (
        yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))["oidc"]["web_client_id"] == "own"
    )


def test_the_redirect_uris_cover_both_staff_pages_through_the_entry_point_and_directly() -> None:
    uris = cli.oidc_redirect_uris()
    assert "http://127.0.0.1:8000/dashboard/login/oidc/callback" in uris
    assert "http://127.0.0.1:8005/dashboard/login/oidc/callback" in uris
    assert "http://127.0.0.1:8000/privacy/login/oidc/callback" in uris
    assert "http://127.0.0.1:8001/privacy/login/oidc/callback" in uris
    assert len(uris) == 4


def test_the_login_pages_are_where_the_provider_may_send_staff_after_signing_out() -> None:
    assert sorted(cli.oidc_post_logout_uris()) == [
        "http://127.0.0.1:8000/dashboard/login",
        "http://127.0.0.1:8000/privacy/login",
        "http://127.0.0.1:8001/privacy/login",
        "http://127.0.0.1:8005/dashboard/login",
    ]
