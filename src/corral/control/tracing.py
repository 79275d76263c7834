"""Traces: the spans of a task's path — the API request that submits it, its dispatch to an
agent, and (in the agent, see :mod:`corral.sdk.tracing`) the handler that runs it, through
delegation to children — joined by the W3C trace context the task messages carry.

Only the OpenTelemetry API is used here: with no tracer provider configured every call is
the API's no-op, and a task submitted with no active span records nothing, so the dispatch
path then pays one dictionary lookup per task. :func:`configure` installs the SDK's provider
with an OTLP exporter when an endpoint is set (``CORRAL_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``), unless the process has a provider already.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACER",
    "configure",
    "context_of",
    "current_traceparent",
    "end_dispatch",
    "inside",
    "start_dispatch",
    "submitting",
    "traceparent_of",
]

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("corral.control")
_PROPAGATOR = TraceContextTextMapPropagator()


def context_of(headers: Mapping[str, str]) -> Context:
    """The trace context a caller sent (``traceparent`` header), or an empty one."""
    return _PROPAGATOR.extract(carrier=dict(headers))


@contextlib.contextmanager
def submitting(headers: Mapping[str, str], *, org: str) -> Iterator[Span]:
    """The span of a task's submission over the API. Inside the web framework's own request
    span when there is one (FastAPI makes one when a tracer provider is set); else it is the
    request's span itself, a child of the caller's ``traceparent`` if it sent one."""
    inside = trace.get_current_span().get_span_context().is_valid
    with TRACER.start_as_current_span(
        "corral.submit",
        context=None if inside else context_of(headers),
        kind=SpanKind.INTERNAL if inside else SpanKind.SERVER,
        attributes={"corral.org": org},
    ) as span:
        yield span


def _traceparent(context: Context | None = None) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get("traceparent")


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span active now; None when nothing is recorded (no
    provider, or a span that is not sampled)."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    return _traceparent()


def traceparent_of(span: Span) -> str | None:
    if not span.get_span_context().is_valid:
        return None
    return _traceparent(trace.set_span_in_context(span))


def start_dispatch(traceparent: str, *, org: str, task: str, agent: str, attempt: int) -> Span:
    """The span of one delivery of a task to its agent, a child of the span that submitted
    it (the API request, or the delegating handler). End it once delivered."""
    parent = _PROPAGATOR.extract(carrier={"traceparent": traceparent})
    return TRACER.start_span(
        "corral.dispatch",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "corral.org": org,
            "corral.task": task,
            "corral.agent": agent,
            "corral.attempt": attempt,
        },
    )


@contextlib.contextmanager
def inside(span: Span | None) -> Iterator[None]:
    """``span`` current in the block (ended or not: what is logged there names its trace);
    None: as it was."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False):
        yield


def end_dispatch(span: Span, result: object) -> None:
    """End a dispatch span: delivered, or the error that stopped it (``result``)."""
    if isinstance(result, Exception):
        span.set_status(StatusCode.ERROR, str(result))
    span.end()


def configure(endpoint: str | None, *, service: str = "corral-control-plane") -> Callable[[], None]:
    """Export spans over OTLP/HTTP to ``endpoint`` (``http://host:4318``) when it is set and
    the process has no tracer provider yet; returns what flushes and stops it (a no-op
    otherwise)."""
    if not endpoint:
        return lambda: None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return lambda: None  # the embedding program configured tracing itself
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("an OTLP endpoint is set but opentelemetry-sdk is not installed: no traces")
        return lambda: None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=2)
        )
    )
    trace.set_tracer_provider(provider)
    return provider.shutdown
