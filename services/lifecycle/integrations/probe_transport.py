"""The prober's httpx transport: one short connection per probe, to an address that was checked.

A probe needs one thing from the partner's endpoint: the status line. httpx's default
transport (httpcore on anyio) spent ~3.5 ms of CPU per GET on a fresh connection here,
which alone is 12 % of a core for 1,000 integrations every 30 s; this transport opens a
plain asyncio connection, sends `GET` with `Connection: close`, reads the status line
and closes, for a fraction of that (bench/bench_lifecycle.py measures both).

It also closes the prober's DNS-rebinding gap: the host is resolved once, every address
is judged by the rule webhooks use (`services.runtime.addresses`), and the connection
goes to an address that was judged, never to the name again. TLS still verifies the
certificate against the host name (SNI), with the system's trust store.

Redirects are not followed (a 3xx is the answer), the body is never read, and the
overall deadline is the caller's (`asyncio.timeout` around the request).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl

import httpx

from services.runtime.addresses import Network, refusal

MAX_STATUS_LINE = 8 * 1024


class DestinationRefused(httpx.ConnectError):
    """The host resolves to an address outside the allowed ones (or to none)."""


class ProbeTransport(httpx.AsyncBaseTransport):
    """`GET url` → an `httpx.Response` with the status code only (headers and body unread)."""

    def __init__(self, allow: tuple[Network, ...], *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._allow = allow
        self._ssl_context = ssl_context
        self._open: set[asyncio.StreamWriter] = set()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        tls = url.scheme == "https"
        host = url.host
        port = url.port or (443 if tls else 80)
        addresses = await self._allowed_addresses(host, port, request)
        reader, writer = await self._connect(addresses, port, host if tls else None, request)
        self._open.add(writer)
        try:
            writer.write(_request_head(request, host, url.port))
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                raise httpx.RemoteProtocolError("status line too long", request=request) from exc
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
                raise httpx.RemoteProtocolError("the server closed the connection without answering", request=request) from exc
            status = _status(line)
            if status is None:
                raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}", request=request)
            return httpx.Response(status, request=request)
        finally:
            self._open.discard(writer)
            writer.transport.abort()

    async def aclose(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _allowed_addresses(self, host: str, port: int, request: httpx.Request) -> list[str]:
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise DestinationRefused(f"destination {host} is not allowed (unresolvable)", request=request) from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise DestinationRefused(f"destination {host} is not allowed (no address)", request=request)
        for address in addresses:
            kind = refusal(ipaddress.ip_address(address.split("%", 1)[0]), self._allow)
            if kind is not None:
                raise DestinationRefused(
                    f"destination {host} is not allowed ({address} is a {kind} address)", request=request
                )
        return addresses

    async def _connect(
        self, addresses: list[str], port: int, server_hostname: str | None, request: httpx.Request
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        error: OSError | None = None
        for address in addresses:
            try:
                return await asyncio.open_connection(
                    address,
                    port,
                    ssl=self._tls() if server_hostname else None,
                    server_hostname=server_hostname,
                    limit=MAX_STATUS_LINE,
                )
            except ssl.SSLError as exc:
                raise httpx.ConnectError(f"TLS handshake failed: {exc.reason or exc}", request=request) from exc
            except OSError as exc:
                error = exc
        assert error is not None
        raise httpx.ConnectError(f"cannot connect: {error.strerror or error}", request=request) from error


def _request_head(request: httpx.Request, host: str, port: int | None) -> bytes:
    authority = f"[{host}]" if ":" in host else host
    if port is not None:
        authority = f"{authority}:{port}"
    lines = [f"GET {request.url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {authority}"]
    lines += [
        f"{name}: {value}"
        for name, value in request.headers.items()
        if name.lower() not in ("host", "connection", "accept-encoding", "content-length", "transfer-encoding")
    ]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status(line: bytes) -> int | None:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])
