"""The recorded-event envelope and its CloudEvents 1.0 binding (Kafka binary mode, JSON).

A `RecordedEvent` is what the store hands back: the domain payload plus the
CloudEvents attributes and extensions of DESIGN.md §2. The `cloudevents` SDK does
the Kafka binary-mode encoding so that any CloudEvents reader parses our records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from events.catalog import DomainEvent, parse_event

SEQUENCE_WIDTH = 20
DATACONTENTTYPE = "application/json"
_FORMAT = JSONFormat()
# The attributes every event of ours carries (CloudEvents' required ones and our extensions).
_OWN_ATTRIBUTES = frozenset({"id", "source", "type", "time", "sequence", "streamversion"})


@dataclass(frozen=True, slots=True)
class EventMetadata:
    """Who and what caused an append: carried into every event's envelope."""

    actor: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None


@dataclass(slots=True)
class RecordedEvent:
    """One event as stored: payload, position and CloudEvents attributes.

    Read-only by contract but not `frozen`: a frozen dataclass sets each of these 16
    fields through `object.__setattr__` (~4.4 µs per event against ~0.5 µs), and a
    catch-up or rebuild constructs one per event read, so that alone was a third of a
    consumer's CPU. Nothing assigns to a recorded event's fields.
    """

    position: int
    event_id: str
    source: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    partition_key: str
    occurred_at: datetime
    recorded_at: datetime
    traceparent: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    _domain: DomainEvent | None = field(default=None, repr=False, compare=False)

    @property
    def partner_id(self) -> str | None:
        """The partner this event belongs to, if any."""
        value = self.data.get("partner_id")
        return str(value) if value else None

    def domain(self) -> DomainEvent:
        """The payload as its current catalog model (upcast when stored at an older version)."""
        if self._domain is None:
            self._domain = parse_event(self.type, self.schema_version, self.data)
        return self._domain

    def to_cloudevent(self) -> CloudEvent:
        """The CloudEvents 1.0 form of this event."""
        attributes: dict[str, Any] = {
            "id": self.event_id,
            "source": f"/{self.source}",
            "type": self.type,
            "specversion": "1.0",
            "subject": self.stream_id,
            "time": self.occurred_at,
            "datacontenttype": DATACONTENTTYPE,
            "dataschema": f"urn:partnerhub:{self.type}:v{self.schema_version}",
            "partitionkey": self.partition_key,
            "sequence": str(self.position).zfill(SEQUENCE_WIDTH),
            "streamid": self.stream_id,
            "streamversion": str(self.stream_version),
            "recordedtime": self.recorded_at.isoformat(),
        }
        for name, value in (
            ("traceparent", self.traceparent),
            ("correlationid", self.correlation_id),
            ("causationid", self.causation_id),
            ("actor", self.actor),
        ):
            if value:
                attributes[name] = value
        return CloudEvent(attributes=attributes, data=self.data)

    def to_json(self) -> dict[str, Any]:
        """The envelope in CloudEvents JSON (structured) shape, for the log API and dead letters."""
        return envelope_json(
            position=self.position,
            event_id=self.event_id,
            source=self.source,
            stream_id=self.stream_id,
            stream_version=self.stream_version,
            type=self.type,
            schema_version=self.schema_version,
            data=self.data,
            partition_key=self.partition_key,
            occurred_at=self.occurred_at,
            recorded_at=self.recorded_at,
            traceparent=self.traceparent,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            actor=self.actor,
        )

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RecordedEvent:
        """Inverse of `to_json` (log API catch-up, dead-letter replay)."""
        return cls._from_attributes(body, body.get("data") or {})

    @classmethod
    def _from_attributes(cls, attrs: dict[str, Any], data: dict[str, Any]) -> RecordedEvent:
        # The hot path of every catch-up and rebuild (one call per event read): the
        # attributes are read directly and the event is built positionally.
        get = attrs.get
        schema = get("dataschema") or ""
        time = attrs["time"]
        return cls(
            int(attrs["sequence"]),
            attrs["id"],
            attrs["source"].lstrip("/"),
            get("streamid") or attrs["subject"],
            int(attrs["streamversion"]),
            attrs["type"],
            int(schema.rsplit(":v", 1)[1]) if ":v" in schema else 1,
            data,
            get("partitionkey") or "",
            _as_datetime(time),
            _as_datetime(get("recordedtime") or time),
            get("traceparent"),
            get("correlationid"),
            get("causationid"),
            get("actor"),
        )

    def to_kafka(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) of the Kafka record in CloudEvents binary mode."""
        message = ce_kafka.to_binary(self.to_cloudevent(), _FORMAT)
        key = message.key if isinstance(message.key, bytes) else str(message.key).encode()
        return key, bytes(message.value or b""), list(message.headers.items())

    @classmethod
    def from_kafka(
        cls, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]
    ) -> RecordedEvent:
        """Parse a Kafka record in CloudEvents binary mode (as `to_kafka` and the relay write it).

        A record of the shape the relay writes (a `ce_` header per attribute, JSON data)
        is read straight from its headers: the binding maps each attribute to one
        header, and going through the CloudEvents SDK (validation, dateutil, a regex
        per content type) was a fifth of a consumer's CPU. Anything else goes through
        the SDK, which also rejects what is not a CloudEvent. Tests parse both ways
        and compare.
        """
        attrs: dict[str, Any] = {}
        content_type = None
        for name, raw in headers:
            if name.startswith("ce_"):
                attrs[name[3:]] = raw.decode()
            elif name == "content-type":
                content_type = raw.decode()
        if content_type == DATACONTENTTYPE and value and attrs.get("specversion") == "1.0" and attrs.keys() >= _OWN_ATTRIBUTES:
            data = orjson.loads(value)
            if isinstance(data, dict):
                return cls._from_attributes(attrs, data)
        return cls.from_kafka_sdk(key=key, value=value, headers=headers)

    @classmethod
    def from_kafka_sdk(
        cls, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]
    ) -> RecordedEvent:
        """`from_kafka` through the CloudEvents SDK's Kafka binding."""
        message = ce_kafka.KafkaMessage(headers=dict(headers), key=key, value=value or b"")
        event = ce_kafka.from_binary(message, _FORMAT, CloudEvent)
        attrs = dict(event.get_attributes())
        data = event.get_data()
        if isinstance(data, bytes | str):
            data = orjson.loads(data)
        return cls._from_attributes(attrs, dict(data or {}))


