"""The Kubernetes deployment checked without a cluster (issue 7).

The chart is rendered offline with the Helm SDK (``helm-python-sdk``: Helm's own Go code as a
shared library in the wheel, so no helm binary and no network), with the default values and with
each file in ``helm/civic-signals/ci/``. The tests assert on the rendered objects, validate them
strictly against a current Kubernetes with ``kubernetes-validate``, lint the YAML, run checkov
once, check the Dockerfiles and run the Tiltfile in a Starlark interpreter (``starlark-pyo3``)
against recording stand-ins for Tilt's functions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "helm"
CHART = HELM / "civic-signals"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
SERVICES = ("intake", "classifier", "routing", "notifier", "insights")
RELEASE = "civic-signals"
NAMESPACE = "civic-signals"
# Kinds that come from operators' CRDs; kubernetes-validate knows only the built-in API.
CUSTOM_KINDS = {
    "Cluster": "postgresql.cnpg.io/v1",
    "ScheduledBackup": "postgresql.cnpg.io/v1",
    "ObjectStore": "barmancloud.cnpg.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}
SECRETISH = re.compile(r"(KEYS?|SECRET|PASSWORD|TOKEN|DATABASE_URL|URI|CREDENTIALS?)$")
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]+:[^/@\s]+@")

Manifest = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_text(chart: helm.Chart, values: dict[str, Any] | None) -> dict[str, str]:
    """Template path -> rendered text, without NOTES.txt (not a manifest)."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return {path: text for path, text in out.items() if not path.endswith("NOTES.txt")}


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[Manifest]:
    docs: list[Manifest] = []
    for text in render_text(chart, values).values():
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def load_values(path: Path | None) -> dict[str, Any] | None:
    return None if path is None else yaml.safe_load(path.read_text())


VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.stem for p in CI_VALUES)]


@pytest.fixture(scope="session", params=VALUE_SETS, ids=VALUE_IDS)
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> list[Manifest]:
    return render(chart, load_values(request.param))


def by_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(doc: Manifest) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def env_of(deployment: Manifest) -> dict[str, Manifest]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container.get("env", [])}


def test_the_ci_values_exist_and_keep_nats_and_postgres_off() -> None:
    assert CI_VALUES, "helm/civic-signals/ci/ holds the CI values files"
    for path in CI_VALUES:
        values = load_values(path) or {}
        assert values["nats"]["enabled"] is False, path
        assert values["postgres"]["enabled"] is False, path


# --- the objects --------------------------------------------------------------------------------


def test_each_service_has_its_deployment_service_and_probes(rendered: list[Manifest]) -> None:
    deployments = {component(d): d for d in by_kind(rendered, "Deployment").values()}
    services = {component(s): s for s in by_kind(rendered, "Service").values()}
    assert set(deployments) == set(SERVICES)
    assert set(services) == set(SERVICES)
    for name in SERVICES:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [f"civicsignals-{name}", "serve"]
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = env_of(deployments[name])
        prefix = f"CIVIC_{name.upper()}_"
        assert env[f"{prefix}HOST"]["value"] == "0.0.0.0"
        assert env[f"{prefix}PORT"]["value"] == "8080"
        # Behind the ingress, the rate limits must count the resident, not the ingress's pod.
        assert env[f"{prefix}FORWARDED_ALLOW_IPS"]["value"] == "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
        # The Service's selector picks exactly this service's pods.
        selector = services[name]["spec"]["selector"]
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert selector["app.kubernetes.io/component"] == name


