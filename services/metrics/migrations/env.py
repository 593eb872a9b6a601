"""Alembic environment of the metrics service (run through services.runtime.migrations.migrate)."""

from events.schema import store_metadata
from services.metrics.tables import metadata
from services.runtime.migrations import run_env

run_env([store_metadata, metadata])
