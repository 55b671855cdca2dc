"""Local TCP port helpers.

Everything the dev stack starts listens on 127.0.0.1 only, and the machine may already run other
servers (a system NATS on 4222, PostgreSQL on 5432, another dev stack), so ports are either asked
from the kernel or checked before use rather than assumed.
"""

from __future__ import annotations

import socket

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nobody listens on right now.

    The kernel picks it (bind to port 0), so it never collides with a running server; there is a
    short window before the caller binds it, which is acceptable for tests and the dev runner.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Tell whether ``port`` can be bound on ``host``.

    A bind test rather than a connect test, so that a port held by a listener that does not
    answer yet still counts as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR mirrors what servers (uvicorn, nats-server) do, so a port that only has
        # connections lingering in TIME_WAIT counts as free, as it is for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def preferred_port(preferred: int, host: str = LOCALHOST) -> int:
    """Return ``preferred`` when it is free, else any free port.

    The dev runner prefers well-known ports (4333 for NATS, 1025 for mail) so that URLs stay the
    same from one run to the next, but must not fail because another program holds them.
    """
    return preferred if port_is_free(preferred, host) else free_port(host)


def port_accepts_connections(port: int, host: str = LOCALHOST, timeout: float = 0.2) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
