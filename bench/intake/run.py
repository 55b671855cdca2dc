"""Intake benchmark: accepted signals per second with the durable write and the outbox, and the
import rate of ``civicsignals-intake import``.

Everything is local and real: a nats-server with JetStream, intake as its own uvicorn process
(SQLite, then PostgreSQL), and, as the reference measured in the same run with the same load
generator and concurrency, a bare FastAPI process that validates the same body (intake's own
``SignalCreate``, an ``Authorization`` header) and answers 201 without writing anything.

    .venv/bin/python bench/intake/run.py [--seconds 10] [--concurrency 64] [--import-rows 20000]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

For each database it prints accepted/s, p50 and p99 latency and the server's CPU time per accepted
request of intake beside the bare endpoint,
and beside the same bare endpoint inside the service stack every service shares (``stack.py``:
middlewares, OpenTelemetry, Prometheus, the common key check; no write), the ratios (target:
intake at least half the bare rate), how long the outbox relay took to publish every accepted
signal, intake's CPU per contact that notifier reads (one request a mail against look-ups of
16), and the import rate in rows per second (target: 2,000 or more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from civicsignals.common.tenants import ALL_SCOPES, add_key
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import free_port

TENANT = "bench"
#: How many contacts the contact-read comparison reads, and how many one look-up names.
CONTACT_READS = 2_000
LOOKUP_SIZE = 16
HERE = Path(__file__).resolve().parent
BODY = {
    "text": "Er ligt al drie dagen een berg afval naast de container op de Kerkstraat. Bel 06-12345678.",
    "channel": "web",
    "kind": "report",
    "location": {"lat": 52.0116, "lon": 4.7105, "address": {"street": "Kerkstraat", "number": "12"}},
    "reporter": {"name": "A. Bewoner", "email": "bewoner@example.org", "consent": True},
    "metadata": {"portal_reference": "F-1234"},
}


def make_tenant(root: Path) -> str:
    folder = root / "tenants" / TENANT
    folder.mkdir(parents=True)
    (folder / "tenant.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "Bench",
                "languages": ["nl", "en"],
                "timezone": "Europe/Amsterdam",
                "bounding_box": {"min_lat": 51.95, "min_lon": 4.60, "max_lat": 52.08, "max_lon": 4.80},
                "retention": {"contact_days_after_close": 90},
            }
        ),
        encoding="utf-8",
    )
    areas = HERE.parents[1] / "config" / "tenants" / "demo" / "areas.geojson"
    (folder / "areas.geojson").write_text(areas.read_text(encoding="utf-8"), encoding="utf-8")
    _, key = add_key(folder, list(ALL_SCOPES), description="bench")
    return key


def intake_env(root: Path, database_url: str, nats_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "CIVIC_INTAKE_DATABASE_URL": database_url,
        "CIVIC_INTAKE_NATS_URL": nats_url,
        "CIVIC_INTAKE_DATA_DIR": str(root / "data"),
        "CIVIC_INTAKE_TENANTS_DIR": str(root / "tenants"),
        "CIVIC_INTAKE_PORT": str(port),
        "CIVIC_INTAKE_LOG_LEVEL": "WARNING",
        "CIVIC_INTAKE_RATE_LIMIT_PER_S": "1000000",
        "CIVIC_INTAKE_RATE_LIMIT_BURST": "1000000",
    }


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited; see {log}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{args} did not answer on port {port}; see {log}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for this benchmark.

    The load generator must cost far less than the servers it measures, on a machine with two
    cores; a full client (httpx) spends more per request than the bare endpoint does. Both targets
    are measured with this same client.
    """

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        return await self.send(self.request)

    async def send(self, request: bytes) -> int:
        """Send one request and read its answer; the status code."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far; NaN where /proc is missing.

    Beside accepted/s, CPU per accepted request says what each server costs even when the shared
    machine's load changes between the targets' turns (the rate follows the load; this much less).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    proc: subprocess.Popen[bytes], port: int, key: str, args: argparse.Namespace
) -> dict[str, float]:
    """``load`` against the server in ``proc``, plus its CPU microseconds per accepted request."""
    before = cpu_seconds(proc.pid)
    result = asyncio.run(load(port, key, args.seconds, args.concurrency))
    used = cpu_seconds(proc.pid) - before
    result["cpu_us"] = 1e6 * used / result["accepted"] if result["accepted"] else float("nan")
    return result


def http_request(port: int, key: str) -> bytes:
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/signals HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(port: int, key: str, seconds: float, concurrency: int) -> dict[str, float]:
    """``concurrency`` clients, each on its own connection, posting the same body back to back."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    request = http_request(port, key)
    connections = [Connection(port, request) for _ in range(concurrency)]
    for connection in connections[:4]:  # warm up
        for _ in range(5):
            await connection.post()
    stop = time.monotonic() + seconds

    async def worker(connection: Connection) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            status = await connection.post()
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.monotonic() - began
    for connection in connections:
        connection.close()
    latencies.sort()
    accepted = statuses.get(201, 0)
    return {
        "accepted_per_s": accepted / elapsed,
        "accepted": accepted,
        "other": sum(v for k, v in statuses.items() if k != 201),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


async def signals_with_contact(database_url: str, limit: int) -> list[str]:
    """Ids of signals the load left with a sealed contact (every posted body has a reporter)."""
    from sqlalchemy import text

    from civicsignals.common.db import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT signal_id FROM contact LIMIT :n"), {"n": limit})
            return [str(row[0]) for row in rows]
    finally:
        await engine.dispose()


def contact_requests(port: int, key: str, ids: list[str], per_request: int) -> list[bytes]:
    """notifier's reads of ``ids``: one ``GET .../contact`` each, or look-ups of ``per_request``."""
    head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
    if per_request == 1:
        return [f"GET /v1/signals/{i}/contact HTTP/1.1\r\n{head}\r\n".encode() for i in ids]
    requests = []
    for start in range(0, len(ids), per_request):
        body = json.dumps({"signal_ids": ids[start : start + per_request]}).encode()
        requests.append(
            f"POST /v1/contacts/lookup HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return requests


async def send_all(port: int, requests: list[bytes], concurrency: int) -> dict[int, int]:
    """Send ``requests`` over ``concurrency`` keep-alive connections; the count of each status."""
    queue = list(reversed(requests))
    statuses: dict[int, int] = {}
    connections = [Connection(port, b"") for _ in range(concurrency)]

    async def worker(connection: Connection) -> None:
        while queue:
            status = await connection.send(queue.pop())
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker(c) for c in connections))
    for connection in connections:
        connection.close()
    return statuses


