"""Shared pytest fixtures for the whole repository (libs, services and end-to-end tests).

Everything here is real: a real ``nats-server`` with JetStream, real SQLite files and, when asked
for, a real PostgreSQL database. Nothing is mocked, because what the services must get right
(acks, redeliveries, transactions, restarts) is exactly what a fake would hide.

Fixtures
--------
``nats_server``        a started :class:`~civicsignals.devstack.nats.NatsServer` (JetStream, free
                       port, store in the test's ``tmp_path``); stopped after the test. Tests may
                       ``stop()``, ``kill()`` and ``restart()`` it; the URL stays the same.
``nats_client``        a nats-py client connected to ``nats_server`` (reconnects without limit);
                       closed after the test.
``bus``                a connected :class:`~civicsignals.common.bus.Bus` on ``nats_server`` with the
                       ``CIVIC`` and ``CIVIC_DLQ`` streams created; closed after the test.
``database_url``       parametrised ``sqlite`` / ``postgres``: an SQLAlchemy async URL of an empty
                       database of its own. SQLite is a file in ``tmp_path``; PostgreSQL is a fresh
                       database created on the server of ``CIVIC_TEST_POSTGRES_URL`` and dropped
                       after the test (skipped when the variable is unset or the server is down).
                       Test ids read ``test_x[sqlite]`` and ``test_x[postgres]``.
``make_tenant``        a factory: ``make_tenant("gouda", scopes=[...])`` writes a tenant folder with
                       one API key (made by ``civicsignals.common.tenants.add_key``) under one
                       tenants directory per test, and returns a :class:`TenantKey`.
``tenant_key``         ``make_tenant()`` once: tenant ``gouda`` with a key holding every scope.
``wait_until``         ``await wait_until(predicate, timeout=5)``: polls a sync or async predicate
                       until it returns something truthy (and returns that), instead of sleeping.
``spans``              an OpenTelemetry ``InMemorySpanExporter`` attached to this process's tracer
                       provider (installing one with ``setup_telemetry`` if needed), emptied before
                       the test: ``spans.get_finished_spans()``. With it, spans are recording, so
                       ``traceparent`` headers are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import URL, make_url

from civicsignals.common.bus import Bus
from civicsignals.common.tenants import ALL_SCOPES, add_key
from civicsignals.devstack.nats import NatsServer

POSTGRES_ENV = "CIVIC_TEST_POSTGRES_URL"
"""The PostgreSQL server for the ``postgres`` variant, e.g.
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``: its database is only used to connect and
``CREATE DATABASE`` a fresh one per test."""

T = TypeVar("T")

# The tests that read spans (the ``spans`` fixture) add their collector to the provider a service
# installs without an exporter, which records only what its caller samples
# (``telemetry.make_tracer_provider``); the tests want every span, as an exporter would.
os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")


# -- NATS ------------------------------------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port, its store under ``tmp_path/nats``.

    Never port 4222 (a system NATS may run there): ports come from the kernel. The server keeps
    its ports and store across ``restart()``, so clients reconnect and find their streams again.
    """
    server = NatsServer(tmp_path / "nats" / "store", log_file=tmp_path / "nats" / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A nats-py client on ``nats_server``, reconnecting without limit (the server may restart)."""
    client = await nats.connect(
        nats_server.url,
        name="civicsignals-tests",
        connect_timeout=2,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
    )
    try:
        yield client
    finally:
        await _close_quietly(client)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connected ``Bus`` (service ``tests``) with the ``CIVIC`` and ``CIVIC_DLQ`` streams."""
    connected = Bus(nats_server.url, service="tests", duplicate_window_s=120.0)
    await connected.connect(retry_forever=False)
    await connected.ensure_streams()
    try:
        yield connected
    finally:
        if connected._nc is not None:
            await _close_quietly(connected._nc)
        connected._nc = None
        connected._js = None


async def _close_quietly(client: NatsClient) -> None:
    """Close a client even when its server is down (``drain`` would refuse while reconnecting)."""
    if client.is_closed:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), timeout=5)


