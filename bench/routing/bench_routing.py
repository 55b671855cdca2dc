"""Routing benchmark: signals routed per second with 500 rules, and the latency routing adds.

Prints figures beside references measured in the same run, on the same machine:

1. rule evaluation alone (``RuleSet.decide``) with 500 rules, beside the demo tenant's rules;
2. the whole routing step in-process (``flows.route_signal``: rules, case, history, outbox rows,
   one SQLite transaction), signals per second, with 500 rules and with the demo rules;
3. the latency the routing stage adds to a signal over a real nats-server: from publishing
   ``signal.classified`` to receiving ``signal.routed``, beside a bare JetStream publish → core
   subscriber round trip (what any stage costs at least).

Run: ``.venv/bin/python bench/routing/bench_routing.py [--signals 2000] [--latency 200]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import yaml

from civicsignals.common.events import CloudEvent, SignalClassified, SignalRouted, make_event
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.common.tenants import add_key
from civicsignals.devstack.nats import NatsServer
from civicsignals.routing import flows
from civicsignals.routing.app import create_app
from civicsignals.routing.rules import RuleSet, SignalFacts, parse_rules
from civicsignals.routing.settings import RoutingSettings

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "tenants" / "demo"
DEPARTMENTS = [f"afdeling-{i}" for i in range(20)]
TOPICS = [f"topic-{i}" for i in range(250)]
WORDS = [
    "lekkage",
    "schimmel",
    "gaslucht",
    "brand",
    "kapot",
    "graffiti",
    "ratten",
    "geluid",
    "stank",
    "losse",
]


def many_rules(count: int = 500) -> str:
    """``count`` rules of every kind of condition; the signals' topics are spread over all of them."""
    rng = random.Random(7)
    rules: list[dict[str, Any]] = []
    for index in range(count):
        when: dict[str, Any] = {"topic": [TOPICS[index % len(TOPICS)]]}
        kind = index % 5
        if kind == 1:
            when["words"] = rng.sample(WORDS, 3)
        elif kind == 2:
            when["channel"] = ["app", "web"]
        elif kind == 3:
            when["area"] = [f"wijk-{index % 9}"]
        elif kind == 4:
            when["confidence"] = {"min": 0.5}
        then: dict[str, Any] = {
            "responsible": DEPARTMENTS[index % len(DEPARTMENTS)],
            "sla_days": 1 + index % 10,
        }
        if index % 7 == 0:
            then["informed"] = [DEPARTMENTS[(index + 3) % len(DEPARTMENTS)]]
        rules.append({"id": f"regel-{index}", "when": when, "then": then, "continue": index % 11 == 0})
    rules.append({"id": "overig", "when": {}, "then": {"responsible": DEPARTMENTS[0]}})
    document = {"version": 1, "triage": {"responsible": DEPARTMENTS[0], "sla_days": 2}, "rules": rules}
    return yaml.safe_dump(document, sort_keys=False)


def sample_facts(count: int, topics: list[str]) -> list[SignalFacts]:
    rng = random.Random(11)
    return [
        SignalFacts(
            topic=rng.choice(topics),
            subtopic=None,
            kind="report",
            channel=rng.choice(["web", "app", "phone"]),
            needs_review=False,
            confidence=rng.random() * 0.6 + 0.4,
            language="nl",
            area=f"wijk-{rng.randrange(9)}",
            district=None,
            text="Er is iets " + " ".join(rng.sample(WORDS, 2)) + " bij ons in de straat",
            received_at=datetime.now(UTC),
        )
        for _ in range(count)
    ]


def time_decide(rules: RuleSet, signals: list[SignalFacts], explain: bool = False) -> float:
    started = time.perf_counter()
    for facts in signals:
        rules.decide(facts, explain=explain)
    return len(signals) / (time.perf_counter() - started)


def make_tenant(root: Path, code: str, rules_text: str, departments: list[str]) -> None:
    folder = root / code
    folder.mkdir(parents=True)
    (folder / "tenant.yaml").write_text(yaml.safe_dump({"name": code}), encoding="utf-8")
    (folder / "departments.yaml").write_text(
        yaml.safe_dump({"departments": [{"code": d, "name": d} for d in departments]}), encoding="utf-8"
    )
    (folder / "rules.yaml").write_text(rules_text, encoding="utf-8")
    add_key(folder, ["admin"])


def classified(tenant_topics: list[str], rng: random.Random) -> SignalClassified:
    return SignalClassified(
        signal_id=new_id(),
        topic=rng.choice(tenant_topics),
        confidence=0.8,
        alternatives=[],
        kind="report",
        needs_review=False,
        model_version="bench",
        tracking_code=new_tracking_code(),
        channel="web",
        text="Er is iets " + " ".join(rng.sample(WORDS, 2)) + " bij ons in de straat",
    )


