"""Shared fixtures: real SQLite/PostgreSQL URLs and test token issuers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PARTNERHUB_TRACING", "off")


@pytest.fixture
def postgres_url() -> str:
    """URL of the test PostgreSQL (skips when PARTNERHUB_TEST_POSTGRES_URL is unset)."""
    url = os.environ.get("PARTNERHUB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PARTNERHUB_TEST_POSTGRES_URL is not set")
    return url