def envelope_json(
    *,
    position: int,
    event_id: str,
    source: str,
    stream_id: str,
    stream_version: int,
    type: str,
    schema_version: int,
    data: Any,
    partition_key: str,
    occurred_at: datetime | str,
    recorded_at: datetime | str,
    traceparent: str | None,
    correlation_id: str | None,
    causation_id: str | None,
    actor: str | None,
) -> dict[str, Any]:
    """A recorded event in CloudEvents JSON (structured) shape.

    `data` is the payload: a dict, or an `orjson.Fragment` of the stored JSON text (the
    log API passes payloads through without parsing them). The timestamps are datetimes
    or their `isoformat()` text (the log API has the database format them).
    """
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/{source}",
        "type": type,
        "subject": stream_id,
        "time": occurred_at if isinstance(occurred_at, str) else occurred_at.isoformat(),
        "datacontenttype": DATACONTENTTYPE,
        "dataschema": f"urn:partnerhub:{type}:v{schema_version}",
        "partitionkey": partition_key,
        "sequence": str(position).zfill(SEQUENCE_WIDTH),
        "streamid": stream_id,
        "streamversion": str(stream_version),
        "recordedtime": recorded_at if isinstance(recorded_at, str) else recorded_at.isoformat(),
        "data": data,
    }
    if traceparent:
        body["traceparent"] = traceparent
    if correlation_id:
        body["correlationid"] = correlation_id
    if causation_id:
        body["causationid"] = causation_id
    if actor:
        body["actor"] = actor
    return body


def json_text(value: Any) -> str:
    """JSON text of a payload: orjson, or the standard library for what orjson refuses
    (integers past 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(value if isinstance(value, str) else str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
