"""Tables the lifecycle service keeps beside its event store (read models, registries)."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
