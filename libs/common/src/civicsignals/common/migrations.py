"""Alembic migrations per service (DESIGN §4), run at start-up when asked or by ``<service> migrate``.

Each service keeps its revisions in its own package (``civicsignals.<service>.migrations``, with an
``env.py`` that calls :func:`run_env`), so its image carries them and its database has its own
``alembic_version``. The functions here hide Alembic's file-based configuration: a service only
names its package.
"""

from __future__ import annotations

import asyncio
import importlib
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, pool
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


def run_env() -> None:
    """The body of every service's ``env.py``: migrate the connection we were handed, or open one.

    The target metadata (for autogenerate only) comes from ``config.attributes``, so that an
    upgrade never depends on which models happen to be imported in the process.
    """
    from alembic import context

    config = context.config
    target_metadata: MetaData | None = config.attributes.get("target_metadata")
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


def _run(context: Any, connection: Connection, target_metadata: MetaData | None) -> None:
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


#: The shared tables every service's database holds beside its own.
SHARED_TABLE_MODULES = (
    "civicsignals.common.outbox",
    "civicsignals.common.inbox",
    "civicsignals.common.audit",
)


def service_tables(service: str) -> MetaData:
    """The tables of one service (``civicsignals.<service>``) and the shared outbox, inbox and
    audit log, as its migrations must build them. Other services' models may be registered in the
    same process (a test session imports them all), so the registry is filtered by module; the
    caller imports the service's app first, which registers every table it uses."""
    from sqlmodel import SQLModel

    mine = MetaData()
    for mapper in SQLModel._sa_registry.mappers:
        module = mapper.class_.__module__
        if module.startswith(f"civicsignals.{service}.") or module in SHARED_TABLE_MODULES:
            table = mapper.local_table
            assert isinstance(table, Table), table  # SQLModel maps every model to one table
            table.to_metadata(mine)
    return mine


def make_revision(package: str, database_url: str, message: str) -> Path:
    """Autogenerate a revision against ``database_url`` (which must be at head) for developers."""
    from sqlmodel import SQLModel

    # Everything the running service registers: its models, and the shared outbox, inbox and audit.
    importlib.import_module(package.rsplit(".", 1)[0] + ".app")
    config = alembic_config(package, database_url)
    versions = migrations_dir(package) / "versions"
    number = len([p for p in versions.glob("*.py") if not p.name.startswith("_")]) + 1
    engine = create_async_engine(database_url, poolclass=pool.NullPool)

    def _revise(connection: Connection) -> None:
        config.attributes["connection"] = connection
        config.attributes["target_metadata"] = SQLModel.metadata
        command.revision(config, message=message, autogenerate=True, rev_id=f"{number:04d}")

    async def _run() -> None:
        try:
            await upgrade(engine, package)
            async with engine.begin() as connection:
                await connection.run_sync(_revise)
        finally:
            await engine.dispose()

    asyncio.run(_run())
    return max(versions.glob(f"{number:04d}_*.py"))


ENV_PY = '''"""Alembic environment of this service's database (see civicsignals.common.migrations)."""

from civicsignals.common.migrations import run_env

run_env()
'''

SCRIPT_MAKO = '''"""${message}

Revision ID: ${up_revision}
Revises: ${repr(down_revision)}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import civicsignals.common.db
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''


def scaffold(package_dir: Path) -> None:
    """Create a service's ``migrations`` folder (env.py, template, versions) if it is missing."""
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "versions").mkdir(exist_ok=True)
    files = {
        "__init__.py": '"""Alembic migrations of this service\'s database."""\n',
        "env.py": ENV_PY,
        "script.py.mako": SCRIPT_MAKO,
    }
    for name, text in files.items():
        target = package_dir / name
        if not target.exists():
            target.write_text(text, encoding="utf-8")