def test_every_setting_the_chart_passes_is_one_the_service_reads(rendered: list[Manifest]) -> None:
    """A misspelt variable would be ignored silently (the settings ignore unknown names)."""
    import importlib

    for deployment in by_kind(rendered, "Deployment").values():
        name = component(deployment)
        module = importlib.import_module(f"civicsignals.{name}.settings")
        fields = getattr(module, f"{name.capitalize()}Settings").model_fields
        prefix = f"CIVIC_{name.upper()}_"
        passed = [key.removeprefix(prefix).lower() for key in env_of(deployment) if key.startswith(prefix)]
        assert passed and all(key in fields for key in passed), (name, set(passed) - set(fields))
        if name == "notifier":
            assert env_of(deployment)[f"{prefix}SMTP_CONNECTIONS"]["value"] == "8"
        if name == "intake":  # the services intake asks, by their Service in the release's namespace
            for other in ("routing", "notifier"):
                url = env_of(deployment)[f"{prefix}{other.upper()}_URL"]["value"]
                assert url == f"http://{RELEASE}-{other}.{NAMESPACE}.svc", url


def test_notifier_reads_each_tenants_dkim_keys_from_its_own_optional_secret(chart: helm.Chart) -> None:
    """``<CIVIC_NOTIFIER_DKIM_KEYS_DIR>/<tenant>/<selector>.pem``: one Secret per tenant, mounted
    only into notifier, and optional, since a tenant whose relay signs has none."""
    docs = render(chart, {"tenants": [{"code": "gouda", "dkimSecret": "gouda-dkim"}, {"code": "demo"}]})
    for deployment in by_kind(docs, "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        if component(deployment) != "notifier":
            assert not any(name.startswith("dkim-") for name in mounts), component(deployment)
            continue
        assert env_of(deployment)["CIVIC_NOTIFIER_DKIM_KEYS_DIR"]["value"] == "/etc/civic/dkim"
        for code, secret in (("gouda", "gouda-dkim"), ("demo", f"{RELEASE}-tenant-demo-dkim")):
            assert mounts[f"dkim-{code}"] == {
                "name": f"dkim-{code}",
                "mountPath": f"/etc/civic/dkim/{code}",
                "readOnly": True,
            }
            assert volumes[f"dkim-{code}"]["secret"] == {
                "secretName": secret,
                "defaultMode": 0o440,
                "optional": True,
            }


def test_no_pdb_with_one_replica_and_one_with_more(rendered: list[Manifest]) -> None:
    budgets = {component(p) for p in by_kind(rendered, "PodDisruptionBudget").values()}
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(rendered, "HorizontalPodAutoscaler").values()
    }
    for name, deployment in by_kind(rendered, "Deployment").items():
        if name in autoscalers:
            least = autoscalers[name]["spec"]["minReplicas"]
        else:
            least = deployment["spec"]["replicas"]
        assert (component(deployment) in budgets) == (least > 1), name


