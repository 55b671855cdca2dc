"""Alembic migrations per service (DESIGN §4), run at start-up when asked or by ``<service> migrate``.

Each service keeps its revisions in its own package (``civicsignals.<service>.migrations``, with an
``env.py`` that calls :func:`run_env`), so its image carries them and its database has its own
``alembic_version``. The functions here hide Alembic's file-based configuration: a service only
names its package.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def migrations_dir(package: str) -> Path:
    """The folder of a service's migrations, e.g. ``civicsignals.routing.migrations``."""
    return Path(str(resources.files(package)))


def alembic_config(package: str, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(package)))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's ``env.py``: migrate the connection we were handed, or open one."""
    from alembic import context

    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run(context, connection, target_metadata)
        return
    url = config.get_main_option("sqlalchemy.url") or ""

    async def _online() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as async_connection:
            await async_connection.run_sync(lambda sync: _run(context, sync, target_metadata))
            await async_connection.commit()
        await engine.dispose()

    asyncio.run(_online())


def _run(context: Any, connection: Connection, target_metadata: MetaData) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def upgrade(engine: AsyncEngine, package: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` on the service's own engine."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config(package, str(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_current)


def pending_changes(engine_url: str, package: str, metadata: MetaData) -> list[Any]:
    """Differences between the migrated database and the models (empty when migrations are complete)."""
    from alembic.autogenerate import compare_metadata

    async def _compare() -> list[Any]:
        engine = create_async_engine(engine_url, poolclass=pool.NullPool)
        try:
            await upgrade(engine, package)
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: list(compare_metadata(MigrationContext.configure(sync), metadata))
                )
        finally:
            await engine.dispose()

    return asyncio.run(_compare())
