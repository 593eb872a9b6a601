"""Kafka records in CloudEvents binary mode: our fast reader agrees with the SDK's binding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.envelope import RecordedEvent
from events.relay import kafka_record

OCCURRED = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def _event(**overrides: object) -> RecordedEvent:
    fields: dict[str, object] = {
        "position": 42,
        "event_id": "0b9a4f8e-54a4-4c0a-9a1e-3f1c5a2b7d10",
        "source": "onboarding",
        "stream_id": "partner-ptn_1",
        "stream_version": 3,
        "type": "partner.assessed",
        "schema_version": 2,
        "data": {"partner_id": "ptn_1", "score": "7.25", "tier": "strategic", "nested": {"a": [1, 2]}},
        "partition_key": "ptn_1",
        "occurred_at": OCCURRED,
        "recorded_at": OCCURRED + timedelta(seconds=2),
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "correlation_id": "req-1",
        "causation_id": "cmd-1",
        "actor": "ops:alice",
    }
    fields.update(overrides)
    return RecordedEvent(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "event",
    [
        _event(),
        _event(traceparent=None, correlation_id=None, causation_id=None, actor=None, data={}),
        _event(occurred_at=OCCURRED.replace(microsecond=0), recorded_at=OCCURRED.replace(microsecond=0)),
    ],
    ids=["all-attributes", "no-optional-attributes", "whole-seconds"],
)
@pytest.mark.parametrize("writer", ["relay", "sdk"])
def test_the_fast_reader_and_the_sdk_read_the_same_event(event: RecordedEvent, writer: str) -> None:
    key, value, headers = kafka_record(event) if writer == "relay" else event.to_kafka()
    fast = RecordedEvent.from_kafka(key=key, value=value, headers=headers)
    sdk = RecordedEvent.from_kafka_sdk(key=key, value=value, headers=headers)
    assert fast == sdk == event
    assert fast.occurred_at == event.occurred_at and fast.occurred_at.tzinfo is not None


def test_a_record_of_another_shape_is_read_by_the_sdk() -> None:
    key, value, headers = kafka_record(_event())
    # Another producer's content type with parameters: not the relay's shape, still a CloudEvent.
    other = [(n, b"application/json; charset=utf-8" if n == "content-type" else v) for n, v in headers]
    assert RecordedEvent.from_kafka(key=key, value=value, headers=other) == _event()


@pytest.mark.parametrize("missing", ["ce_type", "ce_source"])
def test_a_record_that_is_not_a_cloudevent_is_rejected_as_the_sdk_rejects_it(missing: str) -> None:
    key, value, headers = kafka_record(_event())
    broken = [(n, v) for n, v in headers if n != missing]
    with pytest.raises(Exception) as fast:
        RecordedEvent.from_kafka(key=key, value=value, headers=broken)
    with pytest.raises(Exception) as sdk:
        RecordedEvent.from_kafka_sdk(key=key, value=value, headers=broken)
    assert type(fast.value) is type(sdk.value)
