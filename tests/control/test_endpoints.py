"""What agents were given to reach the platform, kept in the data directory."""

from __future__ import annotations

from pathlib import Path

from corral.control.endpoints import ENDPOINTS_FILE, AgentEndpoints, setup_digest


def test_what_a_start_wrote_the_next_one_reads(tmp_path: Path) -> None:
    kept = AgentEndpoints(
        bus="nats://127.0.0.1:4250", gateway="http://127.0.0.1:8001", setup=setup_digest({"a": 1})
    )
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


def test_the_settings_agents_were_started_under_are_part_of_the_record(tmp_path: Path) -> None:
    """The same URLs under another sandbox setting are not the same record: what differs is
    said, and a record from before the digest was kept differs from any of today's."""
    strict = setup_digest({"sandbox": "strict", "ports": [1, 2]})
    assert strict == setup_digest({"ports": [1, 2], "sandbox": "strict"})  # order is no change
    off = setup_digest({"sandbox": "off", "ports": [1, 2]})
    now = AgentEndpoints(bus="nats://h:1", gateway="http://h:2", setup=strict)
    before = AgentEndpoints(bus="nats://h:1", gateway="http://h:2", setup=off)
    assert now != before
    assert now.changes(before) == ["the sandbox's settings or the agents' environment changed"]
    moved = AgentEndpoints(bus="nats://h:3", gateway="http://h:2", setup=strict)
    assert moved.changes(now) == ["the bus moved (nats://h:1 -> nats://h:3)"]
    (tmp_path / ENDPOINTS_FILE).write_text('{"bus": "nats://h:1", "gateway": "http://h:2"}')
    assert AgentEndpoints.read(tmp_path) != now
