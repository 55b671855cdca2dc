"""Start, watch and stop named child processes (the services, in the dev runner and in e2e tests).

Each service runs as its own OS process, as it will in production, so tests exercise real
process boundaries: separate event loops, separate databases, messages only over NATS. Nothing
is restarted automatically: a fault test kills a service on purpose and must decide itself when
it comes back, and in the dev runner a crash should be seen, not hidden.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from . import _proc

__all__ = ["ProcessSpec", "ProcessSupervisor", "ProcessSupervisorError"]


class ProcessSupervisorError(RuntimeError):
    """A child failed to start, exited early or never became ready."""


@dataclass
class ProcessSpec:
    """How to (re)start one named child."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    log_file: Path = Path()


class ProcessSupervisor:
    """Named children, each in its own process group, logging to ``<logs_dir>/<name>.log``.

    ``env`` given for a child is laid over the supervisor's own environment (unless
    ``inherit_env=False``), so PATH, HOME and the venv keep working. Usable as a context manager
    that stops every child on exit.
    """

    def __init__(self, logs_dir: Path, *, stop_timeout: float = 10.0, inherit_env: bool = True) -> None:
        """Create an empty supervisor; ``stop_timeout`` is the grace period before SIGKILL."""
        self.logs_dir = Path(logs_dir).resolve()
        self.stop_timeout = stop_timeout
        self.inherit_env = inherit_env
        self._specs: dict[str, ProcessSpec] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[str, int] = {}

    # -- configuration ------------------------------------------------------------------------

    def add(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_file: Path | None = None,
    ) -> ProcessSpec:
        """Register (or replace) how to start ``name`` without starting it."""
        if not argv:
            raise ValueError(f"{name}: empty argv")
        spec = ProcessSpec(
            name=name,
            argv=list(argv),
            env=dict(env or {}),
            cwd=Path(cwd) if cwd is not None else None,
            log_file=Path(log_file) if log_file is not None else self.logs_dir / f"{name}.log",
        )
        self._specs[name] = spec
        return spec

    @property
    def names(self) -> list[str]:
        """Registered children, in registration order."""
        return list(self._specs)

    def spec(self, name: str) -> ProcessSpec:
        """The registered spec of ``name``."""
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no process named {name!r}; known: {self.names}") from None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_file: Path | None = None,
    ) -> int:
        """Start ``name`` and return its PID.

        With ``argv`` the spec is (re)registered first; without, the registered spec is reused,
        which is how a fault test brings a killed service back exactly as it was.
        """
        if argv is not None:
            self.add(name, argv, env=env, cwd=cwd, log_file=log_file)
        spec = self.spec(name)
        if self.is_running(name):
            raise ProcessSupervisorError(f"{name} is already running (pid {self._procs[name].pid})")
        child_env = {**os.environ, **spec.env} if self.inherit_env else dict(spec.env)
        proc, offset = _proc.spawn(spec.argv, log_file=spec.log_file, env=child_env, cwd=spec.cwd)
        self._procs[name] = proc
        self._log_offsets[name] = offset
        return proc.pid

    def stop(self, name: str, timeout: float | None = None) -> int | None:
        """SIGTERM ``name``'s group, SIGKILL after ``timeout``; return its exit code."""
        proc = self._procs.get(name)
        if proc is None:
            return None
        return _proc.terminate(proc, self.stop_timeout if timeout is None else timeout)

    def stop_all(self, timeout: float | None = None) -> dict[str, int]:
        """Stop every child at once (one shared grace period); return their exit codes."""
        names = list(self._procs)
        procs = [self._procs[n] for n in names]
        codes = _proc.terminate_many(procs, self.stop_timeout if timeout is None else timeout)
        return dict(zip(names, codes, strict=True))

    def kill(self, name: str) -> int | None:
        """SIGKILL ``name``'s group at once, as a crash would; return its exit code."""
        proc = self._procs.get(name)
        if proc is None:
            return None
        return _proc.kill(proc)

    # -- state --------------------------------------------------------------------------------

    def is_running(self, name: str) -> bool:
        """Whether ``name`` was started and has not exited."""
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        """PID of ``name`` while it runs."""
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def returncode(self, name: str) -> int | None:
        """Exit code of ``name`` once it has exited (``None`` while running or never started)."""
        proc = self._procs.get(name)
        return proc.poll() if proc is not None else None

    def exited(self) -> dict[str, int]:
        """Children that were started and have exited since, with their exit codes."""
        return {n: code for n, p in self._procs.items() if (code := p.poll()) is not None}

    def log_file(self, name: str) -> Path:
        """Where ``name`` writes its stdout and stderr."""
        return self.spec(name).log_file

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Last lines of ``name``'s log since its latest start, for error messages."""
        return _proc.tail(self.log_file(name), lines, self._log_offsets.get(name, 0))

    # -- readiness ----------------------------------------------------------------------------

    def wait_http_ready(
        self,
        name: str,
        url: str,
        timeout: float = 30.0,
        interval: float = 0.1,
        *,
        still_waiting: Callable[[float, str], None] | None = None,
        report_every: float = 15.0,
    ) -> None:
        """Poll ``url`` (a ``/readyz``) until it answers 2xx.

        Fails fast when the process exits meanwhile, and in every failure includes the tail of
        the child's log, which is almost always where the reason is. ``still_waiting`` is called
        every ``report_every`` seconds with the seconds waited and the log's last line, so a person
        watching a slow first start (the classifier building its cold-start model) sees what the
        service is doing instead of a silent terminal.
        """
        started = time.monotonic()
        deadline = started + timeout
        next_report = started + report_every
        last = "no answer yet"
        with httpx.Client(timeout=2.0, trust_env=False, follow_redirects=False) as client:
            while True:
                self._check_alive(name)
                try:
                    resp = client.get(url)
                    if resp.is_success:
                        return
                    last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                if now >= deadline:
                    raise self._not_ready(name, url, timeout, last)
                if still_waiting is not None and now >= next_report:
                    still_waiting(now - started, self.log_tail(name, 1))
                    next_report = now + report_every
                time.sleep(interval)

    async def wait_http_ready_async(
        self,
        name: str,
        url: str,
        timeout: float = 30.0,  # noqa: ASYNC109 - same signature as wait_http_ready, on purpose
        interval: float = 0.1,
    ) -> None:
        """Like :meth:`wait_http_ready`, without blocking the event loop (for async tests)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False, follow_redirects=False) as client:
            while True:
                self._check_alive(name)
                try:
                    resp = await client.get(url)
                    if resp.is_success:
                        return
                    last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise self._not_ready(name, url, timeout, last)
                await asyncio.sleep(interval)

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None:
            raise ProcessSupervisorError(f"{name} was never started")
        code = proc.poll()
        if code is not None:
            raise ProcessSupervisorError(
                f"{name} exited with code {code} before it was ready; "
                f"log {self.log_file(name)}:\n{self.log_tail(name)}"
            )

    def _not_ready(self, name: str, url: str, timeout: float, last: str) -> ProcessSupervisorError:
        return ProcessSupervisorError(
            f"{name} not ready at {url} after {timeout:.0f}s ({last}); "
            f"log {self.log_file(name)}:\n{self.log_tail(name)}"
        )

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> ProcessSupervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
