"""The console over plain HTTP against a whole running platform: logging in keeps the key in
an HTTP-only, SameSite=Strict cookie and nowhere else; an org key sees nothing of another
org (every URL of another org answers 404); the API takes no key from a URL; the event
stream gives every event an id and resumes after the last one a reconnecting page saw."""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from corral.api.console.session import COOKIE
from tests.e2e.conftest import Live
from tests.support import eventually


@contextlib.asynccontextmanager
async def _login(live: Live, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as client:
        r = await client.post("/login", data={"key": key})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/"
        yield client


async def test_logging_in_sets_an_http_only_strict_cookie_and_no_url_carries_the_key(
    live: Live,
) -> None:
    async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as visitor:
        r = await visitor.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        form = await visitor.get("/login")
        assert 'method="post"' in form.text and 'name="key"' in form.text

        bad = await visitor.post("/login", data={"key": "ck_nope.nope"})
        assert bad.status_code == 401 and "API key" in bad.text
        assert COOKIE not in bad.cookies

        key = live.platform.new_admin_key
        r = await visitor.post("/login", data={"key": key})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert "path=/" in attributes

        home = await visitor.get("/")
        assert home.status_code == 200 and "all tenants" in home.text
        assert key not in home.text  # the page never repeats the key
        assert home.headers["cache-control"] == "no-store"

        out = await visitor.post("/logout", headers={"origin": live.server.url})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await visitor.get("/")).status_code == 303


async def test_the_api_takes_no_key_from_a_url(live: Live) -> None:
    org, client = await live.org("acme")
    async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as anon, client:
        for path in ("/v1/orgs/acme/tasks", "/v1/orgs/acme/events", "/v1/orgs"):
            r = await anon.get(path, params={"key": org["apiKey"]})
            assert r.status_code == 401, (path, r.text)
        assert (await client.get("/v1/orgs/acme/tasks")).status_code == 200


async def test_an_org_key_sees_nothing_of_another_org(live: Live) -> None:
    acme, _ = await live.org("acme")
    await live.org("globex")
    theirs = await live.agent("globex", "worker")
    task = await live.task("globex", agent=theirs["id"], payload={"op": "echo"})
    await live.wait_task("globex", task["id"])

    async with _login(live, acme["apiKey"]) as console:
        home = await console.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/orgs/acme"
        own = await console.get("/orgs/acme")
        assert own.status_code == 200
        for foreign in ("globex", theirs["id"], task["id"]):
            assert foreign not in own.text
        for path in (
            "/orgs/globex",
            f"/orgs/globex/tasks/{task['id']}",
            f"/orgs/acme/tasks/{task['id']}",
            f"/orgs/globex/agents/{theirs['id']}",
            f"/orgs/acme/agents/{theirs['id']}",
            f"/orgs/globex/agents/{theirs['id']}/log",
            "/orgs/globex/events",
            "/orgs/nosuch",
        ):
            r = await console.get(path)
            assert r.status_code == 404, (path, r.status_code)
        # another org's agent answers exactly as an agent that does not exist
        foreign = await console.get(f"/orgs/acme/agents/{theirs['id']}")
        unknown = await console.get("/orgs/acme/agents/agent-acme-nobody-000000")
        assert foreign.text.replace(theirs["id"], "X") == unknown.text.replace(
            "agent-acme-nobody-000000", "X"
        )
        same = {"origin": live.server.url}
        for path in (
            f"/orgs/globex/tasks/{task['id']}/cancel",
            f"/orgs/globex/agents/{theirs['id']}/pause",
            f"/orgs/acme/agents/{theirs['id']}/terminate",
        ):
            r = await console.post(path, headers=same)
            assert r.status_code == 404, (path, r.status_code)
        assert (await console.get("/events")).status_code == 403  # every org's: admin only
    # nothing happened to globex's agent
    r = await live.admin.get(f"/v1/orgs/globex/agents/{theirs['id']}")
    assert r.json()["state"] == "running"


async def test_an_action_posted_from_another_site_is_refused(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "worker")
    async with _login(live, live.platform.new_admin_key) as console:
        r = await console.post(
            f"/orgs/acme/agents/{agent['id']}/pause", headers={"origin": "https://evil.example"}
        )
        assert r.status_code == 403
    r = await live.admin.get(f"/v1/orgs/acme/agents/{agent['id']}")
    assert r.json()["state"] == "running"


