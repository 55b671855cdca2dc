"""Ports for servers that tests and the dev runner start: ``listen_port`` stays out of the range
the kernel takes outgoing connections' source ports from, so none of them can take it first."""

from __future__ import annotations

import socket

from civicsignals.devstack.ports import LOCALHOST, ephemeral_range, listen_port, port_is_free


def test_listen_port_is_free_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 1024 < low <= high
    for _ in range(20):
        port = listen_port()
        assert 1024 <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind((LOCALHOST, port))
            server.listen()
            assert not port_is_free(port)


def test_outgoing_connections_take_their_source_ports_from_the_ephemeral_range() -> None:
    """What ``listen_port`` relies on, checked on this machine's kernel."""
    low, high = ephemeral_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((LOCALHOST, 0))
        server.listen()
        clients = [socket.create_connection(server.getsockname()) for _ in range(20)]
        try:
            assert all(low <= client.getsockname()[1] <= high for client in clients)
        finally:
            for client in clients:
                client.close()
