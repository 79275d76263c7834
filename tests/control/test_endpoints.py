"""What agents were given to reach the platform, kept in the data directory."""

from __future__ import annotations

from pathlib import Path

from corral.control.endpoints import ENDPOINTS_FILE, AgentEndpoints


def test_what_a_start_wrote_the_next_one_reads(tmp_path: Path) -> None:
    kept = AgentEndpoints(bus="nats://127.0.0.1:4250", gateway="http://127.0.0.1:8001")
    kept.write(tmp_path)
    assert AgentEndpoints.read(tmp_path) == kept
    assert (kept.bus_port, kept.gateway_port) == (4250, 8001)
    assert (tmp_path / ENDPOINTS_FILE).stat().st_mode & 0o777 == 0o600


def test_nothing_or_anything_unreadable_is_no_record(tmp_path: Path) -> None:
    assert AgentEndpoints.read(tmp_path) is None
    for text in ("", "[1]", '{"bus": "nats://x"}', "{not json"):
        (tmp_path / ENDPOINTS_FILE).write_text(text)
        assert AgentEndpoints.read(tmp_path) is None
    assert AgentEndpoints(bus="nats://h:port", gateway="http://h").gateway_port is None
    assert AgentEndpoints(bus="nats://h:port", gateway="http://h").bus_port is None