async def _events(
    lines: AsyncIterator[str], wanted: int
) -> tuple[int | None, list[dict[str, Any]]]:
    """Read the stream until ``wanted`` events came; the first id line and the events."""
    first: int | None = None
    events: list[dict[str, Any]] = []
    event_id: int | None = None
    async for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
            if first is None:
                first = event_id
        elif line.startswith("data: "):
            events.append({"id": event_id, **json.loads(line[6:])})
            if len(events) >= wanted:
                break
    return first, events


async def test_the_event_stream_resumes_after_the_last_event_id(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "worker")
    async with _login(live, live.platform.new_admin_key) as console:
        async with console.stream("GET", "/orgs/acme/events") as stream:
            one = await live.task("acme", agent=agent["id"], payload={"op": "echo"})
            start, seen = await _events(stream.aiter_lines(), 1)
        assert start is not None
        assert seen[0]["task"]["id"] == one["id"] and seen[0]["id"] > start
        last = seen[0]["id"]

        # while no stream is open, the task goes on and another is submitted
        await live.wait_task("acme", one["id"])
        two = await live.task("acme", agent=agent["id"], payload={"op": "echo"})
        await live.wait_task("acme", two["id"])

        async with console.stream(
            "GET", "/orgs/acme/events", headers={"Last-Event-ID": str(last)}
        ) as stream:
            _, missed = await _events(stream.aiter_lines(), 2)
        ids = [e["id"] for e in missed]
        assert ids == sorted(ids) and ids[0] == last + 1, ids
        tasks = {e["task"]["id"] for e in missed if e["kind"] == "task"}
        assert one["id"] in tasks or two["id"] in tasks

        # the API's own stream carries the same ids
        async with live.admin.stream(
            "GET", "/v1/orgs/acme/events", headers={"Last-Event-ID": str(last)}
        ) as stream:
            _, again = await _events(stream.aiter_lines(), 2)
        assert [e["id"] for e in again] == ids


async def test_bad_filters_are_named_and_search_finds_a_task(live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "worker")
    task = await live.task("acme", agent=agent["id"], payload={"op": "echo"})
    async with _login(live, live.platform.new_admin_key) as console:
        r = await console.get("/orgs/acme", params={"state": "sleeping"})
        assert r.status_code == 422 and "unknown state 'sleeping'" in html.unescape(r.text)
        r = await console.get("/orgs/acme", params={"cursor": "nonsense"})
        assert r.status_code == 422 and "invalid cursor 'nonsense'" in html.unescape(r.text)
        r = await console.get("/orgs/acme", params={"q": task["id"]})
        assert r.status_code == 303 and r.headers["location"] == f"/orgs/acme/tasks/{task['id']}"
        r = await console.get("/orgs/acme", params={"q": "task_0000000000ffffffffffffffff"})
        assert r.status_code == 404
        await live.wait_task("acme", task["id"])
        r = await console.get(f"/orgs/acme/tasks/{task['id']}")
        assert '<span id="attempts">1</span> of 5' in r.text  # the standard plan's attempts
        r = await console.post(
            f"/orgs/acme/agents/{agent['id']}/explode", headers={"origin": live.server.url}
        )
        assert r.status_code == 404 and "no action 'explode'" in html.unescape(r.text)


@pytest.mark.parametrize("pages", [3])
async def test_the_task_list_pages_with_a_cursor_and_keeps_its_filters(
    live: Live, pages: int
) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "worker")
    made = [
        (await live.task("acme", agent=agent["id"], payload={"op": "echo", "n": i}))["id"]
        for i in range(pages * 2)
    ]
    await eventually(lambda: _all_done(live, made), timeout=60, message="every echo task completed")
    async with _login(live, live.platform.new_admin_key) as console:
        seen: list[str] = []
        url: str | None = "/orgs/acme?state=completed&limit=2"
        while url:
            r = await console.get(url)
            assert r.status_code == 200
            rows = [m for m in made if f'id="task-{m}"' in r.text]
            assert len(rows) <= 2
            seen += rows
            url = None
            marker = 'id="next" href="'
            if marker in r.text:
                url = r.text.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&")
                assert "state=completed" in url and "limit=2" in url
        assert sorted(seen) == sorted(made) and len(seen) == len(made)


async def _all_done(live: Live, ids: list[str]) -> bool:
    r = await live.admin.get("/v1/orgs/acme/tasks", params={"state": "completed"})
    done = {t["id"] for t in r.json()["tasks"]}
    return all(i in done for i in ids)


