"""Child-process plumbing shared by :mod:`.nats` and :mod:`.supervisor`.

Every child runs in its own session (hence its own process group) for two reasons: a Ctrl-C in the
terminal reaches only the dev runner, which then stops the children in a sensible order, and a
child's own children (uvicorn workers, reloaders) are stopped with it by signalling the group.

As a safety net, children still running when the interpreter exits (a test run that crashed, an
unhandled exception in the runner) are killed, so no stray nats-server keeps a port or a store
directory locked.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

_live: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_file``.

    Output goes to a file, not a pipe: nobody reads a pipe while the child runs, and a full pipe
    would block it. Appending keeps the output of earlier runs (before a restart) for diagnosis;
    a marker line separates the runs, and the returned offset (where this run's output starts)
    lets error messages quote only this run.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        command = shlex.join(argv).replace("\n", "\\n")
        if len(command) > 300:  # one line, even for a `python -c` script
            command = command[:297] + "..."
        log.write(f"--- {stamp} starting: {command}\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(  # noqa: S603 - argv comes from the caller, never from a shell string
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    _live.add(proc)
    return proc, offset


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group led by ``proc``; a group that is gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop ``proc``'s group: SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds.

    Returns the exit code. Whatever is left of the group after the leader exited is killed too,
    so that no grandchild outlives its parent.
    """
    return terminate_many([proc], timeout)[0]


def terminate_many(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Stop several groups at once, sharing one deadline.

    Signalling all of them first and waiting afterwards makes stopping N services take one
    timeout, not N.
    """
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: list[int] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            codes.append(proc.wait())
        signal_group(proc, signal.SIGKILL)
        _live.discard(proc)
    return codes


def kill(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL ``proc``'s whole group and reap it; used to simulate crashes in fault tests."""
    signal_group(proc, signal.SIGKILL)
    code = proc.wait()
    _live.discard(proc)
    return code


def tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    """Return the last ``lines`` lines of a log file from byte ``offset`` on ("" if missing)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 64_000))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=2)
