"""`partnerhub projections …`: bad input is refused before anything is read (in process)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from services.metrics.cli import register


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_unknown_projection_is_refused(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["projections", "rebuild", "revenue"])
    assert result.exit_code == 2
    assert "unknown projection" in result.output


def test_rebuild_without_a_token_explains_how_to_get_one(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PARTNERHUB_INTERNAL_CLIENT_ID", "PARTNERHUB_INTERNAL_CLIENT_SECRET", "PARTNERHUB_LOG_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["projections", "rebuild"])
    assert result.exit_code == 2
    assert "need a token" in result.output


def test_page_size_is_bounded(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["projections", "rebuild", "--page-size", "0", "--token", "x"])
    assert result.exit_code == 2
