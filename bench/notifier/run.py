"""Notifier benchmark: webhook deliveries and e-mails per second, and latency from signal.routed.

Everything is local and real: a nats-server with JetStream, notifier in this process (its consumers,
dispatcher, database), a stdlib HTTP receiver on 127.0.0.1, an aiosmtpd SMTP server, and intake as
its own process (as in production), which holds the residents' contacts for the e-mails.

For each channel it prints, beside notifier's figures, a reference measured in the same run on the
same receiver: the same number of bare requests (httpx POSTs, aiosmtplib sends) with the same
concurrency and nothing else, i.e. what the receiver and this machine allow at most.

    .venv/bin/python bench/notifier/run.py [--webhooks 500] [--emails 200] [--database-url URL]

Latency is from the ``time`` of the ``signal.routed`` event to the receiver's clock on arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
from aiosmtpd.controller import Controller

from civicsignals.common.events import SignalReceived, SignalRouted, make_event
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.common.tenants import ALL_SCOPES, add_key
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor
from civicsignals.notifier.app import create_app as create_notifier
from civicsignals.notifier.settings import NotifierSettings


class Backlogged(ThreadingHTTPServer):
    """The stdlib server with a listen backlog for the dispatcher's concurrency (its default, 5,
    resets connections once more than a handful arrive at once)."""

    request_queue_size = 256


TENANT = "bench"


class Receiver:
    """Counts webhooks: arrival time per webhook-id, and the event time from the body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, tuple[float, float]] = {}
        self.duplicates = 0
        self.plain = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.time()
                webhook_id = self.headers.get("webhook-id")
                with receiver.lock:
                    if webhook_id is None:
                        receiver.plain += 1
                    elif webhook_id in receiver.arrivals:
                        receiver.duplicates += 1
                    else:
                        event_time = datetime.fromisoformat(json.loads(body)["time"]).timestamp()
                        receiver.arrivals[webhook_id] = (event_time, now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = Backlogged(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


class MailCounter:
    """aiosmtpd handler counting messages: arrival time by subject's tracking code."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.plain = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        content = envelope.content.decode("utf-8", "replace")
        subject = next((line for line in content.splitlines() if line.startswith("Subject:")), "")
        code = subject.rsplit("(", 1)[-1].rstrip(")") if "(" in subject else None
        if code:
            self.arrivals[code] = now
        else:
            self.plain += 1
        return "250 OK"


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "n/a"
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"


async def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        await asyncio.sleep(0.05)


async def reference_http(url: str, count: int, concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(trust_env=False) as client:

        async def one() -> None:
            async with limit:
                await client.post(url, content=b"{}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def reference_smtp(port: int, count: int, concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.org", "b@example.org", f"ref {index}"
        message.set_content("reference")
        async with limit:
            await aiosmtplib.send(message, hostname="127.0.0.1", port=port)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-notifier-"))
    tenants = work / "tenants"
    (tenants / TENANT).mkdir(parents=True)
    (tenants / TENANT / "tenant.yaml").write_text("name: Bench\nlanguages: [nl, en]\n")
    _, admin_key = add_key(tenants / TENANT, list(ALL_SCOPES))
    _, contact_key = add_key(tenants / TENANT, ["contact:read"])
    (work / "keys").mkdir()
    (work / "keys" / TENANT).write_text(contact_key)

    nats = NatsServer(work / "nats").start()
    receiver = Receiver()
    mails = MailCounter()
    smtp = Controller(mails, hostname="127.0.0.1", port=free_port())
    smtp.start()
    database_url = args.database_url or f"sqlite+aiosqlite:///{work / 'notifier.db'}"
    intake_port = free_port()
    supervisor = ProcessSupervisor(work / "logs")
    supervisor.start(
        "intake",
        [sys.executable, "-m", "civicsignals.intake", "serve"],
        env={
            "CIVIC_INTAKE_PORT": str(intake_port),
            "CIVIC_INTAKE_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'intake.db'}",
            "CIVIC_INTAKE_NATS_URL": nats.url,
            "CIVIC_INTAKE_TENANTS_DIR": str(tenants),
            "CIVIC_INTAKE_DATA_DIR": str(work / "intake"),
            "CIVIC_INTAKE_OUTBOX_POLL_INTERVAL_S": "0.1",
            "CIVIC_INTAKE_RATE_LIMIT_PER_S": "10000",
            "CIVIC_INTAKE_RATE_LIMIT_BURST": "10000",
            "CIVIC_INTAKE_LOG_LEVEL": "WARNING",
        },
    )
    intake_url = f"http://127.0.0.1:{intake_port}"
    await supervisor.wait_http_ready_async("intake", f"{intake_url}/readyz", timeout=60)
    intake_client = httpx.AsyncClient(base_url=intake_url, trust_env=False, timeout=30)
    settings = NotifierSettings(
        database_url=database_url,
        nats_url=nats.url,
        tenants_dir=tenants,
        data_dir=work / "notifier",
        intake_url=intake_url,
        intake_keys_dir=work / "keys",
        smtp_port=smtp.port,
        allow_private_endpoints=True,
        acknowledgement_wait_s=600,
        outbox_poll_interval_s=0.2,
        log_level="WARNING",
    )
    notifier = create_notifier(settings)
    auth = {"Authorization": f"Bearer {admin_key}"}
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(notifier.router.lifespan_context(notifier))
            await asyncio.wait_for(notifier.state.runtime.bus_ready.wait(), timeout=30)
            bus = notifier.state.runtime.bus
            api = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=notifier), base_url="http://n", headers=auth
                )
            )
            partner = (await api.post("/v1/partners", json={"code": "woonpartners"})).json()
            await api.post(f"/v1/partners/{partner['id']}/endpoints", json={"url": receiver.url})

            # --- webhooks: signals without contact, routed to the partner ------------------------
            n = args.webhooks
            signals = [(new_id(), new_tracking_code()) for _ in range(n)]
            for signal_id, code in signals:
                received = SignalReceived(
                    signal_id=signal_id,
                    tracking_code=code,
                    kind="report",
                    channel="web",
                    text="bench",
                    received_at=datetime.now().astimezone(),
                    has_contact=False,
                    source="bench",
                )
                await bus.publish(
                    received.bus_subject(TENANT), make_event(tenant=TENANT, service="intake", data=received)
                )
            await asyncio.sleep(1.0)  # let the signal.received consumer record them first
            started = time.time()
            for signal_id, code in signals:
                routed = SignalRouted(
                    signal_id=signal_id,
                    case_id=new_id(),
                    tracking_code=code,
                    responsible="wonen",
                    partners=["woonpartners"],
                    priority="normal",
                    rule_id="bench",
                )
                await bus.publish(
                    routed.bus_subject(TENANT), make_event(tenant=TENANT, service="routing", data=routed)
                )
            await wait_for(lambda: len(receiver.arrivals) >= n, timeout=600)
            webhook_rate = n / (max(a for _, a in receiver.arrivals.values()) - started)
            webhook_latency = [arrived - event for event, arrived in receiver.arrivals.values()]

            # --- latency one at a time: events 200 ms apart, no backlog ---------------------------
            before = set(receiver.arrivals)
            for _ in range(args.paced):
                routed = SignalRouted(
                    signal_id=new_id(),
                    case_id=new_id(),
                    tracking_code=new_tracking_code(),
                    responsible="wonen",
                    partners=["woonpartners"],
                    priority="normal",
                    rule_id="bench",
                )
                await bus.publish(
                    routed.bus_subject(TENANT), make_event(tenant=TENANT, service="routing", data=routed)
                )
                await asyncio.sleep(0.2)
            await wait_for(lambda: len(receiver.arrivals) >= n + args.paced, timeout=120)
            paced_latency = [
                arrived - event for key, (event, arrived) in receiver.arrivals.items() if key not in before
            ]

            # --- e-mails: real intake signals with consent, then routed ---------------------------
            m = args.emails
            codes: dict[str, str] = {}
            for index in range(m):
                response = await intake_client.post(
                    "/v1/signals",
                    json={
                        "text": f"Er ligt afval naast container {index}.",
                        "channel": "web",
                        "language": "nl",
                        "reporter": {"email": f"bewoner{index}@example.org", "consent": True},
                    },
                    headers=auth,
                )
                response.raise_for_status()
                created = response.json()
                codes[created["id"]] = created["tracking_code"]
            await asyncio.sleep(1.0)
            event_times: dict[str, float] = {}
            started = time.time()
            for signal_id, code in codes.items():
                routed = SignalRouted(
                    signal_id=signal_id,
                    case_id=new_id(),
                    tracking_code=code,
                    responsible="afval",
                    priority="normal",
                    rule_id="afval",
                    service_promise="Binnen 5 werkdagen.",
                )
                event = make_event(tenant=TENANT, service="routing", data=routed)
                event_times[code] = event.time.timestamp()
                await bus.publish(routed.bus_subject(TENANT), event)
            await wait_for(lambda: len(mails.arrivals) >= m, timeout=600)
            mail_rate = m / (max(mails.arrivals.values()) - started)
            mail_latency = [mails.arrivals[code] - event_times[code] for code in codes.values()]

            # --- references on the same receivers ------------------------------------------------
            http_reference = await reference_http(receiver.url, n, settings.delivery_concurrency)
            smtp_reference = await reference_smtp(smtp.port, m, settings.delivery_concurrency)
    finally:
        await intake_client.aclose()
        supervisor.stop_all()
        smtp.stop()
        receiver.server.shutdown()
        nats.stop()

    backend = "PostgreSQL" if "postgresql" in database_url else "SQLite"
    print(f"notifier benchmark ({backend}, concurrency {settings.delivery_concurrency}, this machine)")
    print(f"  webhooks  {n:5d}  {webhook_rate:8.1f}/s   reference: bare POSTs {http_reference:8.1f}/s")
    print(f"            signal.routed -> received   {summary(webhook_latency)}")
    print(f"            duplicates by webhook-id: {receiver.duplicates}")
    print(
        f"  webhooks  {args.paced:5d}  one every 200 ms: signal.routed -> received   {summary(paced_latency)}"
    )
    print(f"  e-mails   {m:5d}  {mail_rate:8.1f}/s   reference: bare SMTP sends {smtp_reference:8.1f}/s")
    print(f"            signal.routed -> accepted   {summary(mail_latency)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--emails", type=int, default=200)
    parser.add_argument("--paced", type=int, default=20, help="webhooks sent one at a time, for latency")
    parser.add_argument(
        "--database-url", default="", help="notifier's database (default: SQLite in a temp dir)"
    )
    asyncio.run(main(parser.parse_args()))
