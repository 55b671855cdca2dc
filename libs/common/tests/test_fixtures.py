"""The shared fixtures of the root ``conftest.py`` do what every other test relies on."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NatsClient
from sqlalchemy import text

from civicsignals.common.db import create_engine, is_postgres, is_sqlite
from civicsignals.devstack.nats import NatsServer


async def test_nats_server_has_jetstream_and_survives_a_restart(
    nats_server: NatsServer, nats_client: NatsClient, wait_until: Any
) -> None:
    assert nats_server.port != 4222
    assert nats_client.is_connected
    js = nats_client.jetstream(timeout=2)
    await js.add_stream(name="FIXTURE", subjects=["fixture.>"])
    await js.publish("fixture.one", b"1")

    nats_server.restart()
    await wait_until(
        lambda: nats_client.stats["reconnects"] >= 1 and nats_client.is_connected,
        timeout=10,
        message="the client to reconnect",
    )

    info = await js.stream_info("FIXTURE")
    assert info.state.messages == 1  # the store directory is kept across restarts


async def test_database_url_is_an_empty_database_of_its_own(database_url: str) -> None:
    assert is_sqlite(database_url) or is_postgres(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE only_mine (id INTEGER PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO only_mine (id) VALUES (1)"))
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM only_mine"))).scalar() == 1
    finally:
        await engine.dispose()


def test_database_url_in_a_sync_test(database_url: str) -> None:
    assert "://" in database_url


def test_make_tenant_writes_a_folder_and_a_key(make_tenant: Any) -> None:
    gouda = make_tenant("gouda", ["signals:write"], departments=["wegen"])
    assert (gouda.folder / "tenant.yaml").is_file()
    assert (gouda.folder / "departments.yaml").is_file()
    assert gouda.key.startswith(f"cs_{gouda.key_id}.")
    assert gouda.authorization == {"Authorization": f"Bearer {gouda.key}"}
    second = make_tenant("bodegraven")
    assert second.tenants_dir == gouda.tenants_dir
