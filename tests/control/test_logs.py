"""The log formats: one JSON object a line, or a readable line, with the ids of what a record
is about; the format chosen by CORRAL_LOG_FORMAT or by whether stderr is a terminal."""

from __future__ import annotations

import json
import logging

import pytest

from corral.api.access import loggable_path
from corral.control import logs


def record(msg: str = "agent %s restarted", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("corral.test", logging.WARNING, __file__, 1, msg, args or ("a1",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_carries_the_bound_ids_and_the_extra_fields() -> None:
    with logs.bound(org="acme", task="task_1"):
        line = logs.JsonFormatter().format(record(agent="agent-acme-w-1", attempt=2))
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["level"] == "warning" and doc["logger"] == "corral.test"
    assert doc["msg"] == "agent a1 restarted"
    assert (doc["org"], doc["agent"], doc["task"], doc["attempt"]) == (
        "acme",
        "agent-acme-w-1",
        "task_1",
        2,
    )
    assert doc["ts"].endswith("Z") and doc["ts"][4] == "-"


def test_uvicorns_coloured_copy_of_the_message_is_left_out() -> None:
    doc = json.loads(logs.JsonFormatter().format(record(color_message="\x1b[1mhi\x1b[0m")))
    assert "color_message" not in doc


def test_ids_are_bound_only_inside_the_block() -> None:
    with logs.bound(org="acme"):
        pass
    doc = json.loads(logs.JsonFormatter().format(record()))
    assert "org" not in doc and "task" not in doc


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


def test_a_text_line_puts_the_ids_after_the_message() -> None:
    with logs.bound(org="acme"):
        line = logs.TextFormatter().format(record(task="task_9"))
    assert line.endswith("WARNING corral.test: agent a1 restarted  org=acme task=task_9")


def test_the_format_follows_the_setting_else_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_LOG_FORMAT", "TEXT")
    assert logs.log_format() == "text"
    assert logs.log_format("json") == "json"
    monkeypatch.delenv("CORRAL_LOG_FORMAT")
    assert logs.log_format() == "json"  # pytest's stderr is no terminal
    monkeypatch.setenv("CORRAL_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="json or text, not 'xml'"):
        logs.log_format()


def test_only_the_known_ids_can_be_bound() -> None:
    with pytest.raises(ValueError, match="not \\['user'\\]"), logs.bound(user="x"):
        pass


def test_query_values_that_may_be_secrets_are_masked() -> None:
    path = loggable_path("/v1/events", b"key=crl_secret&limit=5&api_token=abc&state=queued")
    assert path == "/v1/events?key=***&limit=5&api_token=***&state=queued"
    assert loggable_path("/healthz", b"") == "/healthz"


def test_a_record_logged_inside_a_span_names_its_trace_and_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        doc = json.loads(logs.JsonFormatter().format(record()))
        text = logs.TextFormatter().format(record())
    ids = span.get_span_context()
    assert doc["trace_id"] == f"{ids.trace_id:032x}" and doc["span_id"] == f"{ids.span_id:016x}"
    assert f"trace_id={ids.trace_id:032x}" in text
    outside = json.loads(logs.JsonFormatter().format(record()))
    assert "trace_id" not in outside and "span_id" not in outside


def test_a_record_bringing_its_own_trace_keeps_it() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    with TracerProvider().get_tracer("test").start_as_current_span("other"):
        doc = json.loads(logs.JsonFormatter().format(record(trace_id="a" * 32, span_id="b" * 16)))
    assert (doc["trace_id"], doc["span_id"]) == ("a" * 32, "b" * 16)
