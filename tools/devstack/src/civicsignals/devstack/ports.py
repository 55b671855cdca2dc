"""Local TCP port helpers.

Everything the dev stack starts listens on 127.0.0.1 only, and the machine may already run other
servers (a system NATS on 4222, PostgreSQL on 5432, another dev stack), so ports are either asked
from the kernel or checked before use rather than assumed.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

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


#: Where Linux takes the source ports of outgoing connections, when /proc does not say.
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections (``ip_local_port_range``)."""
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def listen_port(host: str = LOCALHOST, attempts: int = 200) -> int:
    """A free port below the kernel's ephemeral range, for a server that binds it a moment later.

    :func:`free_port` takes its port from the same range as the source ports of outgoing
    connections, so in the window before the server binds, a connection being opened (a cluster
    node dialling its routes, say) may take it: seen once in CI as "bind: address already in use"
    on a NATS cluster port. No outgoing connection takes a port below that range.
    """
    low, _ = ephemeral_range()
    first = max(1024, low - 12_000)
    chooser = random.SystemRandom()
    for _ in range(attempts):
        port = chooser.randrange(first, low)
        if port_is_free(port, host):
            return port
    return free_port(host)


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
