"""Shared fixtures: a real nats-server per test and ASGI apps served by uvicorn in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import LOCALHOST, free_port


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream server with its own store folder and free ports."""
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log") as server:
        yield server


class ThreadedUvicorn:
    """An ASGI app served by a real uvicorn on a free port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host=LOCALHOST,
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            proxy_headers=False,  # the gateway must see the real peer, not a trusted X-Forwarded-For
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self) -> ThreadedUvicorn:
        self.thread.start()
        deadline = time.monotonic() + 60  # a slow, busy machine
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def serve_app() -> Iterator[Callable[[Any], ThreadedUvicorn]]:
    """Factory: ``serve_app(app)`` starts it and returns the server; all are stopped at the end."""
    servers: list[ThreadedUvicorn] = []

    def _serve(app: Any) -> ThreadedUvicorn:
        server = ThreadedUvicorn(app).start()
        servers.append(server)
        return server

    yield _serve
    for server in reversed(servers):
        server.stop()
