"""The FastAPI application every service is built on: problems, health, metrics, tracing, limits."""

from __future__ import annotations

import argparse
import gc
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from civicsignals.common.health import ReadyCheck, health_router
from civicsignals.common.inputguard import InputGuardMiddleware
from civicsignals.common.problems import (
    API_VERSION,
    document_problems,
    install_problem_handlers,
    problem_response,
)
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.settings import ServiceSettings
from civicsignals.common.telemetry import RequestObserver, setup_telemetry


class BodyLimitMiddleware:
    """Refuse request bodies over a limit with 413, before a handler reads them (DESIGN §5)."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Sequence[tuple[str, int]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # (path regex, limit): the first pattern that fully matches the path sets its limit, so a
        # route that takes uploads may accept more than the JSON routes beside it.
        self.path_limits = [(re.compile(pattern), limit) for pattern, limit in path_limits]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.path_limits:
            if pattern.fullmatch(path):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(scope, receive, send, max_bytes)
            return
        received = 0
        too_large = False
        started = False

        async def _limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def _guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                # FastAPI turns an error while reading the body into its own 400; the 413 below
                # replaces whatever the app answers to a body it was not allowed to read.
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _limited_receive, _guarded_send)
        except _BodyTooLarge:
            if started:
                raise
        if too_large and not started:
            await self._refuse(scope, receive, send, max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        response = problem_response(
            413, f"the request body is larger than {max_bytes} bytes", slug="body-too-large"
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def configure_logging(level: str) -> None:
    """Plain structured lines on stderr; the messages themselves never carry personal data."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    # Access logs would hold client addresses, which are personal data.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request line at INFO; the URLs are ours, but the noise hides what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tune_collector(settings: ServiceSettings) -> None:
    """Keep Python's cyclic garbage collector from costing more than the requests it serves.

    Measured in intake under bench/intake's load (py-spy with ``--native``, and the collector timed
    from inside): about a quarter of the process's time went to the collector. Two causes, two
    settings:

    * The modules, routes, pydantic schemas and SQLAlchemy metadata (some 180,000 objects) live as
      long as the process, yet every full collection walked them again (about 100 ms each, every
      few hundred requests). ``gc.freeze()`` after start-up moves them to the permanent generation,
      which the collector never visits; garbage made before it is collected first.
    * With many requests or events in flight, their live objects pass Python's youngest-generation
      threshold of 700 net allocations every few requests, so each collection walks all of them and
      promotes them, to be walked again by the older generations. Real cyclic garbage is under one
      object per signal (measured with ``gc.DEBUG_SAVEALL``), so a higher threshold costs no memory
      to speak of.

    Only a serving process does this (``serve`` below): it changes process-wide state that a test
    process or an embedding application must keep.
    """
    if settings.gc_freeze_after_start:
        gc.collect()
        gc.freeze()
    if settings.gc_young_threshold:
        _, middle, oldest = gc.get_threshold()
        gc.set_threshold(settings.gc_young_threshold, middle, oldest)


def create_service_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    description: str,
    routers: list[APIRouter],
    ready_checks: dict[str, ReadyCheck] | None = None,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    openapi_tags: list[dict[str, Any]] | None = None,
    body_limits: Sequence[tuple[str, int]] = (),
) -> FastAPI:
    """The service's app. ``body_limits`` lists (path regex, bytes) for routes whose body may be
    larger (or must be smaller) than ``settings.max_body_bytes``, e.g. attachment uploads."""
    settings = runtime.settings
    configure_logging(settings.log_level)
    setup_telemetry(runtime.service, settings.otel_exporter, settings.otel_jsonl_path)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        if on_startup is not None:
            await on_startup()
        if getattr(_app.state, "serving", False):
            tune_collector(settings)  # after start-up: what it made lives as long as the process
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()
            await runtime.stop()

    app = FastAPI(
        title=title,
        description=description,
        version=API_VERSION,
        lifespan=lifespan,
        openapi_tags=openapi_tags,
        license_info={"name": "EUPL-1.2", "identifier": "EUPL-1.2"},
        # FastAPI's own request spans and metrics would repeat RequestObserver's at extra cost.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.tenants = runtime.tenants
    install_problem_handlers(app)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    checks: dict[str, ReadyCheck] = {"database": runtime.database_ready, "nats": runtime.bus_is_ready}
    checks.update(ready_checks or {})
    app.include_router(health_router(checks))
    for router in routers:
        app.include_router(router)
    # Inside the body limit, which then applies while the guard reads a body.
    app.add_middleware(InputGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, path_limits=body_limits)
    # One pure ASGI layer for the Prometheus request metrics, the SERVER span and API-Version
    # (see ``RequestObserver``): the libraries' middlewares cost more than the bare endpoint.
    app.add_middleware(
        RequestObserver,
        app_name=f"civicsignals-{runtime.service}",
        skip_paths=frozenset({"/livez", "/readyz", "/metrics"}),
        extra_headers=[(b"api-version", API_VERSION.encode())],
    )
    return app


def serve(app_factory: Callable[[], FastAPI], host: str, port: int, log_level: str) -> None:
    """Run one service process with uvicorn; its collector is tuned once the service has started
    (:func:`tune_collector`)."""
    import uvicorn

    app = app_factory()
    app.state.serving = True
    settings: ServiceSettings = app.state.runtime.settings
    uvicorn.run(app, **server_options(host, port, log_level, settings.forwarded_allow_ips))


def server_options(host: str, port: int, log_level: str, forwarded_allow_ips: str) -> dict[str, Any]:
    """uvicorn's options for a service: no access log (it would hold client addresses), and
    ``X-Forwarded-For`` believed only from ``forwarded_allow_ips``, so that the per-address rate
    limits count the client a trusted proxy names (uvicorn takes the nearest address not in it)
    and a client cannot choose its own bucket."""
    return {
        "host": host,
        "port": port,
        "log_level": log_level.lower(),
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": forwarded_allow_ips,
    }


def build_cli(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """A service's command line with ``serve``, ``migrate`` and ``makemigration``; services add
    their own commands and hand the parsed arguments to :func:`run_database_command` first."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API and the workers")
    migrate = commands.add_parser("migrate", help="bring the service's database to its latest migration")
    migrate.add_argument("--revision", default="head", help="the Alembic revision to go to (default head)")
    make = commands.add_parser(
        "makemigration",
        help="(developers) write a new migration from the difference between models and database",
    )
    make.add_argument("-m", "--message", required=True, help="what the migration does")
    return parser, commands


def run_database_command(args: argparse.Namespace, settings: ServiceSettings) -> bool:
    """Handle ``migrate`` and ``makemigration``; False when the command is another one."""
    import asyncio

    from civicsignals.common import migrations
    from civicsignals.common.db import create_engine

    package = f"civicsignals.{settings.service_name}.migrations"
    if args.command == "migrate":

        async def _migrate() -> str | None:
            engine = create_engine(settings.database_url)
            try:
                await migrations.upgrade(engine, package, args.revision)
                return await migrations.current_revision(engine)
            finally:
                await engine.dispose()

        print(f"{settings.service_name}: database at revision {asyncio.run(_migrate())}")
        return True
    if args.command == "makemigration":
        path = migrations.make_revision(package, settings.database_url, args.message)
        print(f"{settings.service_name}: wrote {path}")
        return True
    return False
