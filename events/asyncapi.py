"""Generate the AsyncAPI 3 document of partnerhub's topics from the event catalog.

`python -m events.asyncapi > events/asyncapi.yaml` rewrites the checked-in document;
a test fails when the two drift apart.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from events.catalog import EVENT_TYPES, DomainEvent

SOURCES = ("gateway", "onboarding", "lifecycle")

_CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 Kafka binary mode: attributes as ce_* headers.",
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "format": "uuid"},
        "ce_source": {"type": "string", "description": "/<service>"},
        "ce_type": {"type": "string"},
        "ce_subject": {"type": "string", "description": "aggregate (stream) id"},
        "ce_time": {"type": "string", "format": "date-time", "description": "occurred_at"},
        "ce_dataschema": {"type": "string", "description": "urn:partnerhub:<type>:v<schema_version>"},
        "content-type": {"type": "string", "const": "application/json"},
        "ce_partitionkey": {"type": "string", "description": "partner_id (the Kafka key)"},
        "ce_sequence": {"type": "string", "description": "zero-padded global position in the source store"},
        "ce_streamid": {"type": "string"},
        "ce_streamversion": {"type": "string"},
        "ce_recordedtime": {"type": "string", "format": "date-time"},
        "ce_traceparent": {"type": "string", "description": "W3C trace context of the causing request"},
        "ce_correlationid": {"type": "string"},
        "ce_causationid": {"type": "string"},
        "ce_actor": {"type": "string", "description": "client_id that caused the event"},
    },
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_sequence", "content-type"],
}


def _message_name(cls: type[DomainEvent]) -> str:
    return cls.type.replace(".", "_")


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a plain dict."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for source in SOURCES:
        members = sorted((c for c in EVENT_TYPES.values() if c.source == source), key=lambda c: c.type)
        channel_id = f"{source}Events"
        channels[channel_id] = {
            "address": f"partnerhub.{source}.events",
            "description": f"Events of the {source} service; key = partner_id; 6 partitions by default.",
            "messages": {_message_name(c): {"$ref": f"#/components/messages/{_message_name(c)}"} for c in members},
        }
        operations[f"publish{source.capitalize()}Events"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"The {source} relay publishes its store in position order.",
        }
        for cls in members:
            schema = cls.model_json_schema(mode="serialization")
            messages[_message_name(cls)] = {
                "name": cls.type,
                "title": cls.__name__,
                "summary": (cls.__doc__ or cls.type).strip().splitlines()[0],
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
                "payload": schema,
                "x-schema-version": cls.schema_version,
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "partnerhub events",
            "version": "1.0.0",
            "description": "Generated from events/catalog.py by `python -m events.asyncapi`; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {"CloudEventsHeaders": _CE_HEADERS}, "messages": messages},
    }


def render() -> str:
    """The document as YAML text."""
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
