"""The request guard: authentication before any body is read, the size limit enforced while
the body streams, JSON depth, and requests without a valid key limited per address."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from corral.api.app import create_app
from corral.api.guard import AddressLimiter, LoginLimiter
from corral.control.platform import Platform
from corral.domain.documents import MAX_DEPTH
from corral.domain.errors import RateLimited


class CountingBody:
    """A chunked request body that counts how much of it the server pulled."""

    def __init__(self, chunk: int, chunks: int) -> None:
        self.chunk = chunk
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * self.chunk


def nested(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.fixture
def app(platform: Platform) -> Any:
    return create_app(platform)


def client(app: Any, key: str | None, *, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)


async def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(
    app: Any, platform: Platform
) -> None:
    body = CountingBody(1 << 20, 64)  # 64 MiB, no Content-Length
    async with client(app, None) as c:
        r = await c.post("/v1/orgs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    assert body.pulled <= 1  # the transport may hand over a first chunk; the guard reads none


async def test_a_chunked_body_with_a_bad_key_is_refused_before_it_is_read(app: Any) -> None:
    body = CountingBody(1 << 20, 64)
    async with client(app, "ck_nobody_0000000000000000") as c:
        r = await c.post("/v1/orgs", content=body)
    assert r.status_code == 401, r.text
    assert body.pulled <= 1


async def test_a_chunked_body_over_the_limit_stops_being_read_at_the_limit(
    app: Any, platform: Platform
) -> None:
    limit = platform.settings.max_body_bytes
    body = CountingBody(64 * 1024, 2048)  # 128 MiB in 64 KiB chunks
    async with client(app, platform.new_admin_key) as c:
        r = await c.post("/v1/orgs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert body.pulled <= limit // (64 * 1024) + 2


async def test_a_declared_length_over_the_limit_is_refused_at_once(
    app: Any, platform: Platform
) -> None:
    async with client(app, None) as c:
        r = await c.post(
            "/v1/orgs",
            content=b"{}",
            headers={"Content-Length": str(platform.settings.max_body_bytes + 1)},
        )
    assert r.status_code == 413


async def test_a_payload_nested_too_deep_is_422_and_nothing_is_stored(
    app: Any, platform: Platform
) -> None:
    async with client(app, platform.new_admin_key) as admin:
        created = (await admin.post("/v1/orgs", json={"name": "acme"})).json()
    async with client(app, created["apiKey"]) as org:
        for levels in (MAX_DEPTH + 1, 962, 100_000):
            raw = json.dumps({"payload": nested(levels)} if levels < 500 else {}).encode()
            if levels >= 500:  # built as text: the encoder would recurse this deep too
                raw = b'{"payload": ' + b'{"a": ' * (levels - 1) + b"{}" + b"}" * levels
            r = await org.post(
                "/v1/orgs/acme/tasks", content=raw, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 422, (levels, r.text)
            assert "levels deep" in r.json()["error"]["message"]
        listed = await org.get("/v1/orgs/acme/tasks")
        assert listed.status_code == 200
        assert listed.json()["tasks"] == []
        # brackets inside strings are text, not nesting
        fine = {"payload": {"text": "[" * 5000 + '\\"{' * 100}}
        r = await org.post("/v1/orgs/acme/tasks", json={**fine, "role": "worker"})
        assert r.status_code == 201, r.text


async def test_requests_without_a_valid_key_are_limited_per_address(
    app: Any, platform: Platform
) -> None:
    limiter: AddressLimiter = app.state.login_limiter.addresses
    async with client(app, "ck_nobody_0000000000000000", address="10.0.0.9") as bad:
        codes = [(await bad.get("/v1/orgs")).status_code for _ in range(limiter.burst + 5)]
        posted = await bad.post("/v1/orgs", json={"name": "x"})
    assert codes[: limiter.burst] == [401] * limiter.burst
    assert set(codes[limiter.burst :]) == {429}
    assert posted.status_code == 429 and "Retry-After" in posted.headers
    async with client(app, None, address="10.0.0.10") as other:
        assert (await other.get("/v1/orgs")).status_code == 401  # another address is not held
    async with client(app, platform.new_admin_key, address="10.0.0.11") as good:
        assert (await good.get("/v1/orgs")).status_code == 200


def test_the_address_limiter_refills_and_stays_bounded() -> None:
    now = [0.0]
    limiter = AddressLimiter(rate=1.0, burst=2, max_addresses=3, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    now[0] += 1.0
    limiter.check("a")
    for address in ("b", "c", "d", "e"):
        limiter.failed(address)
    assert len(limiter._buckets) == 3


def test_the_login_limiter_holds_a_key_whatever_the_address_and_only_that_key() -> None:
    now = [0.0]
    limiter = LoginLimiter(
        addresses=AddressLimiter(rate=1.0, burst=5, clock=lambda: now[0]), key_burst=3
    )
    limiter.keys = AddressLimiter(rate=0.5, burst=3, what="for the key", clock=lambda: now[0])
    for i in range(3):  # one failure from each of three addresses
        limiter.check(f"10.0.0.{i}", f"crl_k1_guess{i}")
        limiter.failed(f"10.0.0.{i}", f"crl_k1_guess{i}")
    with pytest.raises(RateLimited, match="for the key k1"):
        limiter.check("10.0.0.99", "crl_k1_right")  # a fresh address: the key is held
    limiter.check("10.0.0.99", "crl_k2_other")  # another key is not
    limiter.check("10.0.0.99", "not-a-key")  # nor what names no key
    now[0] += 2.0
    limiter.check("10.0.0.99", "crl_k1_right")  # it refills


async def test_an_audit_page_past_the_largest_id_is_422(app: Any, platform: Platform) -> None:
    async with client(app, platform.new_admin_key) as admin:
        await admin.post("/v1/orgs", json={"name": "acme"})
        r = await admin.get("/v1/orgs/acme/audit", params={"before": 2**63})
        assert r.status_code == 422, r.text
        r = await admin.get("/v1/orgs/acme/audit", params={"before": 2**63 - 1})
        assert r.status_code == 200, r.text


async def test_a_task_submit_may_be_larger_than_other_bodies_up_to_its_own_limit(
    app: Any, platform: Platform
) -> None:
    task_limit = platform.settings.max_payload_bytes + 64 * 1024
    assert task_limit > platform.settings.max_body_bytes
    async with client(app, platform.new_admin_key) as c:
        between = str(platform.settings.max_body_bytes + 1)
        r = await c.post("/v1/orgs", content=b"{}", headers={"Content-Length": between})
        assert r.status_code == 413  # any other body keeps the general limit
        r = await c.post(
            "/v1/orgs/acme/tasks/batch", content=b"{}", headers={"Content-Length": between}
        )
        assert r.status_code == 413  # a batch too: a large payload goes through ``POST tasks``
        over = str(task_limit + 1)
        r = await c.post("/v1/orgs/acme/tasks", content=b"{}", headers={"Content-Length": over})
        assert r.status_code == 413
        assert f"{task_limit}-byte limit" in r.json()["error"]["message"]
        body = CountingBody(64 * 1024, 1024)  # 64 MiB, chunked: read up to the limit only
        r = await c.post(
            "/v1/orgs/acme/tasks", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert body.pulled <= task_limit // (64 * 1024) + 2
