"""The generated NATS accounts on a real nats-server: a department reads its own feed and no other."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote

import nats
import pytest
import yaml
from nats.errors import Error as NatsError

from civicsignals.common.bus import Bus
from civicsignals.common.events import DepartmentStatusChanged, make_event
from civicsignals.devstack.nats import NatsServer
from civicsignals.routing.cli import main
from civicsignals.routing.natsconfig import generate


def _tenant(root: Path, code: str, departments: list[str]) -> None:
    folder = root / code
    folder.mkdir(parents=True)
    (folder / "departments.yaml").write_text(
        yaml.safe_dump({"departments": [{"code": d, "name": d} for d in departments]}), encoding="utf-8"
    )


@pytest.fixture
def accounts(tmp_path: Path):
    tenants = tmp_path / "tenants"
    _tenant(tenants, "gouda", ["afval", "wonen"])
    _tenant(tenants, "delft", ["afval"])
    config = tmp_path / "nats" / "accounts.conf"
    generate(tenants, config, cost=4)
    secrets = json.loads(config.with_name("accounts.credentials.json").read_text(encoding="utf-8"))
    passwords = {entry["user"]: entry["password"] for users in secrets["tenants"].values() for entry in users}
    server = NatsServer(tmp_path / "nats" / "store", extra_args=["-c", str(config)])
    server.start()
    try:
        yield server, passwords, config
    finally:
        server.stop()


def url(server: NatsServer, user: str, password: str) -> str:
    return f"nats://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{server.port}"


class Watcher:
    """A department's own system: a plain NATS client that records what it receives and its errors."""

    def __init__(self) -> None:
        self.messages: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self.client: nats.NATS | None = None

    async def connect(self, address: str) -> Watcher:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.client = await nats.connect(address, error_cb=on_error, allow_reconnect=False)
        return self

    async def subscribe(self, subject: str) -> None:
        assert self.client is not None
        bucket = self.messages.setdefault(subject, [])

        async def on_message(message) -> None:
            bucket.append(message.subject)

        await self.client.subscribe(subject, cb=on_message)
        await self.client.flush()

    async def close(self) -> None:
        if self.client is not None and not self.client.is_closed:
            await self.client.close()


async def test_a_department_reads_its_own_feed_and_cannot_read_another(accounts, wait_until) -> None:
    server, passwords, _ = accounts
    afval = await Watcher().connect(url(server, "gouda-dept-afval", passwords["gouda-dept-afval"]))
    wonen = await Watcher().connect(url(server, "gouda-dept-wonen", passwords["gouda-dept-wonen"]))
    other_town = await Watcher().connect(url(server, "delft-dept-afval", passwords["delft-dept-afval"]))
    bus = Bus(
        url(server, "gouda-services", passwords["gouda-services"]), service="routing", duplicate_window_s=120
    )
    await bus.connect(retry_forever=False)
    try:
        await bus.ensure_streams()  # the services user has JetStream in its tenant's account
        await afval.subscribe("civic.gouda.dept.afval.>")
        await afval.subscribe("civic.gouda.dept.wonen.>")  # another department's feed: refused
        await afval.subscribe("civic.gouda.>")  # everything: refused
        await wonen.subscribe("civic.gouda.dept.wonen.>")
        await other_town.subscribe("civic.delft.dept.afval.>")
        await other_town.subscribe("civic.gouda.dept.afval.>")  # another municipality: refused
        await wait_until(
            lambda: len(afval.errors) >= 2 and other_town.errors, timeout=5, message="violations"
        )

        for department in ("afval", "wonen"):
            data = DepartmentStatusChanged(
                case_id="c1",
                signal_id="s1",
                department=department,
                to="in_progress",
                actor="system:routing",
                sequence=2,
            )
            await bus.publish(
                DepartmentStatusChanged.department_subject("gouda", department),
                make_event(tenant="gouda", service="routing", data=data),
            )
        await wait_until(
            lambda: afval.messages["civic.gouda.dept.afval.>"] and wonen.messages["civic.gouda.dept.wonen.>"],
            timeout=5,
        )
        # Give any message that should not arrive the time to do so, then check that none did.
        await asyncio.sleep(0.3)
        assert afval.messages["civic.gouda.dept.afval.>"] == ["civic.gouda.dept.afval.status_changed"]
        assert afval.messages["civic.gouda.dept.wonen.>"] == []
        assert afval.messages["civic.gouda.>"] == []
        assert wonen.messages["civic.gouda.dept.wonen.>"] == ["civic.gouda.dept.wonen.status_changed"]
        assert other_town.messages["civic.gouda.dept.afval.>"] == []
        assert other_town.messages["civic.delft.dept.afval.>"] == []
        assert any(
            'permissions violation for subscription to "civic.gouda.dept.wonen.>"' in e.lower()
            for e in afval.errors
        )
        assert any(
            'permissions violation for subscription to "civic.gouda.>"' in e.lower() for e in afval.errors
        )
        assert any(
            'permissions violation for subscription to "civic.gouda.dept.afval.>"' in e.lower()
            for e in other_town.errors
        )

        # A department publishes nothing, not even on its own feed.
        assert afval.client is not None
        await afval.client.publish("civic.gouda.dept.afval.assigned", b"{}")
        await wait_until(lambda: any("violation for publish" in e.lower() for e in afval.errors), timeout=5)
        await asyncio.sleep(0.2)
        assert afval.messages["civic.gouda.dept.afval.>"] == ["civic.gouda.dept.afval.status_changed"]
    finally:
        for watcher in (afval, wonen, other_town):
            await watcher.close()
        await bus.close()


async def test_a_wrong_password_is_refused(accounts) -> None:
    server, _, _ = accounts
    with pytest.raises(NatsError):
        await nats.connect(
            url(server, "gouda-dept-afval", "guess"),
            allow_reconnect=False,
            connect_timeout=2,
            max_reconnect_attempts=0,
        )


def test_the_cli_keeps_passwords_and_adds_new_departments(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    _tenant(tenants, "gouda", ["afval"])
    out = tmp_path / "nats.conf"
    main(["nats-config", "--tenants-dir", str(tenants), "--out", str(out)])
    credentials = out.with_name("nats.credentials.json")
    first = json.loads(credentials.read_text(encoding="utf-8"))
    assert credentials.stat().st_mode & 0o077 == 0
    (tenants / "gouda" / "departments.yaml").write_text(
        yaml.safe_dump({"departments": [{"code": "afval"}, {"code": "wonen"}]}), encoding="utf-8"
    )
    main(["nats-config", "--tenants-dir", str(tenants), "--out", str(out)])
    second = json.loads(credentials.read_text(encoding="utf-8"))
    before = {e["user"]: e["password"] for e in first["tenants"]["gouda"]}
    after = {e["user"]: e["password"] for e in second["tenants"]["gouda"]}
    assert set(after) == {"gouda-services", "gouda-dept-afval", "gouda-dept-wonen"}
    assert all(after[user] == password for user, password in before.items())
    text = out.read_text(encoding="utf-8")
    assert '"civic.gouda.dept.wonen.>"' in text
    assert all(password not in text for password in after.values())  # only bcrypt hashes
