"""Alembic environment of the onboarding service (run through services.runtime.migrations.migrate)."""

from events.schema import store_metadata
from services.onboarding.tables import metadata
from services.runtime.migrations import run_env

run_env([store_metadata, metadata])
