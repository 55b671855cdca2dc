"""Helpers for the fault tests: load generation and reading whole subjects back from JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.api import DeliverPolicy


def servers(nats_url: str) -> list[str]:
    """A cluster's URL is the comma-separated list of its servers."""
    return [url for url in nats_url.split(",") if url]


async def read_subject(
    nats_url: str, subject: str, *, stream: str = "CIVIC", idle_s: float = 2.0
) -> list[Any]:
    """Every message stored under ``subject`` (wildcards allowed), read with an ordered consumer."""
    client = await nats.connect(servers(nats_url))
    try:
        js = client.jetstream()
        info = await js.stream_info(stream, subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values())
        messages: list[Any] = []
        if expected == 0:
            return messages
        done = asyncio.Event()

        async def _collect(msg: Any) -> None:
            messages.append(msg)
            if len(messages) >= expected:
                done.set()

        subscription = await js.subscribe(
            subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=_collect
        )
        try:
            await asyncio.wait_for(done.wait(), timeout=max(30.0, expected / 500))
        finally:
            await subscription.unsubscribe()
        return messages
    finally:
        await client.close()


async def subject_counts(nats_url: str, subject: str, stream: str = "CIVIC") -> int:
    client = await nats.connect(servers(nats_url))
    try:
        info = await client.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await client.close()


async def consumer_states(nats_url: str, stream: str = "CIVIC") -> str:
    """One line per durable consumer: what it has yet to get, holds unacknowledged, got again."""
    client = await nats.connect(servers(nats_url))
    try:
        infos = await client.jetstream().consumers_info(stream)
        return "\n".join(
            f"{info.name}: pending {info.num_pending}, unacknowledged {info.num_ack_pending}, "
            f"redelivered {info.num_redelivered}, waiting pulls {info.num_waiting}, "
            f"cluster leader {info.cluster.leader if info.cluster else '-'}"
            for info in sorted(infos, key=lambda info: str(info.name))
        )
    finally:
        await client.close()


async def stream_leader(nats_url: str, stream: str = "CIVIC") -> str | None:
    """The server name of the stream's current leader (``None`` while it has none)."""
    client = await nats.connect(servers(nats_url), connect_timeout=2, max_reconnect_attempts=2)
    try:
        info = await client.jetstream().stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None
    finally:
        await client.close()


async def _consumer_infos(nats_url: str, prefix: str, stream: str) -> list[Any]:
    """The JetStream infos of the durable consumers whose names start with ``prefix``."""
    client = await nats.connect(servers(nats_url))
    try:
        infos = await client.jetstream().consumers_info(stream)
        return [info for info in infos if str(info.name).startswith(prefix)]
    finally:
        await client.close()


async def consumers_in_flight(nats_url: str, prefix: str, stream: str = "CIVIC") -> dict[str, int]:
    """Per durable consumer whose name starts with ``prefix`` (a service's, e.g. ``routing-``): how
    many messages it was given and has not acknowledged yet, i.e. the batch that service holds."""
    infos = await _consumer_infos(nats_url, prefix, stream)
    return {str(info.name): int(info.num_ack_pending or 0) for info in infos}


async def consumers_backlog(nats_url: str, prefix: str, stream: str = "CIVIC") -> int:
    """What the durable consumers whose names start with ``prefix`` have yet to get or to ack."""
    infos = await _consumer_infos(nats_url, prefix, stream)
    return sum(int(info.num_pending or 0) + int(info.num_ack_pending or 0) for info in infos)


