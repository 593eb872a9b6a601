"""The secured reverse proxy: a plain ASGI app in front of FastAPI.

Per proxied request: match the route table, verify the bearer token locally (signature,
`typ`, iss, aud, exp/nbf with leeway, deny-list; verified tokens are cached by digest),
check the route's scope, take a rate-limit token, then stream the request to the
upstream over its keep-alive pool (`services.gateway.upstream`) and stream the answer
back. Inbound `X-Partner-Id`/`X-Client-Id`/`X-Scopes` are dropped and set from the
token; everything end-to-end (Authorization, traceparent, Idempotency-Key, …) is
forwarded as the client sent it. No FastAPI routing or pydantic runs on this path.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.breaker import Breaker
from services.gateway.ratelimit import Decision, Limiter, Plans
from services.gateway.routes import Route, allowed, has_dot_segments, match
from services.gateway.traffic import TrafficRecorder
from services.gateway.upstream import (
    ConnectFailed,
    ConnectTimeout,
    Pool,
    ReadTimeout,
    Response,
    UpstreamError,
)
from services.runtime.auth import Identity, InvalidToken, TokenVerifier
from services.runtime.problems import PROBLEM_BASE
from services.runtime.settings import Settings

log = logging.getLogger(__name__)

UPSTREAMS = ("onboarding", "lifecycle", "metrics")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Hop-by-hop headers (RFC 9110 §7.6.1) and what the gateway sets itself.
_DROP_REQUEST = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
        b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"expect",
        b"x-partner-id", b"x-client-id", b"x-scopes", b"x-request-id", b"content-length",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"x-request-id", b"ratelimit", b"ratelimit-policy",
        b"date", b"server",
    }
)
_BUFFERED_RESPONSE = 256 * 1024
_BUFFERED_REQUEST = 64 * 1024
# Traffic-window status of a request whose client went away (nginx's convention).
CLIENT_CLOSED = 499


@dataclass
class Upstream:
    """One upstream service: where it is, its connection pool and its breaker."""

    name: str
    url: str
    breaker: Breaker
    prefix: bytes = b""
    pool: Pool | None = None

    def __post_init__(self) -> None:
        parsed = urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"upstream {self.name}: {self.url!r} is not an http(s) URL")
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.tls = parsed.scheme == "https"
        self.prefix = parsed.path.rstrip("/").encode()


class _TooLarge(Exception):
    """The request body passed the limit."""


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


class _StreamedBody:
    """A request body streamed to the upstream, counted against the limit on the way."""

    def __init__(self, chunks: list[bytes], seen: int, receive: Receive, limit: int) -> None:
        self._chunks = chunks
        self._seen = seen
        self._receive = receive
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        self._chunks = []
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                raise _Disconnected()
            chunk = message.get("body", b"")
            self._seen += len(chunk)
            if self._seen > self._limit:
                raise _TooLarge()
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class _Answered(Exception):
    """The proxy answered the client itself (a problem); carries the status for traffic windows."""

    def __init__(self, status: int) -> None:
        self.status = status


class Proxy:
    """Forwards routed requests to the upstream services; a component (start/stop the sessions)."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: TokenVerifier,
        plans: Plans,
        limiter: Limiter,
        traffic: TrafficRecorder,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.plans = plans
        self.limiter = limiter
        self.traffic = traffic
        self.max_body = settings.max_body_bytes
        self.upstreams = {
            name: Upstream(
                name,
                settings.url_of(name),
                Breaker(settings.breaker_failure_threshold, settings.breaker_reset_timeout),
            )
            for name in UPSTREAMS
        }
        self._tracing = os.environ.get("PARTNERHUB_TRACING") != "off"
        self._identity_cache: dict[str, list[tuple[bytes, bytes]]] = {}

    async def start(self) -> None:
        settings = self.settings
        for upstream in self.upstreams.values():
            upstream.pool = Pool(
                upstream.host,
                upstream.port,
                tls=upstream.tls,
                connect_timeout=settings.upstream_connect_timeout,
                read_timeout=settings.upstream_read_timeout,
            )

    async def stop(self) -> None:
        for upstream in self.upstreams.values():
            if upstream.pool is not None:
                await upstream.pool.close()
                upstream.pool = None
        await self.limiter.close()

    # --- one request ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        if not self._tracing:
            await self._handle(scope, receive, send, route)
            return
        # A server span per proxied request, child of the caller's traceparent; the
        # upstream request carries this span's context, so the trace runs through here.
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        tracer = trace.get_tracer("partnerhub.gateway.proxy")
        with tracer.start_as_current_span(
            f"{scope['method']} /{route.group}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "url.path": scope["path"],
                "partnerhub.route_group": route.group,
                "partnerhub.upstream": route.upstream,
            },
        ) as span:
            status = await self._handle(scope, receive, send, route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))

    async def _handle(self, scope: Scope, receive: Receive, send: Send, route: Route) -> int:
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id: bytes | None = None
        authorization: bytes | None = None
        content_length: bytes | None = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                request_id = value if _REQUEST_ID.match(value) else None
            elif name == b"content-length":
                content_length = value
        if request_id is None:
            request_id = os.urandom(16).hex().encode()
        identity: Identity | None = None
        status = 502
        try:
            identity = await self._authorise(scope, send, request_id, route, authorization)
            decision = await self._admit(scope, identity)
            extra = decision.headers() if decision is not None else []
            if decision is not None and not decision.allowed:
                raise await self._problem(
                    scope, send, request_id, 429, "Too Many Requests",
                    f"rate limit of plan {decision.plan.name!r} exceeded; retry after {decision.retry_after} s",
                    extra=extra, type_="rate-limited",
                )
            declared: int | None = None
            if content_length is not None:
                try:
                    declared = int(content_length)
                except ValueError:
                    raise await self._problem(scope, send, request_id, 400, "Bad Request", "Content-Length is not a number") from None
                if declared > self.max_body:
                    raise await self._too_large(scope, send, request_id)
            status = await self._forward(scope, receive, send, route, identity, request_id, extra, declared)
        except _Answered as answered:
            status = answered.status
        except _Disconnected:
            status = CLIENT_CLOSED
        finally:
            self.traffic.record(
                identity.partner_id if identity is not None else None,
                route.group,
                status,
                (time.perf_counter() - started) * 1000.0,
            )
        return status

    async def _authorise(
        self, scope: Scope, send: Send, request_id: bytes, route: Route, authorization: bytes | None
    ) -> Identity | None:
        if has_dot_segments(scope["path"]):
            raise await self._problem(scope, send, request_id, 400, "Bad Request", "the path may not contain . or .. segments")
        token = None
        if authorization is not None:
            scheme, _, rest = authorization.partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                token = rest.strip().decode("latin-1")
        if token is None:
            if route.scope is None:
                return None
            raise await self._problem(
                scope, send, request_id, 401, "Unauthorized", "a bearer access token is required",
                extra=[(b"www-authenticate", b'Bearer realm="partnerhub"')],
            )
        try:
            identity = await self.verifier.verify(token)
        except InvalidToken as exc:
            raise await self._problem(
                scope, send, request_id, 401, "Unauthorized", str(exc),
                extra=[(b"www-authenticate", b'Bearer realm="partnerhub", error="invalid_token"')],
            ) from None
        if not allowed(route.scope, identity.scopes):
            challenge = f'Bearer realm="partnerhub", error="insufficient_scope", scope="{route.scope}"'
            raise await self._problem(
                scope, send, request_id, 403, "Insufficient Scope", f"this call needs scope {route.scope}",
                extra=[(b"www-authenticate", challenge.encode())], type_="insufficient-scope",
            )
        return identity

    async def _admit(self, scope: Scope, identity: Identity | None) -> Decision | None:
        if identity is not None:
            return await self.limiter.take("client:" + identity.client_id, self.plans.for_identity(identity))
        client = scope.get("client")
        key = "ip:" + (client[0] if client else "unknown")
        return await self.limiter.take(key, self.plans.get("default"))

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        identity: Identity | None,
        request_id: bytes,
        extra: list[tuple[bytes, bytes]],
        declared: int | None,
    ) -> int:
        upstream = self.upstreams[route.upstream]
        wait = upstream.breaker.admit()
        if wait is not None:
            raise await self._problem(
                scope, send, request_id, 503, "Service Unavailable",
                f"upstream {upstream.name} is failing; the circuit breaker is open",
                extra=[*extra, (b"retry-after", str(max(1, round(wait))).encode())], type_="upstream-unavailable",
            )
        pool = upstream.pool
        assert pool is not None, "Proxy.start() has not run"
        path = route.path.encode() if route.path is not None else scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = upstream.prefix + path + (b"?" + query if query else b"")
        response: Response | None = None
        started = False
        try:
            body = await self._body(receive)
            response = await pool.request(
                scope["method"].encode(),
                target,
                self._upstream_headers(scope, identity, request_id),
                body,
                content_length=declared if isinstance(body, _StreamedBody) else None,
            )
            status = response.status
            if status in (502, 503, 504):
                upstream.breaker.failure()
            else:
                upstream.breaker.success()
            headers = [(name, value) for name, value in response.headers if name not in _DROP_RESPONSE]
            headers.append((b"x-request-id", request_id))
            headers.extend(extra)
            if response.complete or _small(response.headers):
                content = response.body() if response.complete else await response.read()
                response.release()
                started = True
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": content, "more_body": False})
                return status
            started = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return status
        except _TooLarge:
            if started:
                raise
            raise await self._too_large(scope, send, request_id) from None
        except (ConnectTimeout, ReadTimeout) as exc:
            upstream.breaker.failure()
            if started:
                raise
            raise await self._problem(
                scope, send, request_id, 504, "Gateway Timeout",
                f"upstream {upstream.name} did not answer in time", extra=extra, type_="upstream-timeout",
            ) from exc
        except ConnectFailed as exc:
            upstream.breaker.failure()
            if started:
                raise
            raise await self._problem(
                scope, send, request_id, 503, "Service Unavailable",
                f"upstream {upstream.name} is not reachable", extra=extra, type_="upstream-unavailable",
            ) from exc
        except UpstreamError as exc:
            upstream.breaker.failure()
            if started:
                raise
            raise await self._problem(
                scope, send, request_id, 502, "Bad Gateway",
                f"upstream {upstream.name} failed: {exc}", extra=extra, type_="bad-gateway",
            ) from exc
        finally:
            if response is not None:
                response.release()

    def _upstream_headers(self, scope: Scope, identity: Identity | None, request_id: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(name, value) for name, value in scope["headers"] if name not in _DROP_REQUEST]
        headers.append((b"x-request-id", request_id))
        if identity is not None:
            headers.extend(self._identity_headers(identity))
        if self._tracing:
            _inject_trace(headers)
        return headers

    def _identity_headers(self, identity: Identity) -> list[tuple[bytes, bytes]]:
        cached = self._identity_cache.get(identity.token_id)
        if cached is None:
            cached = [
                (b"x-client-id", _header_value(identity.client_id)),
                (b"x-scopes", _header_value(" ".join(sorted(identity.scopes)))),
            ]
            if identity.partner_id is not None:
                cached.append((b"x-partner-id", _header_value(identity.partner_id)))
            if len(self._identity_cache) > 10_000:
                self._identity_cache.clear()
            self._identity_cache[identity.token_id] = cached
        return cached

    async def _body(self, receive: Receive) -> bytes | _StreamedBody | None:
        """The request body: bytes when it ends within the first 64 KiB, else a stream."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected()
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge()
            if not message.get("more_body", False):
                return b"".join(chunks) or None
            if size >= _BUFFERED_REQUEST:
                return _StreamedBody(chunks, size, receive, self.max_body)

    async def _too_large(self, scope: Scope, send: Send, request_id: bytes) -> _Answered:
        return await self._problem(
            scope, send, request_id, 413, "Content Too Large",
            f"the request body is larger than {self.max_body} bytes", type_="content-too-large",
        )

    async def _problem(
        self,
        scope: Scope,
        send: Send,
        request_id: bytes,
        status: int,
        title: str,
        detail: str,
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
        type_: str | None = None,
    ) -> _Answered:
        """Send a problem+json answer; returns the exception that unwinds the request."""
        doc = {
            "type": PROBLEM_BASE + (type_ or title.lower().replace(" ", "-")),
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
        }
        body = orjson.dumps(doc)
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return _Answered(status)


def _small(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the answer declares a body small enough to forward in one piece."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= _BUFFERED_RESPONSE
    return False


def _header_value(value: str) -> bytes:
    """A header value from a token claim (never with CR/LF, whatever the claim holds)."""
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def _inject_trace(headers: list[tuple[bytes, bytes]]) -> None:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if "traceparent" in carrier:
        headers[:] = [(k, v) for k, v in headers if k not in (b"traceparent", b"tracestate")]
        headers.extend((k.encode(), v.encode()) for k, v in carrier.items())


class GatewayApp:
    """The gateway's ASGI app: proxied paths go to the `Proxy`, everything else to FastAPI.

    It sits in front of the FastAPI app (not inside it as middleware), so a proxied
    request runs none of FastAPI's per-request machinery. `POST /oauth/token` takes the
    same shortcut to the same handler (FastAPI still documents it): routing and the
    middleware stack cost as much as issuing the token. Attribute access falls through
    to the FastAPI app (`state`, `router`, `openapi()`, …).
    """

    def __init__(self, api: FastAPI, proxy: Proxy, token_endpoint: ASGIApp | None = None) -> None:
        self.api = api
        self.proxy = proxy
        self.token_endpoint = token_endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = match(scope["method"], scope["path"])
            if route is not None:
                await self.proxy(scope, receive, send, route)
                return
            if self.token_endpoint is not None and scope["path"] == "/oauth/token" and scope["method"] == "POST":
                await self.token_endpoint(scope, receive, send)
                return
        await self.api(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)
