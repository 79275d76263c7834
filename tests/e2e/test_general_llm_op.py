"""The built-in agent's ``llm`` operation refuses bad input with a reason naming the field, and
the task ends ``blocked`` (never retried); its calls through the gateway are tested with the
demo (tests/cli/test_demo.py) and the gateway's own tests."""

from __future__ import annotations

from tests.e2e.conftest import Live

BAD = [
    ({"op": "llm"}, "'model'"),
    ({"op": "llm", "model": ""}, "'model'"),
    ({"op": "llm", "model": "small", "calls": 0}, "'calls'"),
    ({"op": "llm", "model": "small", "calls": 101}, "'calls'"),
    ({"op": "llm", "model": "small", "calls": "2"}, "'calls'"),
    ({"op": "llm", "model": "small", "maxTokens": 0}, "'maxTokens'"),
]


async def test_bad_input_to_the_llm_operation_blocks_the_task_naming_the_field(
    live: Live,
) -> None:
    await live.org("acme")
    g = await live.agent("acme", "general")
    for payload, names in BAD:
        t = await live.task("acme", agent=g["id"], payload=payload)
        done = await live.wait_task("acme", t["id"])
        assert done["state"] == "blocked" and done["attempts"] == 1, (payload, done)
        said = str(done.get("result")) + " ".join(h["detail"] for h in done["history"])
        assert names in said, (payload, done)
