"""Settings fail fast on bad configuration and parse the documented formats."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.runtime.settings import Settings


def test_rate_limits_json_is_merged_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNERHUB_RATE_LIMITS", '{"strategic": {"per_second": 7, "burst": 9}}')
    settings = Settings()
    assert settings.rate_limits["strategic"] == {"per_second": 7.0, "burst": 9.0}
    assert set(settings.rate_limits) >= {"strategic", "innovation", "platform_integration", "ops", "default"}


@pytest.mark.parametrize(
    "value",
    ['{"strategic": {"per_second": 7}}', '{"ops": {"per_second": -1, "burst": 3}}', "not json"],
)
def test_bad_rate_limits_fail_fast(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PARTNERHUB_RATE_LIMITS", value)
    with pytest.raises((ValidationError, ValueError)):
        Settings()


def test_webhook_allow_nets_accepts_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNERHUB_WEBHOOK_ALLOW_NETS", "127.0.0.0/8, ::1/128")
    assert Settings().webhook_allow_nets == ["127.0.0.0/8", "::1/128"]
    monkeypatch.setenv("PARTNERHUB_WEBHOOK_ALLOW_NETS", "not-a-net")
    with pytest.raises(ValidationError):
        Settings()


def test_per_service_urls_default_to_embedded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(var_dir=tmp_path)
    assert settings.database_url_of("onboarding") == f"sqlite+aiosqlite:///{tmp_path.resolve()}/onboarding.db"
    assert settings.url_of("metrics") == "http://127.0.0.1:8003"
    assert settings.topic_of("lifecycle") == "partnerhub.lifecycle.events"
    assert settings.token_issuer == "http://127.0.0.1:8000"
