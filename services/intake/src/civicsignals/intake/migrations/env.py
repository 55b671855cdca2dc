"""Alembic environment of this service's database (see civicsignals.common.migrations)."""

from civicsignals.common.migrations import run_env

run_env()