def test_no_replicas_with_an_autoscaler(rendered: list[Manifest]) -> None:
    deployments = by_kind(rendered, "Deployment")
    for hpa in by_kind(rendered, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert "replicas" not in deployments[target["name"]]["spec"]
    assert all(
        "replicas" in d["spec"]
        for name, d in deployments.items()
        if name
        not in {
            h["spec"]["scaleTargetRef"]["name"] for h in by_kind(rendered, "HorizontalPodAutoscaler").values()
        }
    )


def test_the_production_values_really_scale(chart: helm.Chart) -> None:
    """So that the two tests above see both cases, not only single replicas."""
    docs = render(chart, load_values(CHART / "ci" / "production-values.yaml"))
    assert by_kind(docs, "HorizontalPodAutoscaler")
    assert by_kind(docs, "PodDisruptionBudget")
    assert len(by_kind(docs, "ServiceMonitor")) == len(SERVICES)


def test_security_context_everywhere(rendered: list[Manifest]) -> None:
    specs = list(pod_specs(rendered))
    assert specs
    for where, spec in specs:
        assert spec["automountServiceAccountToken"] is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["privileged"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root needs somewhere to write: /data and /tmp.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts, where
    for account in by_kind(rendered, "ServiceAccount").values():
        assert account["automountServiceAccountToken"] is False


def test_no_secret_in_plain_env(rendered: list[Manifest]) -> None:
    for where, spec in pod_specs(rendered):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if "value" in env:
                    assert not SECRETISH.search(env["name"]), f"{where}: {env['name']} has a plain value"
                    assert not CREDENTIALS_IN_URL.search(str(env["value"])), f"{where}: {env['name']}"
                else:
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, f"{where}: {env['name']}"


def test_database_uris_come_from_the_cloudnativepg_secrets(chart: helm.Chart) -> None:
    docs = render(chart)
    clusters = by_kind(docs, "Cluster")
    for deployment in by_kind(docs, "Deployment").values():
        name = component(deployment)
        ref = env_of(deployment)[f"CIVIC_{name.upper()}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        cluster = f"{RELEASE}-{name}-db"
        assert ref == {"name": f"{cluster}-app", "key": "uri"}
        assert clusters[cluster]["apiVersion"] == "postgresql.cnpg.io/v1"
        assert clusters[cluster]["spec"]["bootstrap"]["initdb"] == {"database": name, "owner": name}
        # The Job migrates, so the replicas never race on creating tables.
        assert env_of(deployment)[f"CIVIC_{name.upper()}_MIGRATE_ON_START"]["value"] == "false"


def test_without_postgres_each_service_keeps_sqlite_and_migrates_itself(chart: helm.Chart) -> None:
    docs = render(chart, load_values(CHART / "ci" / "minimal-values.yaml"))
    assert not by_kind(docs, "Job")
    for deployment in by_kind(docs, "Deployment").values():
        name = component(deployment)
        env = env_of(deployment)
        assert f"CIVIC_{name.upper()}_DATABASE_URL" not in env
        assert env[f"CIVIC_{name.upper()}_MIGRATE_ON_START"]["value"] == "true"


def test_sqlite_refuses_more_than_one_replica(chart: helm.Chart) -> None:
    values = load_values(CHART / "ci" / "minimal-values.yaml") or {}
    values["routing"] = {"replicas": 2}
    with pytest.raises(helm.HelmRenderError, match="more than one replica needs PostgreSQL"):
        render(chart, values)


def test_intake_refuses_replicas_without_a_shared_attachments_volume(chart: helm.Chart) -> None:
    values = load_values(CHART / "ci" / "production-values.yaml") or {}
    values["intake"]["attachments"] = {"existingClaim": ""}
    with pytest.raises(helm.HelmRenderError, match="shared volume for attachments"):
        render(chart, values)


def test_migration_jobs_are_hooks(chart: helm.Chart) -> None:
    own_clusters = by_kind(render(chart), "Job")
    external = by_kind(render(chart, load_values(CHART / "ci" / "production-values.yaml")), "Job")
    for jobs, first in ((own_clusters, "post-install"), (external, "pre-install")):
        assert {component(j) for j in jobs.values()} == {f"{s}-migrate" for s in SERVICES}
        for job in jobs.values():
            annotations = job["metadata"]["annotations"]
            assert annotations["helm.sh/hook"] == f"{first},pre-upgrade"
            assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
            assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migration_snippet_compiles_and_names_the_service(chart: helm.Chart) -> None:
    for job in by_kind(render(chart), "Job").values():
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:2] == ["python", "-c"]
        compile(args[2], job["metadata"]["name"], "exec")
        service = component(job).removesuffix("-migrate")
        assert f"from civicsignals.{service}.app import create_app" in args[2]


def test_ingress_routes_every_path_prefix_to_its_service(rendered: list[Manifest], chart: helm.Chart) -> None:
    (ingress,) = by_kind(rendered, "Ingress").values()
    routes = {
        p["path"]: p["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    expected = {
        "intake": ["/v1/signals", "/v1/tracking", "/v1/conversations", "/v1/privacy", "/privacy", "/open311"],
        "classifier": ["/v1/classify", "/v1/models"],
        "routing": ["/v1/cases", "/v1/routing"],
        "notifier": ["/v1/partners", "/v1/deliveries", "/v1/templates"],
        "insights": ["/v1/trends", "/v1/emerging", "/v1/exports", "/dashboard", "/transparency"],
    }
    services = by_kind(rendered, "Service")
    for name, paths in expected.items():
        for path in paths:
            assert component(services[routes[path]]) == name, path
    assert len(routes) == sum(len(p) for p in expected.values())


def test_network_policies_deny_by_default_and_allow_what_each_needs(rendered: list[Manifest]) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    deny = policies[f"{RELEASE}-default-deny"]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    # Every pod of the chart falls under the default deny.
    selector = deny["spec"]["podSelector"]["matchLabels"]
    for where, _spec in pod_specs(rendered):
        kind, name = where.split("/")
        doc = next(d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == name)
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items(), where
    per_service = {component(p): p for name, p in policies.items() if name != f"{RELEASE}-default-deny"}
    for name in SERVICES:
        egress_ports = {
            port["port"] for rule in per_service[name]["spec"]["egress"] for port in rule["ports"]
        }
        assert {53, 4222} <= egress_ports, name
    # Only notifier may call intake's internal endpoint; only notifier sends mail and webhooks.
    intake_from = [peer for rule in per_service["intake"]["spec"]["ingress"] for peer in rule["from"]]
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "notifier"
        for p in intake_from
    )
    notifier_ports = {p["port"] for r in per_service["notifier"]["spec"]["egress"] for p in r["ports"]}
    assert 443 in notifier_ports
    # intake asks routing (case notes) and notifier (mail record) for a person's access document.
    intake_to = {
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in per_service["intake"]["spec"]["egress"]
        for peer in rule.get("to", [])
    }
    assert {"routing", "notifier"} <= intake_to
    notifier_from = {
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in per_service["notifier"]["spec"]["ingress"]
        for peer in rule["from"]
    }
    assert "intake" in notifier_from
    routing_ports = {p["port"] for r in per_service["routing"]["spec"]["egress"] for p in r["ports"]}
    assert 443 not in routing_ports


def test_nats_accounts_give_each_department_its_own_feed_only(chart: helm.Chart) -> None:
    docs = render(chart, load_values(CHART / "ci" / "production-values.yaml"))
    secret = by_kind(docs, "Secret")["civic-signals-nats-accounts"]
    conf = secret["stringData"]["accounts.conf"]
    assert conf.startswith("accounts:\n")
    accounts = json.loads(conf.removeprefix("accounts:"))
    users = {u["user"]: u for u in accounts["CIVIC"]["users"]}
    assert set(users) == {"civic-services", "gouda-wegen"}
    assert users["gouda-wegen"]["permissions"] == {
        "subscribe": {"allow": ["civic.gouda.dept.wegen.>"]},
        "publish": {"deny": [">"]},
    }
    assert "permissions" not in users["civic-services"]
    assert all(u["password"].startswith("$2") for u in users.values())


def test_backups_and_recovery_with_the_barman_cloud_plugin(chart: helm.Chart) -> None:
    backup = {
        "enabled": True,
        "destinationPath": "s3://civic-backups/test",
        "s3Credentials": {"secretName": "backup-creds"},
    }
    docs = render(chart, {"postgres": {"backup": backup}})
    clusters = by_kind(docs, "Cluster")
    stores = by_kind(docs, "ObjectStore")
    schedules = by_kind(docs, "ScheduledBackup")
    assert set(schedules) == set(clusters) and len(stores) == len(clusters) == len(SERVICES)
    for name, cluster in clusters.items():
        (plugin,) = cluster["spec"]["plugins"]
        assert plugin["isWALArchiver"] is True
        assert plugin["parameters"]["barmanObjectName"] in stores
        assert schedules[name]["spec"]["method"] == "plugin"
        assert cluster["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    restored = by_kind(
        render(
            chart,
            {
                "postgres": {
                    "backup": backup,
                    "recovery": {"enabled": True, "targetTime": "2026-11-01T00:00:00Z"},
                }
            },
        ),
        "Cluster",
    )
    for name, cluster in restored.items():
        assert "initdb" not in cluster["spec"]["bootstrap"]
        assert (
            cluster["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["targetTime"] == "2026-11-01T00:00:00Z"
        )
        (origin,) = cluster["spec"]["externalClusters"]
        assert origin["plugin"]["parameters"]["serverName"] == name


def test_the_values_schema_rejects_bad_values(chart: helm.Chart) -> None:
    assert chart.schema is not None
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        render(chart, {"intake": {"replicas": "two"}})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"intake": {"replicaz": 2}})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"tenants": [{"code": "Not A Code"}]})