def contact_reads(proc: subprocess.Popen[bytes], port: int, key: str, database_url: str) -> str:
    """intake's CPU per contact that notifier reads: one request a mail (as before 2026-12-06),
    against look-ups of ``LOOKUP_SIZE`` (as notifier now asks for the mails it starts together);
    the same signals, alternately, three times, the lowest of each counted."""
    ids = asyncio.run(signals_with_contact(database_url, CONTACT_READS))
    cost: dict[int, list[float]] = {1: [], LOOKUP_SIZE: []}
    for _ in range(3):
        for per_request in cost:
            requests = contact_requests(port, key, ids, per_request)
            before = cpu_seconds(proc.pid)
            statuses = asyncio.run(send_all(port, requests, concurrency=16))
            if set(statuses) != {200}:
                raise RuntimeError(f"contact reads answered {statuses}")
            cost[per_request].append(1e6 * (cpu_seconds(proc.pid) - before) / len(ids))
    one, many = min(cost[1]), min(cost[LOOKUP_SIZE])
    return (
        f"contact reads for notifier ({len(ids)} signals, 16 connections): one GET each {one:.0f} us "
        f"of intake CPU per contact; look-ups of {LOOKUP_SIZE} {many:.0f} us; ratio {one / many:.2f}"
    )


async def outbox_drain_seconds(database_url: str, timeout: float = 120.0) -> float:
    """Seconds until intake's relay has published every committed event (measured after the load)."""
    from sqlalchemy import text

    from civicsignals.common.db import create_engine

    engine = create_engine(database_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            async with engine.connect() as connection:
                pending = (
                    await connection.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
                ).scalar()
            if not pending:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        return float("nan")
    finally:
        await engine.dispose()


def postgres_database(admin_url: str) -> tuple[str, Any]:
    """A fresh database on the server of ``admin_url``; returns (url, drop callback)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"civic_bench_{uuid.uuid4().hex[:10]}"

    async def _run(statement: str) -> None:
        connection = await asyncpg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
            timeout=5,
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(_run(f'CREATE DATABASE "{name}"'))
    rendered = url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    return rendered, lambda: asyncio.run(_run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_history(path: Path, rows: int) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "created", "channel", "text", "category", "lat", "lon"])
        for i in range(rows):
            writer.writerow(
                [
                    f"OLD-{i}",
                    f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00",
                    ("web", "phone", "email", "app")[i % 4],
                    f"Melding {i}: losliggende stoeptegel bij nummer {i % 200}, bel 06-1234{i % 10000:04d}.",
                    ("stoep", "afval", "verlichting")[i % 3],
                    f"{51.96 + (i % 100) / 1000:.4f}",
                    f"{4.61 + (i % 150) / 1000:.4f}",
                ]
            )


def run_import(root: Path, database_url: str, history: Path, rows: int) -> tuple[float, float]:
    """(rows/s over the whole command including start-up, rows/s the command reports for its work)."""
    env = intake_env(root, database_url, "nats://127.0.0.1:1", 0)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "civicsignals.intake",
            "import",
            str(history),
            "--tenant",
            TENANT,
            "--no-progress",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = rows / (time.perf_counter() - started)
    own = next(line for line in result.stdout.splitlines() if line.startswith("took "))
    return wall, float(own.split(": ", 1)[1].split()[0])


def bench_database(
    label: str, database_url: str, args: argparse.Namespace, root: Path, nats: NatsServer, key: str
) -> None:
    python = sys.executable
    intake_port, bare_port = free_port(), free_port()
    env = intake_env(root, database_url, nats.url, intake_port)
    bare_env = {**os.environ, "PYTHONPATH": str(HERE)}
    with process(
        [
            python,
            "-m",
            "uvicorn",
            "bare:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        bare_env,
        bare_port,
        root / f"bare-{label}.log",
    ) as proc:
        bare = measured(proc, bare_port, key, args)
    stack_port = free_port()
    stack_env = {**intake_env(root, database_url, nats.url, stack_port), "PYTHONPATH": str(HERE)}
    uvicorn_args = ["--log-level", "warning", "--no-access-log"]
    with process(
        [python, "-m", "uvicorn", "stack:app", "--port", str(stack_port), *uvicorn_args],
        stack_env,
        stack_port,
        root / f"stack-{label}.log",
    ) as proc:
        stack = measured(proc, stack_port, key, args)
    with process(
        [python, "-m", "civicsignals.intake", "serve"], env, intake_port, root / f"intake-{label}.log"
    ) as proc:
        intake = measured(proc, intake_port, key, args)
        drain = asyncio.run(outbox_drain_seconds(database_url))
        contacts = contact_reads(proc, intake_port, key, database_url)
    ratio = intake["accepted_per_s"] / bare["accepted_per_s"]
    print(f"\n== {label}: {args.concurrency} concurrent clients, {args.seconds:.0f} s each ==")
    print(f"{'':22}{'accepted/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'non-201':>10}{'CPU us/req':>12}")
    rows = (
        ("bare FastAPI (no write)", bare),
        ("same in service stack", stack),
        ("intake (DB + outbox)", intake),
    )
    for name, result in rows:
        print(
            f"{name:22}{result['accepted_per_s']:12.0f}{result['p50_ms']:10.1f}{result['p99_ms']:10.1f}"
            f"{result['other']:10.0f}{result['cpu_us']:12.0f}"
        )
    print(
        f"intake / bare: {ratio:.2f} (target >= 0.50); intake / service stack: "
        f"{intake['accepted_per_s'] / stack['accepted_per_s']:.2f}; outbox drained {drain:.1f} s after the load"
    )
    print(f"CPU per accepted request, bare / intake: {bare['cpu_us'] / intake['cpu_us']:.2f}")
    print(contacts)
    history = root / "history.csv"
    if not history.exists():
        write_history(history, args.import_rows)
    wall, own = run_import(root, database_url, history, args.import_rows)
    print(
        f"import: {args.import_rows} rows at {own:.0f} rows/s (target >= 2000); "
        f"{wall:.0f} rows/s counting the command's start-up"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--import-rows", type=int, default=20_000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CIVIC_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="a server to create a scratch database on; '' skips PostgreSQL",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as temporary:
        root = Path(temporary)
        key = make_tenant(root)
        nats = NatsServer(root / "nats", log_file=root / "nats.log")
        nats.start()
        try:
            bench_database("SQLite", f"sqlite+aiosqlite:///{root / 'intake.db'}", args, root, nats, key)
            if args.postgres_url:
                try:
                    url, drop = postgres_database(args.postgres_url)
                except Exception as exc:  # the server is optional for a local run
                    print(f"\nPostgreSQL skipped: {type(exc).__name__}: {exc}")
                else:
                    try:
                        bench_database("PostgreSQL", url, args, root, nats, key)
                    finally:
                        drop()
        finally:
            nats.stop()


if __name__ == "__main__":
    main()
