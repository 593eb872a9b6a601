"""Tables of webhook endpoints, messages and attempts (in the lifecycle service's database)."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
