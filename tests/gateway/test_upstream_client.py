"""The proxy's HTTP/1.1 upstream client against scripted servers: framing, reuse, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.gateway.upstream import ConnectFailed, Pool, ReadTimeout, UpstreamClosed
from tests.gateway.support import free_port

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server running `script` per connection; yields (port, connection counter)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            body = await reader.readexactly(int(line.split(b":")[1]))
    return head, body


def pool(port: int, **kw: float) -> Pool:
    return Pool("127.0.0.1", port, connect_timeout=kw.get("connect", 1.0), read_timeout=kw.get("read", 2.0))


async def answer(p: Pool, method: bytes = b"GET", body: bytes | None = None) -> tuple[int, bytes]:
    response = await p.request(method, b"/x", [(b"accept", b"*/*")], body)
    try:
        return response.status, await response.read()
    finally:
        response.release()


async def test_keep_alive_connections_are_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async with scripted(script) as (port, connections):
        p = pool(port)
        for _ in range(5):
            assert await answer(p) == (200, b"ok")
        assert len(connections) == 1
        await p.close()


async def test_chunked_and_read_until_close_bodies() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        if b"/x" in head and b"chunked-please" in head:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            await writer.drain()
            await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with scripted(script) as (port, _):
        p = pool(port)
        response = await p.request(b"GET", b"/x", [(b"x-mode", b"chunked-please")], None)
        assert await response.read() == b"abcde"
        assert (b"transfer-encoding", b"chunked") in response.headers
        response.release()
        assert await answer(p) == (200, b"until the end")
        await p.close()


async def test_request_bodies_bytes_and_streamed() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in head:
                body = b""
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            seen.append(body)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async def stream() -> AsyncIterator[bytes]:
        for part in (b"one,", b"", b"two"):
            yield part

    async with scripted(script) as (port, _):
        p = pool(port)
        assert await answer(p, b"POST", b'{"a": 1}') == (204, b"")
        response = await p.request(b"POST", b"/x", [], stream())
        assert response.status == 204
        response.release()
        response = await p.request(b"PUT", b"/x", [], stream(), content_length=7)
        response.release()
        assert seen == [b'{"a": 1}', b"one,two", b"one,two"]
        await p.close()


async def test_a_stale_reused_connection_is_retried_for_idempotent_requests() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # Then close without a word (as a server does when its keep-alive timeout passes).

    async with scripted(script) as (port, connections):
        p = pool(port)
        assert await answer(p) == (200, b"ok")
        await asyncio.sleep(0.05)  # let the close arrive... or not: both paths must work
        assert await answer(p) == (200, b"ok")
        assert len(connections) == 2
        await p.close()


async def test_connection_refused_is_connect_failed() -> None:
    p = pool(free_port())
    with pytest.raises(ConnectFailed):
        await answer(p)


async def test_silence_is_a_read_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(3)

    async with scripted(script) as (port, _):
        p = pool(port, read=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await answer(p)
        assert loop.time() - started < 1.5
        await p.close()


@pytest.mark.parametrize(
    "reply",
    [b"this is not http\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
    ids=["garbage", "cut_short"],
)
async def test_broken_answers_are_upstream_closed(reply: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with scripted(script) as (port, _):
        p = pool(port)
        with pytest.raises(UpstreamClosed):
            await answer(p)
        await p.close()


async def test_head_answers_have_no_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with scripted(script) as (port, _):
        p = pool(port)
        assert await answer(p, b"HEAD") == (200, b"")
        await p.close()