def test_helm_lint_finds_nothing_but_the_missing_nats_chart() -> None:
    """The NATS chart is fetched by `helm dependency build`, which needs the network."""
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE)
    assert report["errors"] == ["chart directory is missing these dependencies: nats"]
    declared = helm.Chart.load(CHART).metadata["dependencies"]
    assert declared == [
        {
            "name": "nats",
            "version": declared[0]["version"],
            "repository": "https://nats-io.github.io/k8s/helm/charts/",
            "condition": "nats.enabled",
        }
    ]


# --- strict validation, lint, checkov -------------------------------------------------------------


def test_strictly_valid_for_a_current_kubernetes(rendered: list[Manifest]) -> None:
    version = kubernetes_validate.utils.latest_version()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 33)
    for doc in rendered:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == CUSTOM_KINDS[doc["kind"]]
            assert doc["metadata"]["namespace"] == NAMESPACE
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def _yamllint(path_or_text: Path | str, name: str) -> list[str]:
    conf = yamllint_config.YamlLintConfig(file=str(HELM / ".yamllint"))
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [f"{name}:{p.line}:{p.column} {p.level} {p.message}" for p in linter.run(text, conf)]


def test_yamllint_values_chart_and_ci_files() -> None:
    files = [
        CHART / "values.yaml",
        CHART / "Chart.yaml",
        HELM / "tilt-values.yaml",
        HELM / ".checkov.yaml",
        *CI_VALUES,
    ]
    problems = [p for f in files for p in _yamllint(f, str(f.relative_to(ROOT)))]
    assert problems == []


