"""``corral demo`` as a user runs it: the whole story on a throwaway platform, every step
checked by the demo itself, and the model gateway's section (a local stand-in provider,
metered calls, a budget refusal) saying what it showed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from corral.cli.demo import PROVIDER_KEY
from tests.support import CORRAL, corral_env

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
def test_the_demo_runs_to_the_end_and_shows_models_metered_and_a_budget_refusal(
    tmp_path: Path,
) -> None:
    r = subprocess.run(
        [*CORRAL, "demo"],
        env=corral_env() | {"TMPDIR": str(tmp_path), "COLUMNS": "240"},
        capture_output=True,
        text=True,
        timeout=380,
    )
    out = r.stdout
    assert r.returncode == 0, (out, r.stderr)
    assert "✓ everything stopped: no agent process, no nats-server left" in out
    assert "demo finished in" in out
    assert list(tmp_path.iterdir()) == []  # its data dir is gone too

    section = out[out.index("7. models through the gateway") : out.index("8. per-org figures")]
    assert re.search(r"a local stand-in for a provider .* at http://127\.0\.0\.1:\d+/v1", section)
    for line in (
        "✓ acme declared model small ($2/$8 per Mtok in/out); its provider key is the org "
        "secret provider-key",
        "✓ acme's manager (ctx.llm) got 2 completions and 1 stream: 'Hello from the stand-in "
        "model'",
        "the provider key is nowhere in it",
        "✓ the upstream saw only the provider key, added by the gateway",
        # 3 calls of 7 tokens in and 5 out at $2 and $8 per million tokens
        "✓ usage adds up exactly: tasks = role = org = 36 tokens, $0.000162 at the model's prices",
        "✓ the refusal is in acme's audit log",
        "✓ acme back on its plan's budget",
    ):
        assert line in section, section
    for scope in ("role manager", "org acme"):
        assert re.search(rf"{scope}\s+│ 3\s+│ 21\s+│ 15\s+│ 0\.000162", section), section

    budget = re.search(
        r"✓ a budget of (\d+) tokens for acme this month: (\d+) more calls admitted, the next "
        r"refused before it was sent:\n\s+BudgetExceeded: organization \S+ \d{4}-\d\d token "
        r"budget would be exceeded: (\d+) of (\d+) used or held, this call may use up to (\d+)",
        section,
    )
    assert budget, section
    limit, admitted, used, shown_limit, reservation = map(int, budget.groups())
    assert shown_limit == limit == 36 + 300
    assert used == 36 + 12 * admitted and used + reservation > limit
    spent = re.search(
        r"✓ no overspend: (\d+) of (\d+) tokens used, \$[\d.]+; the upstream got "
        r"(\d+) calls, the refused one never",
        section,
    )
    assert spent, section
    assert tuple(map(int, spent.groups())) == (used, limit, 3 + admitted)
    assert PROVIDER_KEY not in out + r.stderr
