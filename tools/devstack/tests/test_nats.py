"""NatsServer runs a real JetStream server that survives a crash with its data."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import nats
import pytest

from civicsignals.devstack.nats import NatsServer, NatsServerError, find_nats_server


def test_find_nats_server_prefers_the_venv() -> None:
    path = find_nats_server()
    assert path == Path(sys.executable).parent / "nats-server"


async def test_jetstream_publish_and_consume(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
        ack = await js.publish("devstack.hello", b"hallo")
        assert ack.stream == "DEVSTACK" and ack.seq == 1
        sub = await js.pull_subscribe("devstack.>", durable="reader")
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.subject == "devstack.hello" and msg.data == b"hallo"
        await msg.ack()
    finally:
        await nc.close()


async def test_kill_and_restart_keep_streams_on_the_same_port(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    try:
        port, url = server.port, server.url
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        for i in range(3):
            await js.publish(f"keep.{i}", f"m{i}".encode())
        await js.pull_subscribe("keep.>", durable="later")
        await nc.close()

        first_pid = server.pid
        server.kill()
        assert not server.is_running
        server.restart()
        assert server.is_running and server.pid != first_pid
        assert server.port == port and server.url == url

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("KEEP")
            assert info.state.messages == 3
            sub = await js.pull_subscribe("keep.>", durable="later")
            msgs = await sub.fetch(3, timeout=5)
            assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
        finally:
            await nc.close()
    finally:
        server.stop()
    assert not server.is_running


def test_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log", start_timeout=5)
        with pytest.raises(NatsServerError) as err:
            server.start()
    assert "exited" in str(err.value)
    assert str(port) in str(err.value)  # the log tail explains which port could not be bound
    assert not server.is_running
