"""A lean HTTP/1.1 load generator: one keep-alive connection per worker, httptools parsing.

The load generator shares the machine's two cores with the platform it measures. aiohttp
spent ~170 µs of CPU per request (1.3-1.6 ms per 8-command journey, a tenth of the
whole run's CPU); this client, an `asyncio.Protocol` over the C parser uvicorn itself
uses, spends a fraction of that, so the cores go to the platform under test, as they
would with the partners' own clients on their own machines.

It does only what the benchmarks need: requests with a body of bytes, responses with a
`Content-Length` or chunked body, keep-alive. Every response is read in full and
returned with its status, so callers check both, as they did with aiohttp.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools


class ConnectionClosed(ConnectionError):
    """The server closed the connection before answering in full."""


class _Response(asyncio.Protocol):
    """One connection's protocol: feeds the bytes to httptools, completes one waiter per response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionClosed("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        body, self._body = b"".join(self._body), []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def expect(self) -> asyncio.Future[tuple[int, bytes]]:
        if self._waiter is not None:
            raise RuntimeError("a request is already in flight on this connection")
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Connection:
    """A keep-alive HTTP/1.1 connection to `base` that sends one request at a time."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"only plain http://host:port bases are supported, not {base!r}")
        self._host, self._port = url.hostname, url.port or 80
        self._prefix = url.path.rstrip("/")
        fixed = {"Host": f"{self._host}:{self._port}", **(headers or {})}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode()
        self._protocol: _Response | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of `method path` with a JSON `body` (or none)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            _, protocol = await asyncio.get_running_loop().create_connection(_Response, self._host, self._port)
            self._protocol = protocol
        assert protocol.transport is not None
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode() + self._fixed
        if body is None:
            message = head + b"Content-Length: 0\r\n\r\n"
        else:
            message = head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        response = protocol.expect()
        protocol.transport.write(message)
        return await response

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
