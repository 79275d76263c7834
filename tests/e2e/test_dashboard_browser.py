"""The dashboard in a real headless browser: what an operator and a tenant see, kept live by
the event stream while real agents work."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

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
        pytest.skip("no chromium binary on PATH: the dashboard browser test needs one")
    return found


@pytest.fixture
async def page(chromium: str, live: Live) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, chromium_sandbox=False, args=CHROMIUM_FLAGS
        )
        try:
            context = await browser.new_context()
            yield await context.new_page()
        finally:
            await browser.close()


async def _open(page: Any, live: Live, key: str) -> None:
    r = await page.goto(f"{live.server.url}/?key={key}")
    assert r is not None and r.status == 200
    # the page is live once its EventSource is open
    await page.wait_for_function("document.getElementById('live').textContent.includes('live')")


async def _section_orgs(page: Any) -> list[str]:
    orgs: list[str] = await page.eval_on_selector_all(
        "section.org", "els => els.map(e => e.dataset.org)"
    )
    return orgs


async def test_the_admin_page_lists_every_org_with_its_quota_bars(page: Any, live: Live) -> None:
    await live.org("acme", plan="standard")
    await live.org("globex", plan="enterprise")
    agent = await live.agent("acme", "worker")

    await _open(page, live, live.platform.new_admin_key)
    assert await page.title() == "Corral — all tenants"
    assert await _section_orgs(page) == ["acme", "globex"]
    for org, plan in (("acme", "standard"), ("globex", "enterprise")):
        section = page.locator(f'section.org[data-org="{org}"]')
        assert plan in await section.locator("h2").inner_text()
        bars = section.locator("table.quota .bar")
        assert await bars.count() == len(QUOTA_RESOURCES) + 1  # each resource and agents
        labels = await section.locator("table.quota td:first-child").all_inner_texts()
        assert labels == [*QUOTA_RESOURCES, "agents"]
    # acme's one running pod shows as a filled share of its bar, with the figures beside it
    pods = page.locator('section.org[data-org="acme"] table.quota tr', has_text="pods")
    assert "1 / 15" in await pods.inner_text()
    width = await pods.locator(".bar span").evaluate("e => e.style.width")
    assert width == "7%"
    row = page.locator(f"#agent-{agent['id']}")
    assert "running" in await row.inner_text()


async def test_a_tasks_progress_rises_live_until_it_completes(page: Any, live: Live) -> None:
    await live.org("acme")
    agent = await live.agent("acme", "sleeper")
    await _open(page, live, live.platform.new_admin_key)

    task = await live.task("acme", agent=agent["id"], payload={"op": "sleep", "seconds": 3})
    row = f"#task-{task['id']}"
    seen: list[int] = []

    async def progress_then_done() -> bool:
        cells: dict[str, str] | None = await page.evaluate(
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

    await eventually(progress_then_done, timeout=15, message="the task row completing")
    assert seen == sorted(seen), seen  # never goes back
    partial = [p for p in seen if 0 < p < 100]
    assert len(partial) >= 2, f"expected intermediate progress to show, saw {seen}"
    assert seen[-1] == 100
    # no reload happened: the row was filled in by the event stream
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1


async def test_an_org_keys_page_shows_nothing_of_another_org(page: Any, live: Live) -> None:
    acme, acme_client = await live.org("acme")
    await live.org("globex")
    async with acme_client:
        ours = await live.agent("acme", "worker")
        theirs = await live.agent("globex", "worker")
        before = await live.task("globex", agent=theirs["id"], payload={"op": "echo"})
        await live.wait_task("globex", before["id"])

        await _open(page, live, acme["apiKey"])
        assert await page.title() == "Corral — acme"
        assert await _section_orgs(page) == ["acme"]
        # globex busy while the page is live; acme's own task is the sentinel that updates came
        during = await live.task(
            "globex", agent=theirs["id"], payload={"op": "sleep", "seconds": 1}
        )
        mine = await live.task("acme", agent=ours["id"], payload={"op": "sleep", "seconds": 1})
        await live.wait_task("globex", during["id"])
        await eventually(
            lambda: page.locator(f"#task-{mine['id']}").count(),
            message="acme's task on acme's page",
        )
        await live.wait_task("acme", mine["id"])

        html = await page.content()
        assert ours["id"] in html and mine["id"] in html
        for foreign in ("globex", theirs["id"], before["id"], during["id"]):
            assert foreign not in html, foreign
        assert await page.locator('section.org[data-org="globex"]').count() == 0
