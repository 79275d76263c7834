"""Files the platform keeps are its own alone (0600/0700), whatever the sandbox: nothing in the
data dir is readable by another user."""

from __future__ import annotations

import stat

from tests.e2e.conftest import Live


async def test_nothing_in_the_data_dir_is_open_to_other_users(live: Live) -> None:
    _, _ = await live.org("acme")
    await live.agent("acme", "w")
    assert (live.data_dir / "api.url").exists()
    assert live.data_dir.stat().st_mode & 0o077 == 0
    open_to_others = []
    for path in [live.data_dir, *live.data_dir.rglob("*")]:
        if path.is_symlink() or "agents" in path.relative_to(live.data_dir).parts[:1]:
            continue  # agents' boxes have their own modes (the sandbox's tests)
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue  # removed since the listing (the bus compacts its stream files)
        if mode & 0o077:
            open_to_others.append(f"{path.relative_to(live.data_dir)} {mode:o}")
    assert open_to_others == [], "\n".join(open_to_others)
