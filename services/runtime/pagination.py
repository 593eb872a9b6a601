"""Cursor pagination: `?limit=&cursor=` → `{items, next_cursor}` (opaque, URL-safe cursors)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from services.runtime.problems import Problem

T = TypeVar("T")

MAX_PAGE_SIZE = 200
INT64_MAX = 2**63 - 1
"""Largest position or sequence number a cursor may carry (SQL BIGINT)."""
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="page size (1–200)")]
Cursor = Annotated[str | None, Query(max_length=512, description="opaque cursor from next_cursor")]


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(position: dict[str, Any]) -> str:
    """An opaque cursor for `position` (the sort key of the last item shown)."""
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The position inside `cursor`; 422 when it was not made by `encode_cursor`."""
    if not cursor:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor") from exc
    # A crafted cursor must not reach SQL with a number no column can hold (500 otherwise).
    if not isinstance(value, dict) or any(isinstance(v, int) and abs(v) > INT64_MAX for v in value.values()):
        raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor")
    return value


def cursor_int(position: dict[str, Any] | None, key: str) -> int:
    """The non-negative integer `key` of a decoded cursor (0 without a cursor); 422 otherwise."""
    if position is None:
        return 0
    value = position.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Problem(422, "cursor is not valid; pass next_cursor from a previous page", title="Invalid Cursor")
    return value
