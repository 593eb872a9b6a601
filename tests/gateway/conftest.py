"""Fixtures of the gateway tests: a recording upstream on a real port and an in-process gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.support import (
    InProcessGateway,
    Upstream,
    gateway_settings,
    in_process_gateway,
    serving,
)


@pytest.fixture(scope="module")
async def upstream_server() -> AsyncIterator[Upstream]:
    server = Upstream()
    async with serving(server, server.port):
        yield server


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    """The module's upstream with an empty request log."""
    upstream_server.seen.clear()
    return upstream_server


@pytest.fixture
async def gateway(tmp_path: Path, upstream: Upstream) -> AsyncIterator[InProcessGateway]:
    """A fresh gateway per test (for tests that count what the registry or the store holds)."""
    async with in_process_gateway(gateway_settings(tmp_path, upstream.url)) as running:
        yield running


@pytest.fixture(scope="module")
async def shared_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream_server: Upstream
) -> AsyncIterator[InProcessGateway]:
    """One gateway for a module whose tests each make their own clients (faster)."""
    settings = gateway_settings(tmp_path_factory.mktemp("gateway"), upstream_server.url)
    async with in_process_gateway(settings) as running:
        yield running
