import pytest

from corral.domain.errors import InvalidInput
from corral.domain.tenancy import validate_slug


@pytest.mark.parametrize("name", ["acme", "acme-corp", "a", "0rg", "x" * 59])
def test_valid_names(name: str) -> None:
    assert validate_slug(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Bad_Name!", "DNS-1123"),
        ("-acme", "DNS-1123"),
        ("acme-", "DNS-1123"),
        ("ACME", "DNS-1123"),
        ("a.b", "DNS-1123"),
        ("acme\n", "DNS-1123"),
        ("", "empty"),
        ("x" * 60, "at most 59"),
    ],
)
def test_invalid_names_say_what_is_wrong(name: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        validate_slug(name)
