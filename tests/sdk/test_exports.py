"""The SDK's public surface is exactly what agent programs import; a change here is deliberate."""

from __future__ import annotations

import corral.sdk


def test_the_sdk_exports_exactly_its_public_names() -> None:
    assert sorted(corral.sdk.__all__) == ["Agent", "AgentConfig", "Blocked", "TaskContext"]


def test_every_exported_name_is_defined_and_public() -> None:
    for name in corral.sdk.__all__:
        member = getattr(corral.sdk, name)
        assert member.__module__.startswith("corral.sdk.")
        assert not name.startswith("_")
