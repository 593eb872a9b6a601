"""The event catalog is the contract: AsyncAPI stays in step, upcasting works, secrets never appear."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from events import asyncapi
from events.catalog import (
    EVENT_TYPES,
    UPCASTERS,
    DomainEvent,
    UnknownEventType,
    is_webhook_deliverable,
    parse_event,
    register_upcaster,
)

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_asyncapi_matches_the_catalog() -> None:
    checked_in = (ROOT / "events" / "asyncapi.yaml").read_text()
    assert checked_in == asyncapi.render(), "run: python -m events.asyncapi > events/asyncapi.yaml"


def test_every_event_is_documented_on_its_topic() -> None:
    doc = asyncapi.document()
    documented = {m["name"] for m in doc["components"]["messages"].values()}
    assert documented == set(EVENT_TYPES)
    for channel in doc["channels"].values():
        assert channel["address"].startswith("partnerhub.") and channel["address"].endswith(".events")


def test_event_names_are_past_tense_and_sources_known() -> None:
    for name, cls in EVENT_TYPES.items():
        assert name == cls.type and "." in name
        assert cls.source in {"gateway", "onboarding", "lifecycle"}
        assert cls.model_config.get("frozen") is True


def test_no_event_payload_carries_a_secret() -> None:
    for cls in EVENT_TYPES.values():
        for field in cls.model_fields:
            assert "secret" not in field and "password" not in field and field != "token", (cls.type, field)


def test_webhook_deliverable_excludes_operational_events() -> None:
    assert is_webhook_deliverable("partner.applied") and is_webhook_deliverable("sla.breached")
    for kind in ("webhook.message_delivered", "gateway.traffic_window_closed", "client.created"):
        assert not is_webhook_deliverable(kind)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventType):
        parse_event("partner.exploded", 1, {})


def test_old_versions_are_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    class Renamed(DomainEvent):
        type: ClassVar[str] = "test.renamed"
        schema_version: ClassVar[int] = 2
        source: ClassVar[str] = "onboarding"
        partner_id: str
        display_name: str

    monkeypatch.setitem(EVENT_TYPES, Renamed.type, Renamed)

    @register_upcaster("test.renamed", 1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data["display_name"] = data.pop("name")
        return data

    try:
        event = parse_event("test.renamed", 1, {"partner_id": "p", "name": "Acme"})
        assert isinstance(event, Renamed) and event.display_name == "Acme"
    finally:
        UPCASTERS.pop(("test.renamed", 1), None)