def test_yamllint_rendered_output(chart: helm.Chart) -> None:
    problems = []
    for values_file, label in zip(VALUE_SETS, VALUE_IDS, strict=True):
        for path, text in render_text(chart, load_values(values_file)).items():
            if text.strip():
                # Each template's text starts with the newline before its first "---" (as in
                # `helm template`, where it follows a "# Source:" comment).
                problems += _yamllint(text.lstrip("\n"), f"{label}:{path}")
    assert problems == []


@pytest.fixture(scope="session")
def checkov_report(chart: helm.Chart, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """checkov once per session, over every rendering and every Dockerfile (about 10 s)."""
    checkov = shutil.which("checkov", path=str(Path(sys.executable).parent))
    if checkov is None:
        pytest.fail("checkov is part of the dev dependencies")
    target = tmp_path_factory.mktemp("checkov")
    for values_file, label in zip(VALUE_SETS, VALUE_IDS, strict=True):
        (target / f"{label}.yaml").write_text(yaml.safe_dump_all(render(chart, load_values(values_file))))
    for name in SERVICES:
        (target / name).mkdir()
        shutil.copy(ROOT / "services" / name / "Dockerfile", target / name / "Dockerfile")
    # Without the skip list, so that the tests see which justified findings still fire.
    config = yaml.safe_load((HELM / ".checkov.yaml").read_text())
    result = subprocess.run(
        [
            checkov,
            "--framework",
            *config["framework"],
            "-d",
            str(target),
            "-o",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
        check=False,
    )
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def _checkov_skip_list() -> set[str]:
    return set(yaml.safe_load((HELM / ".checkov.yaml").read_text())["skip-check"])


def test_checkov_finds_nothing_unjustified(checkov_report: list[dict[str, Any]]) -> None:
    kinds = {r["check_type"] for r in checkov_report}
    assert kinds == {"kubernetes", "dockerfile"}
    unjustified = [
        f"{f['check_id']} {f['resource']} ({f['file_path']})"
        for r in checkov_report
        for f in r["results"]["failed_checks"]
        if f["check_id"] not in _checkov_skip_list()
    ]
    assert unjustified == []
    assert all(r["summary"]["passed"] > 0 and r["summary"]["parsing_errors"] == 0 for r in checkov_report)


def test_every_justified_checkov_finding_still_fires_and_is_documented(
    checkov_report: list[dict[str, Any]],
) -> None:
    fired = {f["check_id"] for r in checkov_report for f in r["results"]["failed_checks"]}
    assert fired == _checkov_skip_list()
    operations = (ROOT / "docs" / "operations.md").read_text()
    for check in _checkov_skip_list():
        assert check in operations, f"{check} is justified in docs/operations.md"


# --- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_builds_only_its_service_as_non_root(name: str) -> None:
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.MULTILINE)
    assert [s for _, s in stages] == ["build", "base", "dev", "runtime"], "multi-stage, production image last"
    assert text.count(f"uv sync --frozen --no-dev --package civicsignals-{name}") == 2
    assert "--package civicsignals-" + name in text and not re.search(
        rf"--package civicsignals-(?!{name}\b)", text
    )
    # Only its own member and the common library are copied in.
    copied = set(re.findall(r"^COPY (?:--\S+ )*(services/\w+|libs/\w+)", text, re.MULTILINE))
    assert copied == {f"services/{name}", "libs/common"}
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users[-1] == "10001:10001", "the last stage runs as the service user"
    assert f'CMD ["civicsignals-{name}", "serve"]' in text
    assert f"CIVIC_{name.upper()}_HOST=0.0.0.0" in text and f"CIVIC_{name.upper()}_PORT=8080" in text


@pytest.mark.parametrize("name", ["routing", "notifier"])
def test_entrypoint_rewrites_the_cloudnativepg_uri(name: str, tmp_path: Path) -> None:
    """Run the entrypoint script the Dockerfile writes, as the image would."""
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    run = re.search(r"^RUN (printf .*?civic-entrypoint)\s*\\?\n", text, re.MULTILINE | re.DOTALL)
    assert run is not None
    script = tmp_path / "entrypoint"
    command = run.group(1).replace("\\\n", " ").replace("/usr/local/bin/civic-entrypoint", str(script))
    subprocess.run(["sh", "-c", command], check=True)
    var = f"CIVIC_{name.upper()}_DATABASE_URL"

    def url_after(value: str | None) -> str:
        env = {"PATH": os.environ["PATH"]} | ({var: value} if value is not None else {})
        out = subprocess.run(
            ["sh", str(script), "sh", "-c", f'printf %s "${{{var}:-unset}}"'],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    cnpg = "postgresql://app:p%40ss@civic-signals-routing-db-rw.civic:5432/routing"
    assert url_after(cnpg) == "postgresql+asyncpg://app:p%40ss@civic-signals-routing-db-rw.civic:5432/routing"
    assert url_after("postgres://a@h/d") == "postgresql+asyncpg://a@h/d"
    assert url_after("postgresql+asyncpg://a@h/d") == "postgresql+asyncpg://a@h/d"
    assert url_after("sqlite+aiosqlite:////data/db/x.db") == "sqlite+aiosqlite:////data/db/x.db"
    assert url_after(None) == "unset"


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("**/.venv", "**/.data", "**/tests", "**/__pycache__", "**/.git"):
        assert entry in ignored


# --- Tiltfile ----------------------------------------------------------------------------------------


class TiltRecorder:
    """Stand-ins for the Tilt functions the Tiltfile calls; each records its arguments."""

    BUILTINS = (
        "local",
        "fail",
        "k8s_yaml",
        "blob",
        "helm",
        "k8s_kind",
        "k8s_resource",
        "local_resource",
        "link",
        "fall_back_on",
        "sync",
        "listdir",
        "docker_build",
        "_path_exists",
    )

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def stub(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "fail":
                raise RuntimeError(f"Tiltfile failed: {args[0]}")
            if name == "local":
                return "yes"
            if name == "listdir":
                return [str(p) for p in sorted((ROOT / args[0]).iterdir())]
            if name == "_path_exists":
                return (ROOT / args[0]).exists()
            return f"<{name}>"

        return call

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]


@pytest.fixture(scope="session")
def tilt() -> TiltRecorder:
    """Run the Tiltfile in starlark-rust (Tilt itself uses the Go implementation of Starlark)."""
    import starlark as sl

    recorder = TiltRecorder()
    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print])
    module = sl.Module()
    for name in TiltRecorder.BUILTINS:
        module.add_callable(name, recorder.stub(name))
    sl.eval(
        module, sl.parse("prelude", "os = struct(path = struct(exists = _path_exists))", dialect), globals_
    )

    def load(ext: str) -> Any:
        assert ext == "ext://restart_process"
        loaded = sl.Module()
        loaded.add_callable("docker_build_with_restart", recorder.stub("docker_build_with_restart"))
        return loaded.freeze()

    source = (ROOT / "Tiltfile").read_text()
    sl.eval(module, sl.parse("Tiltfile", source, dialect), globals_, sl.FileLoader(load))
    return recorder


