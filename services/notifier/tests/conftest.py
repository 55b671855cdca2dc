"""Notifier's test fixtures: the real notifier app, a real HTTP receiver, a real SMTP server.

- ``Receiver``: a stdlib HTTP server on a free loopback port, in a thread, answering with a script
  of status codes (then a default), keeping every request's headers and body. It can be stopped
  and started again on the same port (a partner that is down for a while).
- ``notifier_factory``: starts notifier in-process (its lifespan: database, NATS consumers,
  outbox relay, dispatcher) with test-sized settings; ``stop()`` and start again on the same
  database to test restarts.
- ``relay`` and ``start``: an SMTP server (aiosmtpd) that keeps each mail's envelope and bytes,
  and ``await start(name=..., mail=...)`` for a tenant with that ``tenant.yaml`` served by the
  real intake and notifier, whose ``Stack.acknowledgement`` reports a signal and returns the
  mail the relay got (the sender's and DKIM's tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI

from civicsignals.common.events import CloudEvent, EventData, SignalReceived, SignalRouted, make_event, utcnow
from civicsignals.common.tasks import awaits
from civicsignals.devstack.mailcatcher import MailCatcher
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.notifier.app import create_app
from civicsignals.notifier.settings import NotifierSettings


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A partner's webhook receiver: real HTTP on 127.0.0.1, scripted answers."""

    port: int = field(default_factory=free_port)
    default: int = 204
    delay_s: float = 0.0  # how long it takes to answer, once it has recorded the request
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/civic"

    def answer(self, *answers: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these (status, or status and headers), then the default."""
        with self._lock:
            self.script.extend(a if isinstance(a, tuple) else (a, {}) for a in answers)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status, headers = receiver.script.pop(0) if receiver.script else (receiver.default, {})
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                time.sleep(receiver.delay_s)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]


@pytest.fixture
def receiver() -> Any:
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def mail(tmp_path: Path) -> Any:
    catcher = MailCatcher(tmp_path / "mail").start()
    yield catcher
    catcher.stop()


def intake_settings(tenant: Any, nats_url: str, tmp_path: Path) -> Any:
    """The settings of the intake :func:`served_intake` runs: its maintenance commands (``erase``)
    work on the same database, and the running intake publishes what they leave in its outbox."""
    from civicsignals.intake.settings import IntakeSettings

    return IntakeSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}",
        nats_url=nats_url,
        tenants_dir=tenant.tenants_dir,
        data_dir=tmp_path / "intake-data",
        outbox_poll_interval_s=0.1,
    )


@contextlib.asynccontextmanager
async def served_intake(tenant: Any, nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path, str]]:
    """A real intake for ``tenant`` on a free port, with notifier's service key for it: yields
    ``(intake's URL, the keys folder notifier reads, the contact:read key)``."""
    import uvicorn

    from civicsignals.intake.app import create_app as create_intake

    _, contact_key = tenant.add_key(["contact:read"], description="notifier reads contacts")
    keys_dir = tmp_path / "service-keys"
    keys_dir.mkdir()
    (keys_dir / tenant.tenant).write_text(contact_key)
    app = create_intake(intake_settings(tenant, nats_url, tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "intake did not start"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}", keys_dir, contact_key
    finally:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            await close_bus_first(runtime)
        server.should_exit = True
        await serving


async def close_bus_first(runtime: Any) -> None:
    """Close a runtime's NATS connection before its shutdown drains it.

    ``Bus.close`` drains, and a drain waits for pull subscriptions whose fetch was cancelled to
    empty their queue, which never happens: five seconds lost per app. Closing first skips that;
    everything else of the shutdown (consumers, dispatcher, relay, database) runs as usual.
    """
    connection = getattr(runtime.bus, "_nc", None)
    if connection is not None and not connection.is_closed:
        with contextlib.suppress(Exception):
            await connection.close()


class Notifier:
    """A running notifier app with an HTTP client that carries an admin key of the tenant."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, stack: contextlib.AsyncExitStack) -> None:
        self.app = app
        self.client = client
        self._stack = stack

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def stop(self) -> None:
        await close_bus_first(self.runtime)
        await self._stack.aclose()

    async def publish(self, tenant: str, data: EventData) -> CloudEvent:
        """Publish an event as the service that owns it would (routing, intake)."""
        event = make_event(tenant=tenant, service="routing", data=data)
        await self.runtime.bus.publish(data.bus_subject(tenant), event)
        return event

    async def deliveries(self, **filters: str) -> list[dict[str, Any]]:
        response = await self.client.get("/v1/deliveries", params={"limit": 200, **filters})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/deliveries/{delivery_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    async def register(self, code: str, url: str, **endpoint: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A partner with one endpoint; returns (partner, endpoint with its secret)."""
        response = await self.client.post(
            "/v1/partners", json={"code": code, "contact_email": f"it@{code}.example"}
        )
        assert response.status_code == 201, response.text
        partner = response.json()
        response = await self.client.post(
            f"/v1/partners/{partner['id']}/endpoints", json={"url": url, **endpoint}
        )
        assert response.status_code == 201, response.text
        return partner, response.json()


NotifierFactory = Callable[..., Any]


def notifier_settings(
    database_url: str, nats_url: str, tenants_dir: Path, data_dir: Path, **overrides: Any
) -> NotifierSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "tenants_dir": tenants_dir,
        "data_dir": data_dir,
        "allow_private_endpoints": True,
        "retry_schedule_s": [0.2] * 8,
        "scheduler_poll_interval_s": 0.1,
        "outbox_poll_interval_s": 0.1,
        "webhook_timeout_s": 3.0,
        "coalesce_window_s": 1.0,
        "acknowledgement_wait_s": 30.0,
        # Short, so that tests of a lost attempt do not wait long; not shorter, because a claim
        # that waits for a slot over half of it is left to its lease, and a loaded CI machine
        # stalled the event loop for over a second once (the margin was 2 s then).
        "lease_margin_s": 5.0,
        "public_base_url": "https://gemeente.example",
    }
    values.update(overrides)
    return NotifierSettings(**values)


@pytest.fixture
async def notifier_factory(
    database_url: str, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[NotifierFactory]:
    """``await notifier_factory(tenant_key, **settings)`` starts a notifier; stopped after the test."""
    running: list[Notifier] = []

    async def _start(tenant_key: Any, **overrides: Any) -> Notifier:
        settings = notifier_settings(
            database_url, nats_server.url, tenant_key.tenants_dir, tmp_path / "notifier-data", **overrides
        )
        app = create_app(settings)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://notifier",
                headers=tenant_key.authorization,
            )
        )
        await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
        notifier = Notifier(app, client, stack)
        running.append(notifier)
        return notifier

    yield _start
    for notifier in running:
        await stop_or_show_what_hangs(notifier)


async def stop_or_show_what_hangs(notifier: Notifier, timeout_s: float = 60.0) -> None:
    """Stop a notifier; if it has not stopped after ``timeout_s``, fail with every task's stack,
    so that a shutdown that hangs says where."""
    stopping = asyncio.create_task(notifier.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    if done:
        with contextlib.suppress(Exception):
            stopping.result()
        return
    stacks = [f"{task!r}\n{awaits(task)}" for task in asyncio.all_tasks()]
    stopping.cancel()
    pytest.fail(f"notifier did not stop within {timeout_s:g} s; tasks:\n" + "\n".join(stacks))


def event_json(received: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(received.body)
    return body


def signal_received(signal_id: str, tracking_code: str = "7KQ2-M9XD-4HTC") -> SignalReceived:
    """A signal whose reporter left an address (notifier reads it from intake when it mails)."""
    return SignalReceived(
        signal_id=signal_id,
        tracking_code=tracking_code,
        kind="report",
        channel="web",
        text="Afval naast de container.",
        language="nl",
        received_at=utcnow(),
        has_contact=True,
        source="portal",
    )


# --- residents' mail end to end: intake, notifier and an SMTP relay that keeps the envelope -------

TENANT = "gouda"
MAIL_FROM = "Civic Signals <noreply@civic.example>"
"""``CIVIC_NOTIFIER_MAIL_FROM`` in these tests: its address is the default sender's address."""
FRYSLAN = "Gemeente Súdwest-Fryslân"


# --- an SMTP server that keeps the envelope --------------------------------------------------------


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class Relay:
    """aiosmtpd's handler: every mail with its envelope sender and recipients, byte for byte."""

    received: list[Delivered] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        with self._lock:
            self.received.append(Delivered(envelope.mail_from, list(envelope.rcpt_tos), bytes(raw)))
        return "250 OK"

    def mails(self) -> list[Delivered]:
        with self._lock:
            return list(self.received)


@pytest.fixture
def relay() -> Any:
    handler = Relay()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


# --- the stack: intake, notifier, one resident ---------------------------------------------------


@dataclass
class Stack:
    tenant: Any
    notifier: Any
    intake: httpx.AsyncClient
    relay: Relay

    async def acknowledgement(
        self,
        wait_until: Any,
        email_address: str = "anna@example.org",
        *,
        text: str = "Er ligt al drie dagen afval naast de container op de Kerkstraat.",
        language: str | None = "nl",
    ) -> Delivered:
        """A resident reports something (``language`` None: intake detects it); routing routes
        it; the acknowledgement as the relay got it."""
        body: dict[str, Any] = {
            "text": text,
            "channel": "web",
            "reporter": {"name": "Anna de Vries", "email": email_address, "consent": True},
        }
        if language is not None:
            body["language"] = language
        response = await self.intake.post("/v1/signals", json=body, headers=self.tenant.authorization)
        assert response.status_code == 201, response.text
        created = response.json()
        await self.notifier.publish(
            TENANT,
            SignalRouted(
                signal_id=created["id"],
                case_id=f"case-{created['id']}",
                tracking_code=created["tracking_code"],
                responsible="afval-en-reiniging",
                priority="normal",
                rule_id="afval",
                due_at="2026-12-07T09:14:03Z",
                service_promise="We halen het binnen 5 werkdagen weg.",
            ),
        )

        def arrived() -> Delivered | None:
            for mail in self.relay.mails():
                if created["tracking_code"] in str(mail.parsed()["Subject"]):
                    return mail
            return None

        found: Delivered = await wait_until(arrived, timeout=30, message="the acknowledgement")
        return found


@pytest.fixture
async def start(
    make_tenant: Any, nats_server: NatsServer, tmp_path: Path, notifier_factory: Any, relay: Any
) -> AsyncIterator[Any]:
    """``await start(name=..., mail=..., languages=...)``: a tenant with that ``tenant.yaml``,
    intake, notifier."""
    handler, port = relay
    async with contextlib.AsyncExitStack() as stack:

        async def _start(
            *, name: str, mail: dict[str, Any] | None = None, languages: list[str] | None = None
        ) -> Stack:
            settings: dict[str, Any] = {"mail": mail} if mail is not None else {}
            if languages is not None:
                settings["languages"] = languages
            tenant = make_tenant(TENANT, name=name, settings=settings or None)
            intake_url, keys_dir, _ = await stack.enter_async_context(
                served_intake(tenant, nats_server.url, tmp_path)
            )
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=intake_url, timeout=30))
            notifier = await notifier_factory(
                tenant, intake_url=intake_url, intake_keys_dir=keys_dir, smtp_port=port, mail_from=MAIL_FROM
            )
            return Stack(tenant, notifier, client, handler)

        yield _start
