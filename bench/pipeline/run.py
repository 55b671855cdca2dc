"""Pipeline benchmark (issue 8): signals end to end through every service, on this machine.

    .venv/bin/python bench/pipeline/run.py [--signals 3000] [--rate 100] [--seconds 30] [--out DIR]

It starts, on loopback only: nats-server, a webhook receiver, an SMTP receiver, and intake,
classifier, routing and notifier as their own processes (SQLite, as ``make run``). The demo
tenant's ``afval`` rule is set to forward to the partner ``woonpartners``, whose webhook endpoint
is the local receiver, so every signal ends in two webhooks (``signal.routed`` and the case's first
``case.status_changed``) and one acknowledgement e-mail; a signal missing any of them counts as lost.

1. **Reference**: a bare FastAPI endpoint that validates the same body and answers 201 without
   writing, loaded by the same load generator in the same run. The load generator runs in a
   process of its own, apart from the receivers and the reference, which share this one.
2. **Sustained**: ``--signals`` posted as fast as intake takes them; throughput end to end is the
   number of signals over the time from the first POST to the last webhook and e-mail.
3. **Fixed rate**: ``--rate`` signals per second for ``--seconds``; latency per stage from the
   CloudEvent times on the bus, and end to end from when each POST was due (not when a busy client
   sent it) until both its webhooks and its e-mail arrived: the p99 target's measure.

The report also counts notifier's requests to intake for residents' contacts per e-mail (from
intake's request counter): look-ups carry the reads of the mails notifier started together.

Writes ``report.md`` and ``latency.png`` to ``--out`` (default ``bench/results/pipeline``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import nats
import uvicorn
import yaml
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response
from nats.js.api import DeliverPolicy

from civicsignals.common.tenants import prepare_dev_tenant
from civicsignals.devstack.cli import service_env
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor
from civicsignals.intake.models import SignalCreate

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "classifier", "routing", "notifier")
TEXT = "Er ligt al dagen afval en een kapotte vuilniszak naast de container bij nummer {n}."


def body(n: int) -> dict[str, Any]:
    return {
        "text": TEXT.format(n=n),
        "channel": "web",
        "kind": "report",
        "language": "nl",
        "reporter": {"name": "Bench Bewoner", "email": f"bewoner{n}@example.org", "consent": True},
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


END_TO_END = "end to end (POST→webhooks and e-mail)"


# --- receivers -------------------------------------------------------------------------------


@dataclass
class Arrivals:
    """When each signal's webhook and e-mail arrived (monotonic wall clock, seconds)."""

    webhooks: dict[str, float] = field(default_factory=dict)
    status_webhooks: dict[str, float] = field(default_factory=dict)
    mails: dict[str, float] = field(default_factory=dict)
    webhook_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(self, code: str) -> bool:
        """Everything a signal must bring arrived: both webhooks (routed, status) and the e-mail."""
        return code in self.webhooks and code in self.status_webhooks and code in self.mails

    def finished_at(self, code: str) -> float:
        return max(
            self.webhooks.get(code, 0.0), self.status_webhooks.get(code, 0.0), self.mails.get(code, 0.0)
        )


def webhook_app(arrivals: Arrivals) -> FastAPI:
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        now = time.time()
        event = json.loads(await request.body())
        tracking = event.get("data", {}).get("tracking_code")
        with arrivals.lock:
            arrivals.webhook_ids.append(request.headers.get("webhook-id", ""))
            if event.get("type", "").endswith("signal.routed.v1") and tracking:
                arrivals.webhooks.setdefault(tracking, now)
            elif event.get("type", "").endswith("case.status_changed.v1") and tracking:
                arrivals.status_webhooks.setdefault(tracking, now)
        return Response(status_code=204)

    return app


class MailRecorder:
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        subject = str(message_from_bytes(envelope.content)["Subject"] or "")
        code = subject.rsplit("(", 1)[-1].rstrip(")") if "(" in subject else subject
        with self.arrivals.lock:
            self.arrivals.mails.setdefault(code, now)
        return "250 OK"


