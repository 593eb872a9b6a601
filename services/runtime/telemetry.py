"""OpenTelemetry for every process: traces (JSON lines, console or OTLP) and JSON logs.

Resource `service.name=partnerhub-<service>`; W3C trace context over HTTP and in
Kafka headers (`ce_traceparent`), so one trace runs gateway → service → store →
relay → Kafka → projection / webhook delivery.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from services.runtime.settings import Settings

_configured: set[str] = set()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans, one JSON object a line, to a file (read by `partnerhub traces`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # orjson: the exporter thread holds the GIL while it encodes, so this is time the
        # service's event loop waits for (json.dumps was ~4 % of a busy service's CPU).
        data = b"".join(orjson.dumps(span_to_dict(span)) + b"\n" for span in spans)
        with self._lock, self._path.open("ab") as out:
            out.write(data)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """A compact JSON form of a finished span."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in (span.attributes or {}).items()},
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


# The first word of the span names the SQLAlchemy and httpx instrumentations give.
_INSTRUMENTED_CALLS = frozenset(
    {
        "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "PRAGMA", "BEGIN", "COMMIT", "ROLLBACK",
        "SAVEPOINT", "RELEASE", "CREATE", "DROP", "ALTER", "connect",
        "GET", "HEAD", "POST", "PUT", "PATCH", "OPTIONS",
    }
)


class NoBackgroundClientTraces(Sampler):
    """Root sampler: a database statement or HTTP call that would start a trace of its own is not recorded.

    Inside a request, a consumer's `process` span, a relay `send` or a webhook delivery,
    such calls are children and are recorded as before (`ParentBased`). Alone, they come
    from background loops: the relay reading its store every 50 ms, checkpoint reads, the
    revocation poller. Each became a one-span trace, 12–14 a second per idle service,
    burying the traces ops look for. Spans of our own (`webhook.deliver`, `send …`,
    `process …`) and every server span still start traces.
    """

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and name.split(" ", 1)[0] in _INSTRUMENTED_CALLS:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return "NoBackgroundClientTraces"


def setup_telemetry(service: str, settings: Settings) -> TracerProvider | None:
    """Install the tracer provider and JSON logging for this process (once per process)."""
    setup_logging(service, settings.log_level)
    if service in _configured or os.environ.get("PARTNERHUB_TRACING") == "off":
        return None
    _configured.add(service)
    # OTEL_TRACES_SAMPLER, when set, is the operator's choice and wins (the SDK reads it).
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(root=NoBackgroundClientTraces())
    provider = TracerProvider(resource=Resource.create({"service.name": f"partnerhub-{service}"}), sampler=sampler)
    if settings.trace_file:
        provider.add_span_processor(
            BatchSpanProcessor(JsonLinesSpanExporter(settings.traces_path / f"{service}.jsonl"), schedule_delay_millis=500)
        )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if settings.trace_console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()
    return provider


def instrument_app(app: Any, engine: Any) -> None:
    """Instrument a FastAPI app and its SQLAlchemy engine."""
    if os.environ.get("PARTNERHUB_TRACING") == "off":
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.utils import unwrap
    from sqlalchemy.engine import Engine

    # Without the ASGI `http send`/`http receive` spans (two or three per request, each
    # a few microseconds long) and the SQLAlchemy `connect` span of every pool checkout
    # (one per statement or transaction): a third of all spans, recording nothing a
    # trace reader uses. Requests, SQL statements, Kafka sends and consumer spans stay.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"])
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine)
    unwrap(Engine, "connect")


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, if one is recording."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the current trace and span ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if ctx.is_valid:
            doc["trace_id"] = format(ctx.trace_id, "032x")
            doc["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        for key in ("partner_id", "event_id", "subscription", "position"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        return json.dumps(doc, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """JSON-lines logs on stderr."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    logging.Formatter.converter = __import__("time").gmtime
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
