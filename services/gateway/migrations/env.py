"""Alembic environment of the gateway service (run through services.runtime.migrations.migrate)."""

from events.schema import store_metadata
from services.gateway.tables import metadata
from services.runtime.migrations import run_env

run_env([store_metadata, metadata])