class Server(threading.Thread):
    """A uvicorn server in a thread, for the receivers and the bare reference."""

    def __init__(self, app: FastAPI, port: int) -> None:
        super().__init__(daemon=True)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=5)


def bare_reference_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/signals", status_code=201)
    async def post_signal(payload: SignalCreate) -> dict[str, str]:
        return {"id": "0", "tracking_code": "0000-0000-0000", "status_url": "http://127.0.0.1/x"}

    return app


# --- load generator ---------------------------------------------------------------------------


@dataclass
class Load:
    started: dict[str, float] = field(default_factory=dict)  # tracking code -> POST start (time.time)
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0
    cpu_s: float = 0.0  # CPU time of the load generator's process for this load


async def post_all(
    url: str, key: str, count: int, *, concurrency: int, rate: float | None, offset: int = 0
) -> Load:
    """POST ``count`` signals: as fast as possible with ``concurrency`` clients, or at ``rate``/s.

    Runs in a process of its own (``load_in_own_process``), so the receivers of this process and
    the load generator do not share one interpreter lock. On aiohttp: httpx cost about 2 ms of CPU
    a request here, which capped the generator near the rates it was meant to measure."""
    load = Load()
    headers = {"Authorization": f"Bearer {key}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    load.first = time.time()
    begin = time.monotonic()

    async def worker(client: aiohttp.ClientSession) -> None:
        while True:
            try:
                n = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:
                delay = begin + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            # At a fixed rate a signal's clock starts when it was due, not when a client got round
            # to sending it: a stack that falls behind would otherwise hold back the very requests
            # that measure it ("coordinated omission"), and the tail would look shorter than it is.
            sent = load.first + n / rate if rate else time.time()
            async with client.post(url, json=body(n + offset), headers=headers) as response:
                answer = await response.read()
            load.latencies.append(time.time() - sent)
            load.statuses[response.status] = load.statuses.get(response.status, 0) + 1
            if response.status == 201:
                load.started[json.loads(answer)["tracking_code"]] = sent

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    load.last = time.time()
    return load


def _load_process(url: str, key: str, count: int, concurrency: int, rate: float | None, offset: int) -> Load:
    started = time.process_time()
    load = asyncio.run(post_all(url, key, count, concurrency=concurrency, rate=rate, offset=offset))
    load.cpu_s = time.process_time() - started
    return load


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from ``/proc/<pid>/stat`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_in_own_process(
    url: str, key: str, count: int, *, concurrency: int, rate: float | None, offset: int = 0
) -> Load:
    """``post_all`` in a child process (spawned, so it inherits none of this process's threads)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return await asyncio.get_running_loop().run_in_executor(
            pool, _load_process, url, key, count, concurrency, rate, offset
        )


# --- the stack --------------------------------------------------------------------------------


class Stack:
    def __init__(self, root: Path, smtp_port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.key = prepare_dev_tenant(REPO / "config" / "tenants", self.data)
        rules_path = self.data / "tenants" / "demo" / "rules.yaml"
        rules = yaml.safe_load(rules_path.read_text(encoding="utf-8"))
        for rule in rules["rules"]:
            if rule["id"] == "afval":
                rule["then"]["partners"] = ["woonpartners"]
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True), encoding="utf-8")
        self.nats = NatsServer(root / "nats").start()
        self.supervisor = ProcessSupervisor(root / "logs")
        self.ports = {name: free_port() for name in SERVICES}
        for name in SERVICES:
            env = service_env(name, data_dir=self.data, nats_url=self.nats.url, smtp_port=smtp_port)
            prefix = f"CIVIC_{name.upper()}_"
            env[f"{prefix}PORT"] = str(self.ports[name])
            env[f"{prefix}LOG_LEVEL"] = "WARNING"
            env[f"{prefix}RATE_LIMIT_PER_S"] = "100000"  # one key posts every signal of the run
            env[f"{prefix}RATE_LIMIT_BURST"] = "100000"
            if name == "notifier":
                env[f"{prefix}INTAKE_URL"] = self.url("intake")
            self.supervisor.start(name, [sys.executable, "-m", f"civicsignals.{name}", "serve"], env=env)
        for name in SERVICES:
            # The classifier builds its cold-start model first (92 s on a slow machine, 2026-12-07).
            self.supervisor.wait_http_ready(name, f"{self.url(name)}/readyz", timeout=600)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process of the stack, and of this one (the receivers)."""
        pids = {name: self.supervisor.pid(name) for name in SERVICES}
        pids["nats-server"] = self.nats.pid
        used = {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
        used["receivers (bench process)"] = time.process_time()
        return used

    def stop(self) -> None:
        self.supervisor.stop_all()
        self.nats.stop()


def register_partner(stack: Stack, receiver_url: str) -> None:
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url("notifier"), headers=headers, timeout=30) as client:
        response = client.post("/v1/partners", json={"code": "woonpartners"})
        if response.status_code not in (201, 409):
            raise SystemExit(f"cannot register the partner: {response.status_code} {response.text}")
        response = client.post("/v1/partners/woonpartners/endpoints", json={"url": receiver_url})
        if response.status_code != 201:
            raise SystemExit(f"cannot register the endpoint: {response.status_code} {response.text}")


async def event_times(nats_url: str, subject: str) -> dict[str, float]:
    """tracking code (or signal id) -> CloudEvent time, for every event on ``subject``."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        info = await js.stream_info("CIVIC", subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values())
        found: dict[str, float] = {}
        done = asyncio.Event()
        seen = 0

        async def collect(msg: Any) -> None:
            nonlocal seen
            seen += 1
            event = json.loads(msg.data)
            data = event["data"]
            key = data.get("tracking_code") or data["signal_id"]
            found.setdefault(key, datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp())
            if seen >= expected:
                done.set()

        if expected:
            sub = await js.subscribe(
                subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=collect
            )
            await asyncio.wait_for(done.wait(), timeout=120)
            await sub.unsubscribe()
        return found
    finally:
        await client.close()


CONTACT_PATHS = ("/v1/contacts/lookup", "/v1/signals/{signal_id}/contact")


def contact_requests(intake_url: str) -> dict[str, float]:
    """How many requests notifier made to intake for contacts, by route, from intake's own request
    counter (look-ups carry the reads of the mails the dispatcher started together)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = dict.fromkeys(CONTACT_PATHS, 0.0)
    text = httpx.get(f"{intake_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "starlette_requests_total" and sample.labels.get("path") in counts:
                counts[sample.labels["path"]] += sample.value
    return counts


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return predicate()


def describe(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p95_ms": percentile(values, 95) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "n": float(len(values)),
    }


async def main_async(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="civic-bench-pipeline-"))
    arrivals = Arrivals()
    receiver_port, reference_port, smtp_port = free_port(), free_port(), free_port()
    receiver = Server(webhook_app(arrivals), receiver_port)
    receiver.start()
    reference = Server(bare_reference_app(), reference_port)
    reference.start()
    smtp = Controller(MailRecorder(arrivals), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    await asyncio.sleep(1.0)

    print("reference: bare FastAPI endpoint …", flush=True)
    ref = await load_in_own_process(
        f"http://127.0.0.1:{reference_port}/v1/signals",
        "x",
        args.signals,
        concurrency=args.concurrency,
        rate=None,
    )
    ref_rate = args.signals / (ref.last - ref.first)

    print("starting the stack …", flush=True)
    stack = Stack(root, smtp_port)
    results: dict[str, Any] = {}
    try:
        register_partner(stack, f"http://127.0.0.1:{receiver_port}/hook")
        # Warm up: the first signals pay for model loading, connections and JIT-free caches.
        warm = await load_in_own_process(
            f"{stack.url('intake')}/v1/signals", stack.key, 50, concurrency=8, rate=None, offset=10**6
        )
        await wait_until(lambda: all(arrivals.complete(c) for c in warm.started), 120)

        print(f"sustained: {args.signals} signals …", flush=True)
        cpu_before = stack.cpu()
        sustained = await load_in_own_process(
            f"{stack.url('intake')}/v1/signals",
            stack.key,
            args.signals,
            concurrency=args.concurrency,
            rate=None,
        )
        codes = list(sustained.started)
        complete = await wait_until(lambda: all(arrivals.complete(c) for c in codes), args.drain_timeout)
        done_at = max(arrivals.finished_at(c) for c in codes)
        cpu_after = stack.cpu()
        cpu_ms = {name: (cpu_after[name] - cpu_before[name]) * 1000 / len(codes) for name in cpu_before}
        cpu_ms["load generator"] = sustained.cpu_s * 1000 / len(codes)
        lost = sum(1 for c in codes if not arrivals.complete(c))
        results["sustained"] = {
            "posted": args.signals,
            "accepted": len(codes),
            "statuses": sustained.statuses,
            "accept_rate": len(codes) / (sustained.last - sustained.first),
            "end_to_end_rate": len(codes) / (done_at - sustained.first) if complete else float("nan"),
            "lost": lost,
            "post_latency": describe(sustained.latencies),
            "cpu_ms_per_signal": cpu_ms,
        }

        print(f"fixed rate: {args.rate}/s for {args.seconds}s …", flush=True)
        count = int(args.rate * args.seconds)
        fixed = await load_in_own_process(
            f"{stack.url('intake')}/v1/signals",
            stack.key,
            count,
            concurrency=args.concurrency,
            rate=args.rate,
            offset=10**7,
        )
        fixed_codes = list(fixed.started)
        await wait_until(
            lambda: all(arrivals.complete(c) for c in fixed_codes),
            args.drain_timeout,
        )
        received = await event_times(stack.nats.url, "civic.demo.signal.received")
        classified_by_signal = await event_times(stack.nats.url, "civic.demo.signal.classified")
        routed = await event_times(stack.nats.url, "civic.demo.signal.routed")
        stages: dict[str, list[float]] = {
            k: []
            for k in (
                "intake (POST→received)",
                "classifier",
                "routing",
                "webhook",
                "e-mail",
                "POST→routed webhook",
                END_TO_END,
            )
        }
        for code in fixed_codes:
            if code not in received or code not in routed:
                continue
            classified = classified_by_signal.get(code)
            if classified is None:
                continue
            stages["intake (POST→received)"].append(received[code] - fixed.started[code])
            stages["classifier"].append(classified - received[code])
            stages["routing"].append(routed[code] - classified)
            if code in arrivals.webhooks:
                stages["webhook"].append(arrivals.webhooks[code] - routed[code])
                stages["POST→routed webhook"].append(arrivals.webhooks[code] - fixed.started[code])
            if code in arrivals.mails:
                stages["e-mail"].append(arrivals.mails[code] - routed[code])
            if arrivals.complete(code):
                stages[END_TO_END].append(arrivals.finished_at(code) - fixed.started[code])
        results["fixed_rate"] = {
            "rate": args.rate,
            "seconds": args.seconds,
            "accepted": len(fixed_codes),
            "achieved_rate": len(fixed.latencies) / (fixed.last - fixed.first),
            "statuses": fixed.statuses,
            "lost": sum(1 for c in fixed_codes if not arrivals.complete(c)),
            "stages": {name: describe(values) for name, values in stages.items()},
        }
        results["duplicate_webhook_ids"] = len(arrivals.webhook_ids) - len(set(arrivals.webhook_ids))
        results["contact_requests"] = {
            "by_route": contact_requests(stack.url("intake")),
            "mails": len(arrivals.mails),  # warm-up, sustained and fixed rate: one mail a signal
        }
        results["reference"] = {"rate": ref_rate, "post_latency": describe(ref.latencies)}
        write_report(out, args, results, stages)
    finally:
        stack.stop()
        smtp.stop()
        receiver.stop()
        reference.stop()
    print(json.dumps(results, indent=2, default=str))
    return 0


def write_report(
    out: Path, args: argparse.Namespace, results: dict[str, Any], stages: dict[str, list[float]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.8))
    names = [name for name, values in stages.items() if values]
    axis.boxplot(
        [[v * 1000 for v in stages[name]] for name in names],
        orientation="horizontal",
        whis=(5, 95),  # as the title says; matplotlib's default is 1.5 times the box
        showfliers=False,
    )
    axis.set_yticks(range(1, len(names) + 1), names)
    axis.set_xlabel("milliseconds")
    axis.set_title(f"Latency per stage at {args.rate:g} signals/s for {args.seconds:g} s (whiskers 5-95 %)")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=120)

    sustained, fixed, reference = results["sustained"], results["fixed_rate"], results["reference"]
    lookups, singles = (results["contact_requests"]["by_route"][path] for path in CONTACT_PATHS)
    mails = results["contact_requests"]["mails"]
    requests_per_mail = (lookups + singles) / mails if mails else float("nan")
    refused = sum(
        count for load in (sustained, fixed) for status, count in load["statuses"].items() if status != 201
    )
    lines = [
        "# Pipeline benchmark",
        "",
        f"Machine: this one ({args.signals} signals sustained, {args.rate:g}/s for {args.seconds:g} s at fixed rate).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| bare FastAPI reference, POSTs accepted per second | {reference['rate']:.0f} | — |",
        f"| intake, signals accepted per second (durable write + outbox) | {sustained['accept_rate']:.0f} | — |",
        f"| end to end, signals per second (POST → webhook and e-mail) | {sustained['end_to_end_rate']:.0f} | ≥ 300 |",
        f"| end to end p99 at {args.rate:g}/s, ms (POST → both webhooks and the e-mail) | "
        f"{fixed['stages'][END_TO_END]['p99_ms']:.0f} | ≤ 1000 at 100/s |",
        f"| lost: a signal without its routed webhook, status webhook or e-mail (sustained + fixed rate) | {sustained['lost'] + fixed['lost']} | 0 |",
        f"| POSTs not accepted (sustained + fixed rate; any answer but 201) | {refused} | 0 |",
        f"| duplicate webhook-ids | {results['duplicate_webhook_ids']} | 0 |",
        f"| notifier's requests to intake for contacts, per resident e-mail | {requests_per_mail:.2f} "
        f"({lookups:.0f} look-ups, {singles:.0f} single reads, {mails} e-mails) | — |",
        "",
        f"Latency at {args.rate:g} signals/s (offered; achieved {fixed['achieved_rate']:.1f}/s), each signal's",
        "clock starting when it was due: intake, classifier and routing from the CloudEvent times on",
        "the bus (so the outbox relay's wait counts to the next stage), webhook and e-mail from",
        "`signal.routed`, and end to end from the POST until both webhooks and the e-mail arrived:",
        "",
        "| stage | p50 ms | p95 ms | p99 ms | n |",
        "|---|---|---|---|---|",
    ]
    for name, figures in fixed["stages"].items():
        lines.append(
            f"| {name} | {figures['p50_ms']:.0f} | {figures['p95_ms']:.0f} | {figures['p99_ms']:.0f} | {figures['n']:.0f} |"
        )
    cpu = sustained["cpu_ms_per_signal"]
    outside = ("load generator", "receivers (bench process)")  # stand-ins for residents and partners
    on_stack = sum(value for name, value in cpu.items() if name not in outside)
    lines += [
        "",
        "CPU time per signal in the sustained run (each process's user + system time over the run, from",
        "the first POST until the last webhook and e-mail arrived, divided by the signals):",
        "",
        "| process | CPU ms per signal |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in cpu.items()),
        f"| **the services and NATS** | **{on_stack:.2f}** |",
        "",
        f"So {os.cpu_count()} cores, with nothing else running, could carry at most about "
        f"{1000 * (os.cpu_count() or 1) / on_stack:.0f} signals per second through the services and NATS.",
    ]
    lines += ["", "![latency per stage](latency.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline"))
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
