"""Which spans start traces: background database and HTTP calls do not; requests and our own spans do."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind

from services.runtime.telemetry import NoBackgroundClientTraces


def test_background_statements_and_polls_start_no_trace_but_stay_inside_one() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(root=NoBackgroundClientTraces()))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")

    # Alone: the relay polling its store, the revocation poller.
    with tracer.start_as_current_span("SELECT /var/onboarding.db", kind=SpanKind.CLIENT):
        pass
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):
        pass
    # Inside a request, and spans of our own, even when they start a trace.
    with tracer.start_as_current_span("POST /v1/partners", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("INSERT /var/onboarding.db", kind=SpanKind.CLIENT):
            pass
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):
            pass
    with tracer.start_as_current_span("webhook.deliver", kind=SpanKind.CLIENT):
        pass
    with tracer.start_as_current_span("send partnerhub.onboarding.events", kind=SpanKind.PRODUCER):
        pass

    names = [span.name for span in exported.get_finished_spans()]
    assert sorted(names) == sorted(
        ["INSERT /var/onboarding.db", "GET", "POST /v1/partners", "webhook.deliver", "send partnerhub.onboarding.events"]
    )
    provider.shutdown()