def test_tiltfile_builds_every_image_with_live_update(tilt: TiltRecorder) -> None:
    builds = {args[0]: kwargs for args, kwargs in tilt.named("docker_build_with_restart")}
    assert set(builds) == {f"civicsignals-{s}" for s in SERVICES}
    syncs = [args for args, _ in tilt.named("sync")]
    for name in SERVICES:
        build = builds[f"civicsignals-{name}"]
        assert (ROOT / build["dockerfile"]).is_file()
        assert build["target"] == "dev"
        assert (
            f"services/{name}/src/civicsignals/{name}",
            f"/app/.venv/lib/python3.11/site-packages/civicsignals/{name}",
        ) in syncs
    for local_path, _remote in syncs:
        assert (ROOT / local_path).is_dir(), local_path


def test_tiltfile_deploys_the_chart_with_nats_and_postgres_in_order(
    tilt: TiltRecorder, chart: helm.Chart
) -> None:
    ((chart_path,), deploy) = tilt.named("helm")[0]
    assert (ROOT / chart_path).resolve() == CHART
    assert deploy["name"] == RELEASE
    values: dict[str, Any] = {}
    for values_file in deploy["values"]:
        values.update(yaml.safe_load((ROOT / values_file).read_text()))
    assert values["nats"]["enabled"] is True and values["postgres"]["enabled"] is True
    docs = render(chart, values)
    images = {c["image"].split(":")[0] for _, spec in pod_specs(docs) for c in spec["containers"]}
    assert images == {f"civicsignals-{s}" for s in SERVICES}, "Tilt replaces exactly the images it builds"
    workloads = set(by_kind(docs, "Deployment")) | set(by_kind(docs, "Job")) | set(by_kind(docs, "Cluster"))
    resources = {args[0]: kwargs for args, kwargs in tilt.named("k8s_resource")}
    for name in resources:
        if name != f"{RELEASE}-nats":  # from the NATS chart, which renders only after `helm dependency build`
            assert name in workloads, name
    for name in SERVICES:
        deps = resources[f"{RELEASE}-{name}"]["resource_deps"]
        assert f"{RELEASE}-nats" in deps and f"{RELEASE}-{name}-migrate" in deps
        assert resources[f"{RELEASE}-{name}-migrate"]["resource_deps"] == [f"{RELEASE}-{name}-db"]
    ((entry,), entry_kwargs) = tilt.named("local_resource")[0]
    assert entry == "entry-point" and "8000:80" in entry_kwargs["serve_cmd"]
