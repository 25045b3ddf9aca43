"""Databases for the db tests: a fresh SQLite file or a fresh PostgreSQL database (ICU collation) per
test, with no migrations applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shipyard.db.engine import make_engine
from tests.unit.db.databases import icu_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database, no migrations applied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shipyard.db'}"
    else:
        url = icu_database(request.getfixturevalue("postgres"))
    engine = make_engine(url)
    yield engine
    engine.dispose()