async def test_the_admin_pages_through_the_orgs_by_name(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.api.console import lists

    monkeypatch.setattr(lists, "PAGE", 2)
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        await live.org(name)
    async with _login(live, live.platform.new_admin_key) as console:
        seen: list[str] = []
        url: str | None = "/"
        while url:
            r = await console.get(url)
            assert r.status_code == 200
            rows = r.text.count('<tr data-org="')
            assert 1 <= rows <= 2
            seen += [part.split('"', 1)[0] for part in r.text.split('<tr data-org="')[1:]]
            marker = 'id="next" href="'
            url = (
                html.unescape(r.text.split(marker, 1)[1].split('"', 1)[0])
                if marker in r.text
                else None
            )
        assert seen == ["alpha", "bravo", "charlie", "delta", "echo"]
        r = await console.get("/", params={"after": "Not A Name"})
        assert r.status_code == 422 and "invalid after" in r.text


async def test_ended_agents_are_hidden_until_asked_for_and_a_name_narrows_the_list(
    live: Live,
) -> None:
    await live.org("acme")
    keep = await live.agent("acme", "keeper")
    gone = await live.agent("acme", "goner")
    r = await live.admin.delete(f"/v1/orgs/acme/agents/{gone['id']}")
    assert r.status_code == 204
    async with _login(live, live.platform.new_admin_key) as console:
        page = (await console.get("/orgs/acme")).text
        assert f'id="agent-{keep["id"]}"' in page and f'id="agent-{gone["id"]}"' not in page
        page = (await console.get("/orgs/acme", params={"agents": "all"})).text
        assert f'id="agent-{keep["id"]}"' in page and f'id="agent-{gone["id"]}"' in page
        page = (await console.get("/orgs/acme", params={"agents": "terminated"})).text
        assert f'id="agent-{keep["id"]}"' not in page and f'id="agent-{gone["id"]}"' in page
        page = (await console.get("/orgs/acme", params={"agents": "all", "q": "goner"})).text
        assert f'id="agent-{keep["id"]}"' not in page and f'id="agent-{gone["id"]}"' in page
        page = (await console.get("/orgs/acme", params={"q": "100%_"})).text
        assert 'id="agent-' not in page  # LIKE wildcards are taken literally
        r = await console.get("/orgs/acme", params={"agents": "sleeping"})
        assert r.status_code == 422 and "unknown agents 'sleeping'" in html.unescape(r.text)


async def test_the_admins_list_of_orgs_follows_the_event_stream_and_refreshes_a_row(
    live: Live,
) -> None:
    acme, acme_key = await live.org("acme")
    await live.roles("acme", {"name": "worker", "maxAgents": 1, "onDemand": False})
    async with _login(live, live.platform.new_admin_key) as console:
        home = await console.get("/")
        assert home.status_code == 200
        marker = 'data-live="'
        assert marker in home.text, "the list of orgs follows a stream"
        stream_url = html.unescape(home.text.split(marker, 1)[1].split('"', 1)[0])
        assert stream_url.startswith("/events?after=")
        assert '<tr data-org="acme" id="org-acme">' in home.text
        assert '<td class="queued">0</td>' in home.text

        async with console.stream("GET", stream_url) as stream:
            await live.org("globex", plan="free")
            queued = await live.task("acme", role="worker", payload={"op": "echo"})
            _, seen = await _events(stream.aiter_lines(), 2)
        created = next(e for e in seen if e["kind"] == "org")
        assert (created["org"], created["change"], created["plan"]) == ("globex", "created", "free")
        assert created["namespace"] == "org-globex" and created["agentLimit"] >= 1
        task = next(e for e in seen if e["kind"] == "task")
        assert (task["org"], task["task"]["id"]) == ("acme", queued["id"])

        async def refreshed() -> dict[str, Any] | None:
            r = await console.get("/orgs/acme/figures")
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            body: dict[str, Any] = r.json()
            return body if body["queued"] == 1 else None

        figures = await eventually(refreshed, timeout=30, message="acme's queued task counted")
        assert figures == {
            "org": "acme",
            "plan": "standard",
            "namespace": "org-acme",
            "agents": 0,
            "agentLimit": figures["agentLimit"],
            "queued": 1,
        }
        again = await console.get("/")
        assert '<tr data-org="globex" id="org-globex">' in again.text

        r = await live.admin.delete("/v1/orgs/globex")
        assert r.status_code == 204
        async with console.stream("GET", stream_url) as stream:
            _, replay = await _events(stream.aiter_lines(), 3)
        assert [e["change"] for e in replay if e["kind"] == "org"] == ["created", "deleted"]

    async with acme_key, _login(live, acme["apiKey"]) as own:
        assert (await own.get("/orgs/acme/figures")).status_code == 200
        assert (await own.get("/orgs/globex/figures")).status_code == 404
