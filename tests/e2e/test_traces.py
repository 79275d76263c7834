"""One trace covers a delegated task end to end: the API request that submits it, its
dispatch, the parent agent's handler, the child's dispatch and the child agent's handler.

The control plane runs in this process: its spans are collected with the OpenTelemetry SDK's
in-memory exporter. The agents are separate, sandboxed OS processes: they export their spans
over real OTLP/HTTP (protobuf) to a small receiver this test runs, whose port the platform
opens to them because it is the configured OTLP endpoint."""

from __future__ import annotations

import gzip
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from corral.api.server import running
from tests.e2e.conftest import Live, live_settings
from tests.support import eventually


@dataclass(frozen=True)
class Seen:
    """A span, from either side, reduced to what the test compares."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    task: str | None


class Receiver:
    """An OTLP/HTTP trace receiver: ``POST /v1/traces`` with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Seen] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for s in scope.spans:
                        attrs = {a.key: a.value.string_value for a in s.attributes}
                        self.spans.append(
                            Seen(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex() or None,
                                attrs.get("corral.task"),
                            )
                        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        thread.join(timeout=10)


class _Gated(SimpleSpanProcessor):
    """Keeps spans only while a test of this module runs: the process's tracer provider can
    be set only once, and the tests after these must not fill memory with spans."""

    open = False
    attached = False

    def on_end(self, span: ReadableSpan) -> None:
        if _Gated.open:
            super().on_end(span)


_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def control_spans() -> Iterator[InMemorySpanExporter]:
    """The control plane's spans, in memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not _Gated.attached:
        provider.add_span_processor(_Gated(_EXPORTER))
        _Gated.attached = True
    _EXPORTER.clear()
    _Gated.open = True
    try:
        yield _EXPORTER
    finally:
        _Gated.open = False
        _EXPORTER.clear()


@pytest.fixture
async def traced(
    tmp_path: Path, receiver: Receiver, control_spans: InMemorySpanExporter
) -> AsyncIterator[Live]:
    settings = live_settings(tmp_path / "data", otlp_endpoint=receiver.url)
    async with (
        running(settings) as srv,
        httpx.AsyncClient(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.platform.new_admin_key}"},
            timeout=30,
        ) as admin,
    ):
        yield Live(srv, admin, tmp_path / "data")


def _control(exporter: InMemorySpanExporter) -> list[Seen]:
    out = []
    for s in exporter.get_finished_spans():
        ctx = s.get_span_context()
        assert ctx is not None
        task = (s.attributes or {}).get("corral.task")
        out.append(
            Seen(
                s.name,
                f"{ctx.trace_id:032x}",
                f"{ctx.span_id:016x}",
                None if s.parent is None else f"{s.parent.span_id:016x}",
                None if task is None else str(task),
            )
        )
    return out


def _request_of(span: Seen, spans: list[Seen]) -> Seen:
    """The request span ``span`` runs in: the outermost of the control plane's spans above
    it (the web framework's request span where it makes one, else the submit span itself)."""
    by_id = {s.span_id: s for s in spans}
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
    assert span.name in ("POST /v1/orgs/{org}/tasks", "corral.submit"), span
    return span


async def test_one_trace_covers_a_delegated_task_from_the_api_to_the_childs_handler(
    traced: Live, receiver: Receiver, control_spans: InMemorySpanExporter
) -> None:
    live = traced
    await live.org("acme")
    manager = await live.agent("acme", "mgr", role="manager")
    await live.agent("acme", "wrk", role="worker")
    parent = await live.task(
        "acme",
        agent=manager["id"],
        payload={"op": "delegate", "role": "worker", "payload": {"op": "wordcount", "text": "a b"}},
    )
    done = await live.wait_task("acme", parent["id"])
    assert done["state"] == "completed", done
    children = (await live.admin.get("/v1/orgs/acme/tasks", params={"parent": parent["id"]})).json()
    [child] = children["tasks"]

    def handled() -> dict[str | None, Seen] | None:
        with receiver.lock:
            found = {s.task: s for s in receiver.spans if s.name == "corral.handle"}
        return found if parent["id"] in found and child["id"] in found else None

    handlers = await eventually(handled, timeout=60, message="both handlers' spans exported")
    spans = _control(control_spans)
    [submit] = [s for s in spans if s.name == "corral.submit" and s.task == parent["id"]]
    api = _request_of(submit, spans)
    [dispatch] = [s for s in spans if s.name == "corral.dispatch" and s.task == parent["id"]]
    [child_dispatch] = [s for s in spans if s.name == "corral.dispatch" and s.task == child["id"]]
    handler, child_handler = handlers[parent["id"]], handlers[child["id"]]

    # the task remembers its trace (the API says so, and the console's task page)
    assert done["traceId"] == child["traceId"] == api.trace_id
    chain = [api, submit, dispatch, handler, child_dispatch, child_handler]
    assert {s.trace_id for s in chain} == {api.trace_id}, chain  # one trace
    assert api.parent_id is None  # the request started it (no traceparent was sent)
    assert dispatch.parent_id == submit.span_id
    assert handler.parent_id == dispatch.span_id
    assert child_dispatch.parent_id == handler.span_id
    assert child_handler.parent_id == child_dispatch.span_id


async def test_a_callers_traceparent_is_the_parent_of_the_api_span(
    traced: Live, control_spans: InMemorySpanExporter
) -> None:
    live = traced
    await live.org("acme")
    agent = await live.agent("acme", "wrk")
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await live.admin.post(
        "/v1/orgs/acme/tasks",
        json={"agent": agent["id"], "payload": {"op": "echo"}},
        headers={"traceparent": caller},
    )
    assert r.status_code == 201
    task = r.json()
    await live.wait_task("acme", task["id"])
    spans = _control(control_spans)
    [submit] = [s for s in spans if s.name == "corral.submit"]
    api = _request_of(submit, spans)
    assert api.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert api.parent_id == "b7ad6b7169203331"
    assert submit.task == task["id"]
