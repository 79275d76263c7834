"""The console in a real headless browser against a whole running platform: logging in and
out, each page, each action, live updates from the event stream while real agents work, an
org key that sees nothing of another org, and no key in any URL the browser asks for."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.api.console.session import COOKIE
from corral.domain.plans import QUOTA_RESOURCES
from tests.e2e.conftest import Live
from tests.support import eventually

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed: no browser test"
)

# The system chromium, headless, touching no network but the page's (no first-run, sync,
# component updates or background fetches); Playwright gives it a fresh profile directory.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium binary on PATH: the console browser test needs one")
    return found


class Browser:
    """One page in a fresh browser context, with every URL it requested."""

    def __init__(self, page: Any, context: Any) -> None:
        self.page = page
        self.context = context
        self.urls: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))


@pytest.fixture
async def browser(chromium: str, live: Live) -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as pw:
        chrome = await pw.chromium.launch(
            executable_path=chromium, headless=True, chromium_sandbox=False, args=CHROMIUM_FLAGS
        )
        try:
            context = await chrome.new_context()
            yield Browser(await context.new_page(), context)
        finally:
            await chrome.close()


async def _login(b: Browser, live: Live, key: str) -> None:
    await b.page.goto(f"{live.server.url}/")
    assert b.page.url.endswith("/login")
    await b.page.fill('input[name="key"]', key)
    await b.page.click("#login button")
    await b.page.wait_for_load_state()
    assert not b.page.url.endswith("/login"), await b.page.content()


async def _live(b: Browser) -> None:
    """The page is live once its EventSource is open. Polled from here: a predicate the page
    evaluates is refused by the console's CSP (no 'unsafe-eval') whenever it has to be
    evaluated more than once."""
    await _state(b, "#live", "live")


async def _state(b: Browser, selector: str, want: str, *, timeout: float = 30) -> None:
    async def shows() -> bool:
        return want in await b.page.locator(selector).inner_text()

    await eventually(shows, timeout=timeout, message=f"{selector} showing {want}")


async def test_logging_in_keeps_the_key_in_an_http_only_cookie_and_out_of_every_url(
    browser: Browser, live: Live
) -> None:
    key = live.platform.new_admin_key
    await browser.page.goto(f"{live.server.url}/login")
    await browser.page.fill('input[name="key"]', "ck_wrong.wrong")
    await browser.page.click("#login button")
    assert "API key" in await browser.page.locator(".err").inner_text()

    await _login(browser, live, key)
    assert await browser.page.title() == "Corral — all tenants"
    cookies = {c["name"]: c for c in await browser.context.cookies()}
    assert cookies[COOKIE]["httpOnly"] is True
    assert cookies[COOKIE]["sameSite"] == "Strict"
    assert await browser.page.evaluate("document.cookie") == ""  # the page's script can't read it

    await browser.page.click("#logout")
    await browser.page.wait_for_url("**/login")
    assert COOKIE not in {c["name"] for c in await browser.context.cookies()}
    await browser.page.goto(f"{live.server.url}/")
    assert browser.page.url.endswith("/login")
    assert browser.urls and not any(key in u or "key=" in u for u in browser.urls)


async def test_the_admin_opens_an_org_with_its_quota_charts_agents_and_tasks(
    browser: Browser, live: Live
) -> None:
    await live.org("acme", plan="standard")
    await live.org("globex", plan="enterprise")
    agent = await live.agent("acme", "worker")
    task = await live.task("acme", agent=agent["id"], payload={"op": "echo"})
    await live.wait_task("acme", task["id"])

    await _login(browser, live, live.platform.new_admin_key)
    orgs = await browser.page.eval_on_selector_all(
        "#orgs tbody tr", "rows => rows.map(r => r.dataset.org)"
    )
    assert orgs == ["acme", "globex"]
    assert "enterprise" in await browser.page.locator('tr[data-org="globex"]').inner_text()

    await browser.page.click('#orgs a:text-is("acme")')
    await browser.page.wait_for_url("**/orgs/acme")
    await _live(browser)
    section = browser.page.locator('section.org[data-org="acme"]')
    labels = await section.locator("table.quota td:first-child").all_inner_texts()
    assert labels == [*QUOTA_RESOURCES, "agents"]
    pods = section.locator("table.quota tr", has_text="pods")
    assert "1 / 15" in await pods.inner_text()
    assert await pods.locator(".bar span").evaluate("e => e.style.width") == "7%"
    for chart in ("depth", "throughput", "latency"):
        assert await browser.page.locator(f"#chart-{chart} svg polyline").count() == 1
    ended = await browser.page.locator("#chart-throughput").get_attribute("data-values")
    assert ended is not None and sum(float(v) for v in ended.split(",")) >= 1
    assert "running" in await browser.page.locator(f"#agent-{agent['id']}").inner_text()
    assert "completed" in await browser.page.locator(f"#task-{task['id']}").inner_text()

    # filters narrow the list; the filter form keeps what was chosen
    await browser.page.select_option("#f-state", "failed")
    await browser.page.click("#filters button")
    await browser.page.wait_for_url("**state=failed**")
    assert await browser.page.locator(f"#task-{task['id']}").count() == 0
    await browser.page.fill('input[name="q"]', task["id"])
    await browser.page.select_option("#f-state", "")
    await browser.page.click("#filters button")
    await browser.page.wait_for_url(f"**/tasks/{task['id']}")


async def test_a_tasks_progress_rises_live_until_it_completes(browser: Browser, live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "sleeper")
    await _login(browser, live, live.platform.new_admin_key)
    await browser.page.goto(f"{live.server.url}/orgs/acme")
    await _live(browser)

    task = await live.task("acme", agent=agent["id"], payload={"op": "sleep", "seconds": 3})
    row = f"#task-{task['id']}"
    seen: list[int] = []

    async def progress_then_done() -> bool:
        cells: dict[str, str] | None = await browser.page.evaluate(
            """sel => { const r = document.querySelector(sel); return r && {
                 pct: r.querySelector('.pct').textContent,
                 state: r.querySelector('.state').textContent } }""",
            row,
        )
        if cells is None:
            return False
        pct = int(cells["pct"].rstrip("%"))
        if not seen or seen[-1] != pct:
            seen.append(pct)
        return cells["state"] == "completed"

    await eventually(progress_then_done, timeout=30, message="the task row completing")
    assert seen == sorted(seen), seen  # never goes back
    assert len([p for p in seen if 0 < p < 100]) >= 2, f"no intermediate progress in {seen}"
    assert seen[-1] == 100
    # no reload happened: the row was filled in by the event stream
    assert await browser.page.evaluate("performance.getEntriesByType('navigation').length") == 1


async def test_a_delegated_tasks_page_shows_payload_result_history_and_its_child(
    browser: Browser, live: Live
) -> None:
    await live.org("acme")
    manager = await live.agent("acme", "mgr", role="manager")
    await live.agent("acme", "wrk", role="worker")
    parent = await live.task(
        "acme",
        agent=manager["id"],
        payload={
            "op": "delegate",
            "role": "worker",
            "payload": {"op": "wordcount", "text": "a b a"},
        },
    )
    done = await live.wait_task("acme", parent["id"])
    assert done["state"] == "completed", done

    await _login(browser, live, live.platform.new_admin_key)
    await browser.page.goto(f"{live.server.url}/orgs/acme/tasks/{parent['id']}")
    assert "completed" in await browser.page.locator("#task-state").inner_text()
    assert '"wordcount"' in await browser.page.locator("#payload").inner_text()
    assert '"words": 3' in await browser.page.locator("#result").inner_text()
    history = await browser.page.locator("#history tbody tr").all_inner_texts()
    assert [h.split("\t")[2].strip() for h in history][:1] == ["queued"]
    assert "completed" in history[-1]
    took = await browser.page.locator("#history td.took").all_inner_texts()
    assert all(t.endswith(("ms", "s", "min", "h")) for t in took[:-1]), took
    assert "no model calls" in await browser.page.locator("#model-usage").inner_text()
    assert await browser.page.locator("#cancel").count() == 0  # it ended: nothing to cancel

    children = browser.page.locator("#children tbody tr")
    assert await children.count() == 1
    await children.locator("a").first.click()
    await browser.page.wait_for_load_state()
    assert await browser.page.locator("#parent").inner_text() == parent["id"]


async def test_cancelling_a_task_from_its_page(browser: Browser, live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "sleeper")
    task = await live.task("acme", agent=agent["id"], payload={"op": "sleep", "seconds": 600})
    await _login(browser, live, live.platform.new_admin_key)
    await browser.page.goto(f"{live.server.url}/orgs/acme/tasks/{task['id']}")
    await _live(browser)
    await browser.page.click("#cancel")
    await browser.page.wait_for_load_state()
    await _state(browser, "#task-state", "cancelled")
    r = await live.admin.get(f"/v1/orgs/acme/tasks/{task['id']}")
    assert r.json()["state"] == "cancelled"


async def test_pausing_resuming_and_terminating_an_agent_from_its_page(
    browser: Browser, live: Live
) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "worker")
    page = f"{live.server.url}/orgs/acme/agents/{agent['id']}"
    await _login(browser, live, live.platform.new_admin_key)
    await browser.page.goto(page)
    await _live(browser)
    assert "running" in await browser.page.locator("#agent-state").inner_text()
    states = await browser.page.locator("#agent-history td .state").all_inner_texts()
    assert states[:2] == ["provisioning", "running"]
    await eventually(
        lambda: browser.page.locator("#log-state").inner_text(),
        timeout=30,
        message="the log loaded",
    )
    assert await browser.page.locator("#log-state").inner_text() == "live"

    await browser.page.click("#pause")
    await browser.page.wait_for_load_state()

    async def paused() -> bool:
        await browser.page.goto(page)
        return "paused" in await browser.page.locator("#agent-state").inner_text()

    await eventually(paused, timeout=30, message="the agent paused")
    await browser.page.click("#resume")
    await browser.page.wait_for_load_state()

    async def running() -> bool:
        await browser.page.goto(page)
        return "running" in await browser.page.locator("#agent-state").inner_text()

    await eventually(running, timeout=30, message="the agent running again")
    states = await browser.page.locator("#agent-history td .state").all_inner_texts()
    assert states[-4:] == ["pausing", "paused", "resuming", "running"], states

    await browser.page.click("#terminate")
    await browser.page.wait_for_load_state()
    await _state(browser, "#agent-state", "terminated")
    r = await live.admin.get(f"/v1/orgs/acme/agents/{agent['id']}")
    assert r.json()["state"] == "terminated"
    assert not any("key=" in u for u in browser.urls)


async def test_an_org_keys_console_shows_nothing_of_another_org(
    browser: Browser, live: Live
) -> None:
    acme, _ = await live.org("acme")
    await live.org("globex")
    ours = await live.agent("acme", "worker")
    theirs = await live.agent("globex", "worker")
    before = await live.task("globex", agent=theirs["id"], payload={"op": "echo"})
    await live.wait_task("globex", before["id"])

    await _login(browser, live, acme["apiKey"])
    await browser.page.wait_for_url("**/orgs/acme")
    assert await browser.page.title() == "Corral — acme"
    await _live(browser)
    during = await live.task("globex", agent=theirs["id"], payload={"op": "sleep", "seconds": 1})
    mine = await live.task("acme", agent=ours["id"], payload={"op": "sleep", "seconds": 1})
    await live.wait_task("globex", during["id"])
    await eventually(
        lambda: browser.page.locator(f"#task-{mine['id']}").count(),
        message="acme's task on acme's page",
    )
    await live.wait_task("acme", mine["id"])
    html = await browser.page.content()
    assert ours["id"] in html and mine["id"] in html
    for foreign in ("globex", theirs["id"], before["id"], during["id"]):
        assert foreign not in html, foreign

    for path in (
        "/orgs/globex",
        f"/orgs/globex/tasks/{before['id']}",
        f"/orgs/acme/tasks/{before['id']}",
        f"/orgs/globex/agents/{theirs['id']}",
        f"/orgs/acme/agents/{theirs['id']}",
    ):
        r = await browser.page.goto(f"{live.server.url}{path}")
        assert r is not None and r.status == 404, path
        assert "not found" in await browser.page.locator("#error").inner_text()
    assert not any(acme["apiKey"] in u for u in browser.urls)


async def test_the_admins_list_of_orgs_updates_live(browser: Browser, live: Live) -> None:
    await live.org("bravo")
    await live.roles("bravo", {"name": "worker", "maxAgents": 1, "onDemand": False})
    await _login(browser, live, live.platform.new_admin_key)
    assert browser.page.url.rstrip("/") == live.server.url
    await _live(browser)
    assert await browser.page.locator("#org-bravo .queued").inner_text() == "0"

    await live.task("bravo", role="worker", payload={"op": "echo"})  # waits: nobody runs it
    await _state(browser, "#org-bravo .queued", "1")
    await live.org("alpha", plan="free")  # sorts before bravo: it joins the page above it
    await _state(browser, "#org-alpha .plan", "free")
    order = await browser.page.evaluate(
        "Array.from(document.querySelectorAll('#orgs tbody tr')).map(r => r.dataset.org)"
    )
    assert order == ["alpha", "bravo"]
    assert (await live.admin.delete("/v1/orgs/alpha")).status_code == 204

    async def gone() -> bool:
        shown: int = await browser.page.locator("#org-alpha").count()
        return shown == 0

    await eventually(gone, timeout=30, message="the deleted org's row leaving the list")
    # no reload happened: the rows were kept by the event stream
    assert await browser.page.evaluate("performance.getEntriesByType('navigation').length") == 1
