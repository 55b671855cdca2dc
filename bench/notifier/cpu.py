"""Notifier's CPU time per signal, as its own process, under the pipeline's mix of events.

    .venv/bin/python bench/notifier/cpu.py [--signals 1000] [--rounds 1] [--source DIR ...]

Each signal brings notifier what it brings in ``bench/pipeline/run.py``: ``signal.received`` from
intake (a resident who gave an address and consent), ``signal.routed`` naming the partner
``woonpartners`` and the case's first ``case.status_changed``; so one acknowledgement e-mail (its
address read from intake) and two signed webhooks. Intake is real (its own process), classifier and
routing are left out: this process publishes ``signal.routed`` and ``case.status_changed`` itself,
right after intake accepted the signal. So a run takes a minute, not several, and there is less else
on the machine.

It prints notifier's CPU time (user + system, from ``/proc``) per signal from the first POST to the
last webhook and mail, split into the event loop's thread and the others (SQLite's worker threads,
DNS), and the throughput. ``--source DIR`` runs notifier from another copy of its ``src`` folder
(e.g. a copy taken before a change); with several sources and ``--rounds`` they run alternately, so
a before/after comparison sees the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import nats
from aiohttp import web
from aiosmtpd.controller import Controller

from civicsignals.common.events import CaseStatusChanged, SignalRouted, make_event
from civicsignals.common.ids import new_id
from civicsignals.common.tenants import prepare_dev_tenant
from civicsignals.devstack.cli import service_env
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor

REPO = Path(__file__).resolve().parents[2]
TENANT = "demo"
PARTNER = "woonpartners"


class Arrivals:
    def __init__(self) -> None:
        self.routed: set[str] = set()
        self.status: set[str] = set()
        self.mails: set[str] = set()
        self.webhook_ids: list[str] = []
        self.last = 0.0

    def complete(self, codes: list[str]) -> bool:
        return all(c in self.routed and c in self.status and c in self.mails for c in codes)


def webhook_receiver(arrivals: Arrivals) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        code = event.get("data", {}).get("tracking_code")
        arrivals.webhook_ids.append(request.headers.get("webhook-id", ""))
        if event.get("type", "").endswith("signal.routed.v1"):
            arrivals.routed.add(code)
        elif event.get("type", "").endswith("case.status_changed.v1"):
            arrivals.status.add(code)
        arrivals.last = time.monotonic()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


class MailRecorder:
    def __init__(self, arrivals: Arrivals, loop: asyncio.AbstractEventLoop) -> None:
        self.arrivals = arrivals
        self.loop = loop

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        subject = str(message_from_bytes(envelope.content)["Subject"] or "")
        code = subject.rsplit("(", 1)[-1].rstrip(")") if "(" in subject else subject
        self.loop.call_soon_threadsafe(self._arrived, code)
        return "250 OK"

    def _arrived(self, code: str) -> None:
        self.arrivals.mails.add(code)
        self.arrivals.last = time.monotonic()


def cpu_of(pid: int) -> tuple[float, float]:
    """(all threads, the main thread) user + system seconds of a process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(path: Path) -> float:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return of(Path(f"/proc/{pid}/stat")), of(Path(f"/proc/{pid}/task/{pid}/stat"))


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def one_round(args: argparse.Namespace, source: str | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-notifier-cpu-"))
    data = root / "data"
    key = prepare_dev_tenant(REPO / "config" / "tenants", data)
    arrivals = Arrivals()
    loop = asyncio.get_running_loop()
    smtp_port, hook_port = free_port(), free_port()
    smtp = Controller(MailRecorder(arrivals, loop), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    runner = web.AppRunner(webhook_receiver(arrivals), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port, backlog=512).start()
    nats_server = NatsServer(root / "nats").start()
    supervisor = ProcessSupervisor(root / "logs")
    ports = {name: free_port() for name in ("intake", "notifier")}
    for name in ("intake", "notifier"):
        env = service_env(name, data_dir=data, nats_url=nats_server.url, smtp_port=smtp_port)
        prefix = f"CIVIC_{name.upper()}_"
        env[f"{prefix}PORT"] = str(ports[name])
        env[f"{prefix}LOG_LEVEL"] = "WARNING"
        env[f"{prefix}RATE_LIMIT_PER_S"] = "100000"
        env[f"{prefix}RATE_LIMIT_BURST"] = "100000"
        if name == "notifier":
            env[f"{prefix}INTAKE_URL"] = f"http://127.0.0.1:{ports['intake']}"
            if source:
                env["PYTHONPATH"] = os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])
        supervisor.start(name, [sys.executable, "-m", f"civicsignals.{name}", "serve"], env=env)
    try:
        for name in ("intake", "notifier"):
            await supervisor.wait_http_ready_async(
                name, f"http://127.0.0.1:{ports[name]}/readyz", timeout=120
            )
        headers = {"Authorization": f"Bearer {key}"}
        notifier_pid = supervisor.pid("notifier")
        assert notifier_pid is not None
        async with aiohttp.ClientSession(headers=headers) as http:
            base = f"http://127.0.0.1:{ports['notifier']}"
            async with http.post(f"{base}/v1/partners", json={"code": PARTNER}) as response:
                assert response.status in (201, 409), await response.text()
            async with http.post(
                f"{base}/v1/partners/{PARTNER}/endpoints", json={"url": f"http://127.0.0.1:{hook_port}/hook"}
            ) as response:
                assert response.status == 201, await response.text()
            bus = await nats.connect(nats_server.url)
            js = bus.jetstream()
            intake = f"http://127.0.0.1:{ports['intake']}/v1/signals"

            async def signals(count: int, offset: int) -> tuple[list[str], float]:
                codes: list[str] = []
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(count):
                    queue.put_nowait(offset + n)

                async def worker() -> None:
                    while not queue.empty():
                        n = queue.get_nowait()
                        body = {
                            "text": f"Er ligt al dagen afval naast de container bij nummer {n}.",
                            "channel": "web",
                            "kind": "report",
                            "language": "nl",
                            "reporter": {
                                "name": "Bench",
                                "email": f"bewoner{n}@example.org",
                                "consent": True,
                            },
                        }
                        async with http.post(intake, json=body) as response:
                            created = await response.json()
                            assert response.status == 201, created
                        code, signal_id, case_id = created["tracking_code"], created["id"], new_id()
                        routed = SignalRouted(
                            signal_id=signal_id,
                            case_id=case_id,
                            tracking_code=code,
                            responsible="afval",
                            partners=[PARTNER],
                            priority="normal",
                            rule_id="afval",
                            service_promise="Binnen 5 werkdagen.",
                        )
                        changed = CaseStatusChanged(
                            case_id=case_id,
                            signal_id=signal_id,
                            tracking_code=code,
                            to="assigned",
                            actor="routing",
                            sequence=1,
                            responsible="afval",
                            partners=[PARTNER],
                            **{"from": "received"},
                        )
                        for data in (routed, changed):
                            event = make_event(tenant=TENANT, service="routing", data=data)
                            await js.publish(
                                data.bus_subject(TENANT), event.to_json(), headers={"Nats-Msg-Id": event.id}
                            )
                        codes.append(code)

                started = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return codes, started

            warm, _ = await signals(30, 10**6)
            if not await wait_until(lambda: arrivals.complete(warm), 120):
                raise SystemExit("warm-up did not complete; see the logs in " + str(root / "logs"))
            before = cpu_of(notifier_pid)
            codes, started = await signals(args.signals, 0)
            complete = await wait_until(lambda: arrivals.complete(codes), args.drain_timeout)
            after = cpu_of(notifier_pid)
            await bus.close()
        duplicates = len(arrivals.webhook_ids) - len(set(arrivals.webhook_ids))
        n = len(codes)
        return {
            "source": source or "this tree",
            "signals": n,
            "complete": complete,
            "duplicate_webhook_ids": duplicates,
            "notifier_cpu_ms_per_signal": (after[0] - before[0]) * 1000 / n,
            "main_thread_ms_per_signal": (after[1] - before[1]) * 1000 / n,
            "other_threads_ms_per_signal": ((after[0] - after[1]) - (before[0] - before[1])) * 1000 / n,
            "signals_per_s": n / (arrivals.last - started),
            "load_average": os.getloadavg(),
        }
    finally:
        supervisor.stop_all()
        nats_server.stop()
        smtp.stop()
        await runner.cleanup()


async def main_async(args: argparse.Namespace) -> None:
    sources = args.source or [None]
    results: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for source in sources:
            result = await one_round(args, source)
            results.setdefault(result["source"], []).append(result)
            print(json.dumps({"round": round_ + 1, **result}), flush=True)
    for source, runs in results.items():
        cpu = [run["notifier_cpu_ms_per_signal"] for run in runs]
        print(
            f"{source}: notifier CPU {statistics.median(cpu):.2f} ms/signal (median of {len(cpu)}: "
            + ", ".join(f"{value:.2f}" for value in cpu)
            + ")"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument(
        "--source", action="append", help="a notifier src folder to run instead of this tree's"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
