"""Baseline: the event store tables and the lifecycle service's own tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

from events.schema import store_metadata
from services.lifecycle.tables import metadata
from services.lifecycle.webhooks.tables import metadata as webhook_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The baseline creates the schema as it stands at this revision; later changes
    # come as incremental revisions (alembic revision --autogenerate).
    bind = op.get_bind()
    store_metadata.create_all(bind)
    metadata.create_all(bind)
    webhook_metadata.create_all(bind)


def downgrade() -> None:
    bind = op.get_bind()
    webhook_metadata.drop_all(bind)
    metadata.drop_all(bind)
    store_metadata.drop_all(bind)