def data_field_counts(messages: list[Any], field: str) -> Counter[str]:
    return Counter(str(json.loads(m.data)["data"][field]) for m in messages)


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of :func:`post_many`: when it was sent and answered (``time.monotonic()``)."""

    sent: float
    answered: float
    status: int  # 0: the connection broke
    problem: bool  # answered as application/problem+json
    retry_after: str | None


@dataclass
class PostLog:
    """What :func:`post_many` is doing and did, so a test can show when and how a fault hit it."""

    in_flight: int = 0
    attempts: list[Attempt] = field(default_factory=list)


async def post_many(
    url: str,
    key: str,
    bodies: list[dict[str, Any]],
    *,
    concurrency: int = 16,
    retry_for_s: float = 0.0,
    attempts: Counter[int] | None = None,
    log: PostLog | None = None,
) -> tuple[list[dict[str, Any]], Counter[int]]:
    """POST every body with ``concurrency`` clients; returns the 201 answers and the final status codes.

    With ``retry_for_s``, a client behaves like a careful portal: each body carries its own
    ``Idempotency-Key``, and a broken connection, a 409 (in flight) or a 503 is retried with the same
    key until that much time has passed. Status 0 stands for a connection that broke. ``attempts``,
    when given, counts the status of every attempt (retried ones too), so a test can tell that its
    fault really broke requests. ``log``, when given, counts the requests in flight and records
    every attempt with its times.
    """
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    created: list[dict[str, Any]] = []
    statuses: Counter[int] = Counter()

    async def _worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
            deadline = time.monotonic() + retry_for_s
            while True:
                sent = time.monotonic()
                if log is not None:
                    log.in_flight += 1
                try:
                    response = await client.post(url, json=body, headers=headers)
                    status = response.status_code
                except httpx.TransportError:
                    response, status = None, 0
                finally:
                    if log is not None:
                        log.in_flight -= 1
                if attempts is not None:
                    attempts[status] += 1
                if log is not None:
                    log.attempts.append(
                        Attempt(
                            sent=sent,
                            answered=time.monotonic(),
                            status=status,
                            problem=response is not None
                            and response.headers.get("content-type", "").startswith(
                                "application/problem+json"
                            ),
                            retry_after=response.headers.get("retry-after") if response is not None else None,
                        )
                    )
                if status in (0, 409, 503) and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                    continue
                break
            statuses[status] += 1
            if response is not None and status == 201:
                created.append(response.json())

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(_worker(client) for _ in range(concurrency)))
    return created, statuses


# -- a PostgreSQL server of the test's own -----------------------------------------------------------

POSTGRES_LIB = Path("/usr/lib/postgresql")


def postgres_bin_dir() -> Path | None:
    """Debian's ``/usr/lib/postgresql/<version>/bin`` of the highest version that has ``initdb``,
    ``pg_ctl`` and ``postgres``; ``None`` when there is none."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in POSTGRES_LIB.glob("*/bin"):
        try:
            version = tuple(int(part) for part in bin_dir.parent.name.split("."))
        except ValueError:
            continue
        if all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            found.append((version, bin_dir))
    return max(found)[1] if found else None


def _traversable(path: Path, uid: int, groups: set[int]) -> bool:
    """Whether a process of ``uid`` (in ``groups``) can reach what lies in ``path``."""
    for directory in (path, *path.parents):
        mode = directory.stat()
        if mode.st_uid == uid:
            allowed = bool(mode.st_mode & stat.S_IXUSR)
        elif mode.st_gid in groups:
            allowed = bool(mode.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(mode.st_mode & stat.S_IXOTH)
        if not allowed:
            return False
    return True


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a PostgreSQL server of the test's own (the reason is the message)."""


class PrivatePostgres:
    """A PostgreSQL server of one test: Debian's binaries, a fresh cluster in a directory of its own,
    trust authentication, listening on 127.0.0.1 only on a free port (its socket in that directory).

    Run as the ``postgres`` OS user (``runuser``) when the test runs as root, since ``initdb`` and
    ``postgres`` refuse root; the directory is made with ``mkdtemp`` under a parent that user can
    reach (pytest's ``tmp_path`` chain is 0700 root) and handed to it. Never the machine's cluster.
    """

    def __init__(self, bin_dir: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.port = port
        self.root: Path | None = None
        self._as: list[str] = []
        self._owner: tuple[int, int] | None = None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        """Create the cluster and start the server; :class:`PostgresUnavailable` says why it cannot."""
        parent: Path | None = Path(tempfile.gettempdir())
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root, and there is no 'postgres' user") from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, and there is no runuser to become 'postgres'")
            groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
            candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
            parent = next(
                (c for c in candidates if c.is_dir() and _traversable(c, user.pw_uid, groups)), None
            )
            if parent is None:
                raise PostgresUnavailable(f"none of {candidates} can be reached by the 'postgres' user")
            self._as = ["runuser", "-u", "postgres", "--"]
            self._owner = (user.pw_uid, user.pw_gid)
        self.root = Path(tempfile.mkdtemp(prefix="civic-pg-", dir=parent))
        if self._owner is not None:
            os.chown(self.root, *self._owner)
        os.chmod(self.root, 0o700)
        initdb = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            check=False,
        )
        if initdb.returncode != 0:
            self.remove()
            raise PostgresUnavailable(f"initdb failed (exit {initdb.returncode}): {initdb.stderr.strip()}")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# civic-signals fault test: loopback only, a port and a socket of its own\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
            )
        self._pg_ctl("start")
        return self

    def restart_immediately(self) -> None:
        """``pg_ctl restart -m immediate``: every backend is killed at once, as in a crash, and the
        server comes back through crash recovery (WAL replay)."""
        self._pg_ctl("restart", "-m", "immediate")

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its directory."""
        if self.root is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except (RuntimeError, subprocess.SubprocessError, OSError):
                # pg_ctl could not stop it: end the postmaster this server started, by its pid.
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        self.remove()

    def remove(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", *args)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._as, str(self.bin_dir / tool), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}\n"
                f"{self.log_tail()}"
            )
        return result
