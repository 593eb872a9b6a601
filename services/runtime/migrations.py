"""Alembic migrations per service, run programmatically at start-up and by the CLI."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATION_LOCK = 0x6D69_6772_6174  # "migrat"


def alembic_config(service: str) -> Config:
    """Alembic configuration for `service` (scripts in `services/<service>/migrations`)."""
    config = Config()
    config.set_main_option("script_location", f"services.{service}:migrations")
    return config


async def migrate(engine: AsyncEngine, service: str, revision: str = "head") -> None:
    """Bring `service`'s database to `revision`."""
    config = alembic_config(service)

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Replicas starting together must not race through the same migration.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        await conn.run_sync(upgrade)


def run_env(target_metadata: list[MetaData]) -> None:
    """Body of every service's `migrations/env.py` (online mode on a given connection)."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through services.runtime.migrations.migrate()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
