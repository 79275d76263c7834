"""Model endpoints an organization declares for the gateway, and what a call costs.

An org admin names a model (``gpt-small``), where it is served (an OpenAI-compatible base URL),
which vault secret holds the provider key (by name: the key itself never leaves the vault
except into the gateway's upstream request) and, optionally, the upstream's own model name and
prices. Prices are kept as integers — micro-dollars per million tokens, which is the same
number as picodollars per token — so that costs add up exactly, call by call, on every backend.
No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from corral.domain.errors import InvalidInput

__all__ = [
    "PICO_PER_DOLLAR",
    "MeteredCall",
    "ModelEndpoint",
    "Usage",
    "format_dollars",
    "parse_dollars",
    "parse_price",
    "validate_base_url",
    "validate_model_name",
]

#: Costs are integers of picodollars (1e-12 USD): a price of $X per million tokens is
#: X * 1e6 picodollars per token, whole for any price given to the micro-dollar.
PICO_PER_DOLLAR = 10**12
_PRICE_MICRO = 10**6
_MAX_PRICE_DOLLARS = Decimal(1_000_000)  # per million tokens: far above any real price
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def validate_model_name(name: object) -> str:
    """A model name as agents send it (``gpt-4o-mini``, ``llama3.1:8b``, ``org/model``).

    Raises:
        InvalidInput: not 1-128 letters, digits and ``. _ : / -``, starting alphanumeric.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"model name {name!r} must be 1-128 characters of letters, digits and '._:/-', "
            "starting with a letter or digit",
            details={"field": "name"},
        )
    return name


def validate_base_url(url: object) -> str:
    """An http(s) base URL without credentials, query or fragment; no trailing slash.

    Raises:
        InvalidInput: another scheme, no host, or user info / query / fragment in it.
    """
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidInput("base URL must be a string of at most 2000 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"base URL {url!r} must be http:// or https:// with a host",
            details={"field": "baseUrl"},
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(
            "base URL must not carry credentials, a query or a fragment: the key goes in "
            "--key-secret",
            details={"field": "baseUrl"},
        )
    return url.rstrip("/")


def parse_dollars(text: object, *, what: str) -> int:
    """Dollars (``"12.5"``, ``0.15``) as whole picodollars.

    Raises:
        InvalidInput: not a number, negative, or finer than a picodollar.
    """
    try:
        value = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidInput(f"{what} {text!r} is not an amount of dollars") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{what} must be a non-negative amount of dollars, got {text!r}")
    pico = value * PICO_PER_DOLLAR
    if pico != pico.to_integral_value():
        raise InvalidInput(f"{what} {text!r} is finer than a picodollar")
    return int(pico)


def parse_price(text: object, *, what: str) -> int:
    """A price in dollars per million tokens, as micro-dollars per million tokens.

    Raises:
        InvalidInput: not a number, negative, above $1,000,000/Mtok or finer than $0.000001.
    """
    try:
        value = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidInput(
            f"{what} {text!r} is not a price in dollars per million tokens"
        ) from None
    if not value.is_finite() or value < 0 or value > _MAX_PRICE_DOLLARS:
        raise InvalidInput(f"{what} must be between 0 and 1000000 dollars per million tokens")
    micro = value * _PRICE_MICRO
    if micro != micro.to_integral_value():
        raise InvalidInput(f"{what} {text!r} is finer than a micro-dollar per million tokens")
    return int(micro)


def format_dollars(pico: int) -> str:
    """Picodollars as a dollar amount without trailing zeros (``"0.000015"``)."""
    text = format(Decimal(pico) / PICO_PER_DOLLAR, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used, as the upstream reported them."""

    tokens_in: int
    tokens_out: int

    @property
    def total(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(frozen=True, slots=True)
class ModelEndpoint:
    org_id: str
    name: str
    base_url: str
    key_secret: str
    upstream_model: str
    price_in: int = 0  # micro-dollars per million input tokens (= picodollars per token)
    price_out: int = 0  # micro-dollars per million output tokens
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def cost(self, usage: Usage) -> int:
        """What ``usage`` costs, in picodollars."""
        return usage.tokens_in * self.price_in + usage.tokens_out * self.price_out

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "baseUrl": self.base_url,
            "keySecret": self.key_secret,
            "upstreamModel": self.upstream_model,
            "priceIn": format_dollars(self.price_in * _PRICE_MICRO),
            "priceOut": format_dollars(self.price_out * _PRICE_MICRO),
            "createdAt": self.created_at.isoformat() if self.created_at else None,
            "updatedAt": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True, slots=True)
class MeteredCall:
    """One model call as metered: who made it, for which task, on which model, and its cost."""

    org_id: str
    role: str
    agent_id: str
    task_id: str | None
    model: str
    usage: Usage
    cost: int  # picodollars
    at: datetime
