"""Settings read from the environment: the proxies whose X-Forwarded-For is believed."""

from __future__ import annotations

import pydantic
import pytest

from corral.settings import Settings


def test_trusted_proxies_are_addresses_or_networks_from_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().trusted_proxies == ()  # none by default: the header is never believed
    monkeypatch.setenv("CORRAL_TRUSTED_PROXIES", " 10.0.0.5, 10.1.2.3/16 ,::1")
    assert Settings().trusted_proxies == ("10.0.0.5", "10.1.0.0/16", "::1")


def test_a_trusted_proxy_that_is_not_an_address_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_TRUSTED_PROXIES", "10.0.0.5,proxy.example")
    with pytest.raises(pydantic.ValidationError, match="'proxy.example'"):
        Settings()
