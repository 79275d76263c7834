"""Traces in the agent: the span of each task's handler, a child of the platform's dispatch
span (the ``traceparent`` its task message carries), and the trace context a delegation
carries on, so a child task's spans join its parent's trace.

Only the OpenTelemetry API is needed: without a tracer provider every span is the API's
no-op. When the platform gives the agent ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the
OpenTelemetry SDK and its OTLP exporter are installed beside the agent,
:func:`configure_from_env` exports the spans there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["configure_from_env", "current_traceparent", "handling"]

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("corral.sdk")
_PROPAGATOR = TraceContextTextMapPropagator()


@contextlib.contextmanager
def handling(
    traceparent: str | None, *, task: str, agent: str, org: str, attempt: int
) -> Iterator[Span]:
    """The span of one run of a task's handler (current while it runs). Without a trace
    context it starts nothing: a task nobody traces costs nothing here."""
    if traceparent is None:
        yield trace.INVALID_SPAN
        return
    parent = _PROPAGATOR.extract(carrier={"traceparent": traceparent})
    with _TRACER.start_as_current_span(
        "corral.handle",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "corral.org": org,
            "corral.agent": agent,
            "corral.task": task,
            "corral.attempt": attempt,
        },
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


def ended(span: Span, outcome: str) -> None:
    """Note how the handler ended (``complete``, ``blocked``, ``failed``, ``cancelled``)."""
    if span.is_recording():
        span.set_attribute("corral.outcome", outcome)
        if outcome == "failed":
            span.set_status(StatusCode.ERROR)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span active now (the handler's), for a delegation."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def configure_from_env(
    env: Mapping[str, str] | None = None, *, service: str = "corral-agent"
) -> Callable[[], None]:
    """Export this agent's spans over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
    and the OpenTelemetry SDK is installed; returns what flushes and stops the exporter (a
    no-op otherwise)."""
    e = os.environ if env is None else env
    endpoint = e.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return lambda: None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-sdk is not installed")
        return lambda: None
    attributes = {"service.name": e.get("OTEL_SERVICE_NAME") or service}
    for key, name in (("CORRAL_ORG", "corral.org"), ("CORRAL_AGENT_ID", "corral.agent")):
        if e.get(key):
            attributes[name] = e[key]
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=2),
            schedule_delay_millis=1000,
        )
    )
    trace.set_tracer_provider(provider)
    return provider.shutdown
