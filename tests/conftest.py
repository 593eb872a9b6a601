"""Shared fixtures: real SQLite/PostgreSQL/Redis URLs and test token issuers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PARTNERHUB_TRACING", "off")

# CI sets this: a test that needs PostgreSQL or Redis must then fail, never skip.
REQUIRED = os.environ.get("PARTNERHUB_REQUIRE_SERVICES") == "1"


def _needed(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        if REQUIRED:
            pytest.fail(f"{variable} must be set when PARTNERHUB_REQUIRE_SERVICES=1")
        pytest.skip(f"{variable} is not set")
    return url


@pytest.fixture
def postgres_url() -> str:
    """URL of the test PostgreSQL (PARTNERHUB_TEST_POSTGRES_URL)."""
    return _needed("PARTNERHUB_TEST_POSTGRES_URL")


@pytest.fixture
def redis_url() -> str:
    """URL of the test Redis (PARTNERHUB_TEST_REDIS_URL)."""
    return _needed("PARTNERHUB_TEST_REDIS_URL")


@pytest.fixture(scope="session")
async def platform(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The whole platform, started once per test session (broker + four services)."""
    from tests.support.platform import running_platform

    async with running_platform(tmp_path_factory.mktemp("platform")) as running:
        yield running
