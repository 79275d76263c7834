"""The sealing primitive: what is bound into the associated data cannot be moved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.domain.errors import Unavailable
from corral.vault import crypto

KEY = crypto.generate_key()


@given(st.binary(max_size=1024))
def test_sealed_data_opens_with_the_same_key_and_context(plaintext: bytes) -> None:
    aad = crypto.secret_aad("org_a", "github-token", 1)
    assert crypto.open_sealed(KEY, crypto.seal(KEY, plaintext, aad), aad, what="x") == plaintext


def test_each_seal_uses_a_fresh_nonce() -> None:
    aad = crypto.secret_aad("org_a", "n", 1)
    assert crypto.seal(KEY, b"same", aad) != crypto.seal(KEY, b"same", aad)


@pytest.mark.parametrize(
    "other",
    [
        crypto.secret_aad("org_b", "github-token", 1),
        crypto.secret_aad("org_a", "slack-webhook", 1),
        crypto.secret_aad("org_a", "github-token", 2),
        crypto.data_key_aad("org_a"),
    ],
)
def test_a_blob_does_not_open_in_another_context(other: bytes) -> None:
    blob = crypto.seal(KEY, b"value", crypto.secret_aad("org_a", "github-token", 1))
    with pytest.raises(Unavailable, match="does not decrypt") as caught:
        crypto.open_sealed(KEY, blob, other, what="secret")
    assert "value" not in str(caught.value).replace("does not", "")


def test_a_tampered_or_truncated_blob_fails_loudly() -> None:
    aad = crypto.data_key_aad("org_a")
    blob = bytearray(crypto.seal(KEY, b"value", aad))
    blob[-1] ^= 1
    with pytest.raises(Unavailable):
        crypto.open_sealed(KEY, bytes(blob), aad, what="x")
    with pytest.raises(Unavailable, match="not a sealed"):
        crypto.open_sealed(KEY, b"\x01short", aad, what="x")
    with pytest.raises(Unavailable):
        crypto.open_sealed(crypto.generate_key(), crypto.seal(KEY, b"v", aad), aad, what="x")


def test_associated_data_is_unambiguous() -> None:
    assert crypto.secret_aad("a", "b-c", 1) != crypto.secret_aad("a-b", "c", 1)
    assert crypto.secret_aad('a","b', "c", 1) != crypto.secret_aad("a", 'b","c', 1)


def test_fingerprints_are_stable_and_distinct() -> None:
    other = crypto.generate_key()
    assert crypto.fingerprint(KEY) == crypto.fingerprint(KEY)
    assert crypto.fingerprint(KEY) != crypto.fingerprint(other)
    assert KEY.hex() not in crypto.fingerprint(KEY)