# -- databases -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An SQLAlchemy async URL of an empty database that belongs to this test alone.

    ``sqlite``: ``sqlite+aiosqlite:///<tmp_path>/test.db``.
    ``postgres``: a database ``civic_test_<random>`` created on the server of
    ``CIVIC_TEST_POSTGRES_URL`` and dropped (``WITH (FORCE)``, so engines the test left open do not
    block it) after the test. Skipped when the variable is unset or the server cannot be reached.

    The fixture is synchronous (the set-up runs on its own event loop in a helper thread), so sync
    and async tests can both use it.
    """
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return

    raw = os.environ.get(POSTGRES_ENV, "").strip()
    if not raw:
        pytest.skip(f"PostgreSQL variant: set {POSTGRES_ENV} to run it")
    admin_url = make_url(raw)
    shown = _without_password(admin_url)
    name = f"civic_test_{uuid.uuid4().hex[:16]}"
    try:
        _run_async(_create_database(admin_url, name))
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL variant: cannot reach {shown} ({type(exc).__name__}: {exc})")
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):
            pytest.skip(f"PostgreSQL variant: cannot use {shown} ({type(exc).__name__}: {exc})")
        raise
    try:
        yield admin_url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        _run_async(_drop_database(admin_url, name))


def _without_password(url: URL) -> str:
    return url._replace(password=None).render_as_string(hide_password=False)


async def _pg_connect(url: URL) -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )


async def _create_database(url: URL, name: str) -> None:
    connection = await _pg_connect(url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(url: URL, name: str) -> None:
    connection = await _pg_connect(url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def _run_async(coroutine: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh event loop in a helper thread.

    A thread, so that it neither needs nor disturbs the event loop pytest-asyncio runs the test in.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def _target() -> None:
        async def _main() -> T:
            return await coroutine

        try:
            result.append(asyncio.run(_main()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=_target, name="conftest-async", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# -- tenants ---------------------------------------------------------------------------------------


@dataclass
class TenantKey:
    """A tenant folder with an API key, as ``make_tenant`` writes it."""

    tenants_dir: Path
    """The directory that holds every tenant folder (``ServiceSettings.tenants_dir``)."""
    tenant: str
    folder: Path
    key_id: str
    key: str
    """The key itself (``cs_<id>.<secret>``); only its hash is on disk."""
    scopes: list[str] = field(default_factory=list)

    @property
    def authorization(self) -> dict[str, str]:
        """The ``Authorization`` header that presents this key."""
        return {"Authorization": f"Bearer {self.key}"}

    def add_key(
        self, scopes: list[str], *, expires: datetime | None = None, description: str = ""
    ) -> tuple[str, str]:
        """Another key for this tenant; returns (key id, key)."""
        return add_key(self.folder, scopes, expires=expires, description=description)

    def revoke(self, key_id: str | None = None) -> None:
        """Mark a key (default: this one) revoked in ``keys.yaml``, as the admin CLI would."""
        target = key_id or self.key_id
        path = self.folder / "keys.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for entry in data["keys"]:
            if entry["id"] == target:
                entry["revoked"] = True
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        # Registries notice changes by modification time; make sure it moves even on coarse clocks.
        stamp = time.time_ns() + 1_000_000_000
        os.utime(path, ns=(stamp, stamp))


MakeTenant = Callable[..., TenantKey]


@pytest.fixture
def make_tenant(tmp_path: Path) -> MakeTenant:
    """A factory writing tenant folders with one API key each, under ``tmp_path/tenants``.

    ``make_tenant(tenant="gouda", scopes=None, *, name=None, departments=None, settings=None)``:
    ``scopes`` defaults to every scope; ``departments`` is a list of codes (or of mappings with at
    least ``code``) written to ``departments.yaml``; ``settings`` is merged into ``tenant.yaml``.
    """
    tenants_dir = tmp_path / "tenants"

    def _make(
        tenant: str = "gouda",
        scopes: list[str] | None = None,
        *,
        name: str | None = None,
        departments: list[str | dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> TenantKey:
        folder = tenants_dir / tenant
        folder.mkdir(parents=True, exist_ok=True)
        tenant_settings: dict[str, Any] = {"name": name or tenant.capitalize(), "languages": ["nl", "en"]}
        tenant_settings.update(settings or {})
        (folder / "tenant.yaml").write_text(yaml.safe_dump(tenant_settings), encoding="utf-8")
        if departments is not None:
            entries = [d if isinstance(d, dict) else {"code": d, "name": d} for d in departments]
            (folder / "departments.yaml").write_text(
                yaml.safe_dump({"departments": entries}), encoding="utf-8"
            )
        granted = list(ALL_SCOPES) if scopes is None else list(scopes)
        key_id, key = add_key(folder, granted, description="test key")
        return TenantKey(
            tenants_dir=tenants_dir, tenant=tenant, folder=folder, key_id=key_id, key=key, scopes=granted
        )

    return _make


@pytest.fixture
def tenant_key(make_tenant: MakeTenant) -> TenantKey:
    """Tenant ``gouda`` with one key that holds every scope."""
    return make_tenant()


# -- polling ---------------------------------------------------------------------------------------

WaitUntil = Callable[..., Awaitable[Any]]


async def _wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for polling, not for one awaited call
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Fails the test with ``message`` (and the last value seen) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate!r} (last: {last!r})")
        await asyncio.sleep(interval)


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(predicate, timeout=5.0, interval=0.05, message="")``; see ``_wait_until``."""
    return _wait_until


# -- clocks and key look-ups -------------------------------------------------------------------------


class ManualClock:
    """A monotonic clock the test moves by hand (``clock.now += 12``), for code that takes a clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


class KeyLookups:
    """Counts a tenant registry's key look-ups (``calls``), wrapping its own ``find_key``."""

    def __init__(self, registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = registry.find_key

        def counted(key_id: str) -> Any:
            self.calls += 1
            return original(key_id)

        monkeypatch.setattr(registry, "find_key", counted)


@pytest.fixture
def count_key_lookups(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], KeyLookups]:
    """``count_key_lookups(registry)`` starts counting that registry's key look-ups."""
    return lambda registry: KeyLookups(registry, monkeypatch)


# -- tracing ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_span_exporter() -> InMemorySpanExporter:
    from civicsignals.common.telemetry import setup_telemetry

    setup_telemetry("tests")  # a no-op when the process already has its provider
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.skip("the global tracer provider is not the OpenTelemetry SDK's")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(_session_span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    """Finished spans of this test: ``spans.get_finished_spans()`` (the exporter is shared and
    cleared before each test)."""
    _session_span_exporter.clear()
    return _session_span_exporter
