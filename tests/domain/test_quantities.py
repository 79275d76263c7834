from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.domain.errors import InvalidInput
from corral.domain.quantities import Quantity, parse


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("500m", Fraction(1, 2), "500m"),
        ("2Gi", 2 * 1024**3, "2Gi"),
        ("1.5", Fraction(3, 2), "1500m"),
        ("1e3", 1000, "1e3"),
        ("128974848", 128974848, "128974848"),
        ("1Ki", 1024, "1Ki"),
        ("2000m", 2, "2"),
        ("1.5Gi", 1536 * 1024**2, "1536Mi"),
        ("40Gi", 40 * 1024**3, "40Gi"),
        ("0", 0, "0"),
        ("1k", 1000, "1k"),
        ("0.1n", Fraction(1, 10**9), "1n"),
    ],
)
def test_parses_kubernetes_quantities_exactly(text: str, value: object, canonical: str) -> None:
    q = parse(text)
    assert q.value == value
    assert q.render() == canonical


@pytest.mark.parametrize("text", ["1 gigabyte", "-1", "", " ", "abc", "1.2.3", "Gi", "1GB", "1e"])
def test_rejects_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid quantity"):
        parse(text)


def test_compares_and_adds_across_formats() -> None:
    assert parse("1") == parse("1000m")
    assert parse("1Gi") > parse("1G")
    assert (parse("500m") + parse("1.5")).render() == "2"
    assert (parse("1Gi") + parse("512Mi")).render() == "1536Mi"


SUFFIXES = ["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti"]


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(SUFFIXES))
def test_render_parses_back_to_the_same_value(n: int, suffix: str) -> None:
    q = parse(f"{n}{suffix}")
    assert parse(q.render()) == q


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(SUFFIXES),
)
def test_addition_is_exact_and_commutative(a: int, b: int, suffix: str) -> None:
    qa, qb = parse(f"{a}{suffix}"), parse(f"{b}{suffix}")
    assert (qa + qb).value == qa.value + qb.value
    assert qa + qb == qb + qa
    assert (qa + qb >= qa) and (qa + qb >= qb)


@given(st.text(max_size=12))
def test_parse_either_succeeds_non_negative_or_raises_invalid_input(text: str) -> None:
    try:
        q = parse(text)
    except InvalidInput:
        return
    assert q.value >= 0


def test_negative_values_cannot_be_built() -> None:
    with pytest.raises(InvalidInput):
        Quantity(Fraction(-1))
