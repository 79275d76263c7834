"""Kubernetes resource quantities with exact semantics.

A quantity is a non-negative decimal number with an optional suffix: binary (``Ki``, ``Mi``,
``Gi``, ``Ti``, ``Pi``, ``Ei``), decimal SI (``n``, ``u``, ``m``, ``k``, ``M``, ``G``, ``T``,
``P``, ``E``) or a decimal exponent (``1e3``, ``1.5E-3``). Values are held as exact fractions,
rounded up to nano units as Kubernetes does, and rendered canonically in the format they were
written in (``2000m`` renders ``2``; ``1536Mi`` renders ``1536Mi``; ``1.5Gi`` renders
``1536Mi``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from corral.domain.errors import InvalidInput

__all__ = ["Format", "Quantity", "parse", "ZERO"]


class Format(StrEnum):
    BINARY_SI = "BinarySI"
    DECIMAL_SI = "DecimalSI"
    DECIMAL_EXPONENT = "DecimalExponent"


_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_BY_EXP = {v: k for k, v in _DECIMAL.items()}
_BINARY_BY_EXP = {v: k for k, v in _BINARY.items()}

_PATTERN = re.compile(
    r"^\+?(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exp>[eE][+-]?[0-9]+)|(?P<dec>[numkMGTPE]?))$"
)
_NANO = Fraction(1, 10**9)
_MAX_EXPONENT = 30  # far beyond any real resource; guards against 1e999999 blowing up


@dataclass(frozen=True, slots=True)
class Quantity:
    """An exact, non-negative resource amount with the format it renders in."""

    value: Fraction
    format: Format = Format.DECIMAL_SI

    def __post_init__(self) -> None:
        if self.value < 0:
            raise InvalidInput(f"quantity must not be negative: {self.value}")

    @classmethod
    def parse(cls, text: str) -> Quantity:
        return parse(text)

    @classmethod
    def of(cls, value: int | Fraction, fmt: Format = Format.DECIMAL_SI) -> Quantity:
        return cls(_round_up_nano(Fraction(value)), fmt)

    # arithmetic and comparison are on the value; the left operand's format wins
    def __add__(self, other: Quantity) -> Quantity:
        return Quantity(self.value + other.value, self.format)

    def __sub__(self, other: Quantity) -> Quantity:
        return Quantity(max(Fraction(0), self.value - other.value), self.format)

    def __mul__(self, factor: int) -> Quantity:
        return Quantity(self.value * factor, self.format)

    def __lt__(self, other: Quantity) -> bool:
        return self.value < other.value

    def __le__(self, other: Quantity) -> bool:
        return self.value <= other.value

    def __gt__(self, other: Quantity) -> bool:
        return self.value > other.value

    def __ge__(self, other: Quantity) -> bool:
        return self.value >= other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Quantity({self.render()!r})"

    @property
    def milli(self) -> int:
        """The value in thousandths, rounded up (CPU millicores)."""
        return math.ceil(self.value * 1000)

    @property
    def units(self) -> int:
        """The value rounded up to a whole unit (bytes for memory)."""
        return math.ceil(self.value)

    def render(self) -> str:
        """The canonical text, as Kubernetes would print it."""
        v = self.value
        if v == 0:
            return "0"
        if self.format is Format.BINARY_SI and v.denominator == 1 and v >= 1024:
            n = v.numerator
            exp = 0
            while exp < 6 and n % 1024 == 0:
                n //= 1024
                exp += 1
            if exp:
                return f"{n}{_BINARY_BY_EXP[exp]}"
            return str(n)
        mantissa, exp10 = _decimal_parts(v)
        if self.format is Format.DECIMAL_EXPONENT:
            while exp10 % 3:
                mantissa *= 10
                exp10 -= 1
            return f"{mantissa}e{exp10}" if exp10 else str(mantissa)
        # decimal SI: the largest suffix with an integral mantissa
        while exp10 % 3:
            mantissa *= 10
            exp10 -= 1
        while exp10 > 18:
            mantissa *= 1000
            exp10 -= 3
        return f"{mantissa}{_DECIMAL_BY_EXP[exp10]}"


def _round_up_nano(v: Fraction) -> Fraction:
    if (v / _NANO).denominator == 1:
        return v
    return Fraction(math.ceil(v / _NANO)) * _NANO


def _decimal_parts(v: Fraction) -> tuple[int, int]:
    """v (a multiple of 1e-9) as mantissa * 10**exp with the largest exp."""
    n = int(v / _NANO)
    exp = -9
    while n % 10 == 0 and n:
        n //= 10
        exp += 1
    return n, exp


def parse(text: str) -> Quantity:
    """Parse a Kubernetes quantity.

    Raises:
        InvalidInput: the text is empty, negative or not a quantity (``1 gigabyte``).
    """
    if not isinstance(text, str):
        raise InvalidInput(f"quantity must be a string, got {type(text).__name__}")
    s = text.strip()
    m = _PATTERN.match(s)
    if not s or m is None:
        raise InvalidInput(
            f"invalid quantity {text!r}: expected a number with an optional suffix "
            "(e.g. 500m, 2, 1.5, 2Gi, 512Mi, 1e3)",
            details={"value": text},
        )
    number = Fraction(m.group("num") if not m.group("num").endswith(".") else m.group("num")[:-1])
    if m.group("bin") is not None:
        value = number * 1024 ** _BINARY[m.group("bin")]
        fmt = Format.BINARY_SI
    elif m.group("exp") is not None:
        exponent = int(m.group("exp")[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise InvalidInput(f"invalid quantity {text!r}: exponent out of range")
        value = number * Fraction(10) ** exponent
        fmt = Format.DECIMAL_EXPONENT
    else:
        value = number * Fraction(10) ** _DECIMAL[m.group("dec") or ""]
        fmt = Format.DECIMAL_SI
    return Quantity(_round_up_nano(value), fmt)


ZERO = Quantity(Fraction(0))