async def routing_step(work: Path, nats_url: str, count: int) -> dict[str, float]:
    """route_signal in-process against SQLite: signals per second for both rule sets."""
    tenants = work / "tenants"
    make_tenant(tenants, "groot", many_rules(), DEPARTMENTS)
    demo_departments = [
        d["code"] for d in yaml.safe_load((DEMO / "departments.yaml").read_text())["departments"]
    ]
    make_tenant(tenants, "demo", (DEMO / "rules.yaml").read_text(encoding="utf-8"), demo_departments)
    shutil.copy(DEMO / "partners.yaml", tenants / "demo" / "partners.yaml")
    settings = RoutingSettings(
        database_url=f"sqlite+aiosqlite:///{work / 'routing.db'}",
        nats_url=nats_url,
        tenants_dir=tenants,
        data_dir=work / "data",
        overdue_check_interval_s=3600,
        rules_watch_interval_s=3600,
        log_level="WARNING",
    )
    app = create_app(settings)
    rng = random.Random(5)
    results: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=20)
        context = app.state.routing
        for tenant, topics in (("groot", TOPICS), ("demo", ["afval", "wonen", "burgerzaken", "onbekend"])):
            events = [
                make_event(tenant=tenant, service="classifier", data=classified(topics, rng))
                for _ in range(count)
            ]
            await flows.route_signal(context, events[0])  # warm the rules cache
            started = time.perf_counter()
            for event in events[1:]:
                await flows.route_signal(context, event)
            results[tenant] = (count - 1) / (time.perf_counter() - started)
        await drain_outbox(app)
    return results


async def drain_outbox(app: Any, timeout: float = 300.0) -> None:
    """Let the relay publish everything before the app stops (stopping it mid-batch can hang)."""
    deadline = time.monotonic() + timeout
    while await app.state.runtime.relay.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def latency(work: Path, nats_url: str, count: int) -> tuple[list[float], list[float]]:
    """Publish signal.classified → signal.routed received, and a bare publish → receive, in ms."""
    tenants = work / "tenants-latency"
    make_tenant(tenants, "groot", many_rules(), DEPARTMENTS)
    settings = RoutingSettings(
        database_url=f"sqlite+aiosqlite:///{work / 'latency.db'}",
        nats_url=nats_url,
        tenants_dir=tenants,
        data_dir=work / "data-latency",
        outbox_poll_interval_s=0.5,
        overdue_check_interval_s=3600,
        rules_watch_interval_s=3600,
        log_level="WARNING",
    )
    app = create_app(settings)
    client = await nats.connect(nats_url)
    js = client.jetstream()
    arrivals: dict[str, asyncio.Future[float]] = {}

    async def on_routed(message: Any) -> None:
        event = CloudEvent.from_json(message.data)
        future = arrivals.get(str(event.data["signal_id"]))
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    async def on_echo(message: Any) -> None:
        future = arrivals.get(message.data.decode())
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    await client.subscribe(SignalRouted.bus_subject("groot"), cb=on_routed)
    await client.subscribe("civic.groot.bench.echo", cb=on_echo)
    await client.flush()
    rng = random.Random(9)
    routed: list[float] = []
    bare: list[float] = []
    loop = asyncio.get_running_loop()
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=20)
        await asyncio.sleep(1.0)  # the consumer is subscribed
        for index in range(count + 5):
            data = classified(TOPICS, rng)
            arrivals[data.signal_id] = loop.create_future()
            event = make_event(tenant="groot", service="classifier", data=data)
            started = time.perf_counter()
            await js.publish(
                SignalClassified.bus_subject("groot"), event.to_json(), headers={"Nats-Msg-Id": event.id}
            )
            arrived = await asyncio.wait_for(arrivals[data.signal_id], timeout=30)
            if index >= 5:  # the first few warm caches and connections
                routed.append((arrived - started) * 1000)
            token = new_id()
            arrivals[token] = loop.create_future()
            started = time.perf_counter()
            await js.publish("civic.groot.bench.echo", token.encode())
            arrived = await asyncio.wait_for(arrivals[token], timeout=30)
            if index >= 5:
                bare.append((arrived - started) * 1000)
        await drain_outbox(app)
    await client.close()
    return routed, bare


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=2000, help="signals for the throughput figures")
    parser.add_argument("--latency", type=int, default=200, help="signals for the latency figures")
    args = parser.parse_args()

    big = parse_rules(many_rules(), "500 rules")
    demo = parse_rules((DEMO / "rules.yaml").read_text(encoding="utf-8"), "demo rules.yaml")
    signals = sample_facts(args.signals * 5, TOPICS)
    demo_signals = sample_facts(args.signals * 5, ["afval", "wonen", "burgerzaken", "onbekend"])
    print(f"rule evaluation ({len(signals)} signals, one core):")
    print(f"  500 rules                  {time_decide(big, signals):>10,.0f} signals/s")
    print(f"  500 rules, with explain    {time_decide(big, signals, explain=True):>10,.0f} signals/s")
    print(f"  demo rules ({len(demo.rules)}), reference {time_decide(demo, demo_signals):>10,.0f} signals/s")

    work = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    server = NatsServer(work / "nats" / "store", log_file=work / "nats.log")
    server.start()
    try:
        step = await routing_step(work, server.url, args.signals)
        print(f"routing step in-process (rules + case + history + outbox, SQLite, {args.signals} signals):")
        print(f"  500 rules                  {step['groot']:>10,.0f} signals/s")
        print(f"  demo rules, reference      {step['demo']:>10,.0f} signals/s")
        routed, bare = await latency(work, server.url, args.latency)
        print(f"latency over nats-server ({len(routed)} signals, one at a time, ms):")
        print(
            f"  signal.classified -> signal.routed   median {statistics.median(routed):6.2f}"
            f"  p95 {percentile(routed, 0.95):6.2f}"
        )
        print(
            f"  bare JetStream publish -> receive    median {statistics.median(bare):6.2f}"
            f"  p95 {percentile(bare, 0.95):6.2f}   (reference)"
        )
        print(f"  routing adds about {statistics.median(routed) - statistics.median(bare):.2f} ms (median)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
