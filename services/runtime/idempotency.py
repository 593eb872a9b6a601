"""`Idempotency-Key` on POST commands: the same key and body replays the first response.

Keys are scoped to the calling client. A first request reserves its key (a row with no
response yet) before it runs; a concurrent duplicate gets 409 while it runs; the same
key with another body or path gets 422. Responses below 500 (and not 429) are kept
for 24 h; a 5xx or 429 releases the key so the client may retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.schema import idempotency_keys
from services.runtime.auth import InvalidToken, TokenVerifier, bearer_token
from services.runtime.problems import Problem, problem_response

MAX_KEY_LENGTH = 255
KEEP_FOR = timedelta(hours=24)
# A reservation older than this is from a crashed request and may be taken over.
ABANDONED_AFTER = timedelta(seconds=60)
_REPLAYED_HEADERS = {b"content-type", b"etag", b"location"}


class IdempotencyMiddleware:
    """Pure ASGI middleware implementing `Idempotency-Key` for POST requests."""

    def __init__(self, app: ASGIApp, *, now: Callable[[], datetime]) -> None:
        self.app = app
        self.now = now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(b"idempotency-key")
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            await _answer(Problem(422, f"Idempotency-Key must be 1–{MAX_KEY_LENGTH} characters", title="Invalid Idempotency-Key"), scope, receive, send)
            return
        state = scope["app"].state
        engine: AsyncEngine = state.engine
        verifier: TokenVerifier = state.verifier
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if token is None:
            await self.app(scope, receive, send)  # the route answers 401
            return
        try:
            client_id = (await verifier.verify(token)).client_id
        except InvalidToken:
            await self.app(scope, receive, send)
            return

        body = await _read_body(receive)
        path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        body_hash = hashlib.sha256(path.encode() + b"\n" + body).hexdigest()
        now = self.now()

        replay = await self._reserve(engine, client_id, key, path, body_hash, now)
        if replay is not None:
            await replay(scope, receive, send)
            return

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def replay_receive() -> Message:
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        async def capture_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_receive, capture_send)
        finally:
            await self._settle(engine, client_id, key, captured)

    async def _reserve(
        self, engine: AsyncEngine, client_id: str, key: str, path: str, body_hash: str, now: datetime
    ) -> ASGIApp | None:
        where = {"b_client_id": client_id, "b_key": key}
        async with engine.begin() as conn:
            row = (await conn.execute(_READ, where)).mappings().first()
            if row is not None and (
                row["created_at"] < now - KEEP_FOR
                or (row["status"] is None and row["created_at"] < now - ABANDONED_AFTER)
            ):
                await conn.execute(_DELETE, where)
                row = None
            if row is None:
                try:
                    await conn.execute(
                        _INSERT,
                        {
                            "client_id": client_id,
                            "key": key,
                            "method": "POST",
                            "path": path,
                            "body_hash": body_hash,
                            "created_at": now,
                        },
                    )
                    return None
                except IntegrityError:
                    pass
        async with engine.connect() as conn:
            row = (await conn.execute(_READ, where)).mappings().first()
        if row is None:  # released between our attempts: treat as in flight
            return problem_response(_in_progress())
        if row["body_hash"] != body_hash:
            return problem_response(
                Problem(
                    422,
                    "this Idempotency-Key was used with a different request; use a new key",
                    title="Idempotency-Key Reused",
                    type="idempotency-key-reused",
                )
            )
        if row["status"] is None:
            return problem_response(_in_progress())
        if row["body"] == _SECRET_WITHHELD:
            return problem_response(
                Problem(
                    409,
                    f"this request already ran (status {row['status']}); its answer carried a secret that is shown only once",
                    title="Already Processed",
                    type="idempotent-secret-withheld",
                    original_status=row["status"],
                )
            )
        return _stored_response(row["status"], row["headers"] or [], row["body"] or "")

    async def _settle(self, engine: AsyncEngine, client_id: str, key: str, captured: dict[str, Any]) -> None:
        where = {"b_client_id": client_id, "b_key": key}
        status = int(captured["status"])
        async with engine.begin() as conn:
            if status >= 500 or status == 429:
                await conn.execute(_DELETE, where)
                return
            headers = [
                [k.decode("latin-1"), v.decode("latin-1")]
                for k, v in captured["headers"]
                if k.lower() in _REPLAYED_HEADERS
            ]
            body = bytes(captured["body"]).decode("utf-8", "replace")
            if _carries_secret(captured["headers"]):
                # A response shown once (a client or webhook secret) is never kept: a replay
                # learns the request already ran, but not the secret.
                headers, body = [], _SECRET_WITHHELD
            await conn.execute(_UPDATE, {**where, "status": status, "headers": headers, "body": body})


# Built once, with the key as b_ parameters (the insert names the same columns).
_KEY = and_(
    idempotency_keys.c.client_id == bindparam("b_client_id"), idempotency_keys.c.key == bindparam("b_key")
)
_READ = select(idempotency_keys).where(_KEY)
_DELETE = delete(idempotency_keys).where(_KEY)
_INSERT = insert(idempotency_keys)
_UPDATE = update(idempotency_keys).where(_KEY)
_SECRET_WITHHELD = "\x00secret-withheld"


def _carries_secret(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"cache-control" and b"no-store" in v.lower() for k, v in headers)


def _in_progress() -> Problem:
    return Problem(
        409,
        "a request with this Idempotency-Key is still in progress; retry later",
        title="Request In Progress",
        type="idempotency-key-in-progress",
        headers={"Retry-After": "1"},
    )


def _stored_response(status: int, headers: list[list[str]], body: str) -> ASGIApp:
    raw_body = body.encode()

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw_headers += [(b"idempotent-replayed", b"true"), (b"content-length", str(len(raw_body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": raw_body})

    return respond


async def _read_body(receive: Receive) -> bytes:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(chunks)


async def _answer(problem: Problem, scope: Scope, receive: Receive, send: Send) -> None:
    await problem_response(problem, scope.get("path"))(scope, receive, send)


__all__ = ["IdempotencyMiddleware"]
