"""Replicas need a store and a bus they all share: anything else is refused, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.control.leadership import check_replicable
from corral.domain.errors import InvalidInput
from corral.settings import Settings


def test_replicas_are_refused_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ha=True, nats_url="nats://127.0.0.1:1")
    with pytest.raises(InvalidInput, match="needs PostgreSQL.*writer lock"):
        check_replicable(settings)


def test_replicas_are_refused_without_an_external_nats(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, ha=True, database_url="postgresql://corral@127.0.0.1:1/corral"
    )
    with pytest.raises(InvalidInput, match="CORRAL_NATS_URL"):
        check_replicable(settings)


def test_postgresql_and_an_external_nats_make_replicas(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        ha=True,
        database_url="postgresql://corral@127.0.0.1:1/corral",
        nats_url="nats://127.0.0.1:1",
    )
    check_replicable(settings)  # nothing is contacted yet


def test_a_lease_must_last_some_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        Settings(data_dir=tmp_path, lease_seconds=0)
