"""End-to-end fixtures: the whole of Civic Signals as separate processes over a real NATS server.

``stack`` starts a real ``nats-server`` (JetStream), a real SMTP server (aiosmtpd, the devstack's
mail catcher) and the four services as their own processes, configured exactly as ``make run``
configures them (``civicsignals.devstack.cli.service_env``) except for free ports, and stops all
of it after the test. Services can be killed and restarted, with other settings, by the test.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from civicsignals.classifier.registry import ModelRegistry
from civicsignals.common.tenants import prepare_dev_tenant
from civicsignals.devstack.cli import service_env
from civicsignals.devstack.mailcatcher import MailCatcher
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor

REPO = Path(__file__).resolve().parents[1]
SERVICE_NAMES = ("intake", "classifier", "routing", "notifier", "insights")


@dataclass
class Stack:
    data_dir: Path
    nats: NatsServer
    mail: MailCatcher
    supervisor: ProcessSupervisor
    models_dir: Path
    dev_key: str
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self, service: str, **overrides: str) -> dict[str, str]:
        env = service_env(service, data_dir=self.data_dir, nats_url=self.nats.url, smtp_port=self.mail.port)
        prefix = f"CIVIC_{service.upper()}_"
        env[f"{prefix}PORT"] = str(self.ports[service])
        env[f"{prefix}PUBLIC_BASE_URL"] = "http://127.0.0.1:8000"
        env[f"{prefix}OUTBOX_POLL_INTERVAL_S"] = "0.2"
        if service == "notifier":
            env[f"{prefix}INTAKE_URL"] = self.url("intake")
        if service == "intake":
            env[f"{prefix}ROUTING_URL"] = self.url("routing")  # residents' and Open311 updates, case notes
            env[f"{prefix}NOTIFIER_URL"] = self.url("notifier")  # the access document's mail record
            # The fault tests post thousands of signals with one key; production keeps the default.
            env[f"{prefix}RATE_LIMIT_PER_S"] = "100000"
            env[f"{prefix}RATE_LIMIT_BURST"] = "100000"
        if service == "classifier":
            env[f"{prefix}MODELS_DIR"] = str(self.models_dir)
        env.update({f"{prefix}{key.upper()}": value for key, value in overrides.items()})
        return env

    def start(self, service: str, **overrides: str) -> None:
        self.supervisor.start(
            service,
            [sys.executable, "-m", f"civicsignals.{service}", "serve"],
            env=self.env(service, **overrides),
        )
        self.supervisor.wait_http_ready(service, f"{self.url(service)}/readyz", timeout=60)

    def kill(self, service: str) -> None:
        self.supervisor.kill(service)

    def forward_rule_to(self, rule_id: str, partner: str) -> None:
        """Make a routing rule of the demo tenant forward to a partner (before routing starts)."""
        path = self.data_dir / "tenants" / "demo" / "rules.yaml"
        rules = yaml.safe_load(path.read_text(encoding="utf-8"))
        for rule in rules["rules"]:
            if rule["id"] == rule_id:
                rule["then"]["partners"] = [partner]
        path.write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{self.supervisor.log_tail(name, 30)}" for name in self.supervisor.names
        )

    def client(self) -> httpx.Client:
        return httpx.Client(headers={"Authorization": f"Bearer {self.dev_key}"}, timeout=10)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cold-start bundle for the whole session, so each test's classifier starts fast.

    Built here, in the test process, where the classifier would build it on its first start: the
    fit takes a minute and a half on a slow 2-core machine, longer than a service's readiness wait,
    so the first stack test of a session failed there while every later one passed."""
    root = tmp_path_factory.mktemp("models")
    asyncio.run(ModelRegistry(root).load())
    return root


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path) -> Iterator[Stack]:
    data_dir = tmp_path / "data"
    dev_key = prepare_dev_tenant(REPO / "config" / "tenants", data_dir)
    nats = NatsServer(store_dir=tmp_path / "nats").start()
    mail = MailCatcher(data_dir / "mail").start()
    supervisor = ProcessSupervisor(tmp_path / "logs")
    stack = Stack(
        data_dir=data_dir,
        nats=nats,
        mail=mail,
        supervisor=supervisor,
        models_dir=models_dir,
        dev_key=dev_key,
        ports={name: free_port() for name in SERVICE_NAMES},
    )
    try:
        yield stack
    finally:
        supervisor.stop_all()
        mail.stop()
        nats.stop()


def event_data(message_data: bytes) -> dict[str, object]:
    envelope = json.loads(message_data)
    data: dict[str, object] = envelope["data"]
    return data
