"""Alembic environment of the lifecycle service (run through services.runtime.migrations.migrate)."""

from events.schema import store_metadata
from services.lifecycle.tables import metadata
from services.lifecycle.webhooks.tables import metadata as webhook_metadata
from services.runtime.migrations import run_env

run_env([store_metadata, metadata, webhook_metadata])
