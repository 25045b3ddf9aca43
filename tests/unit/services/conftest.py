"""RegistryService over the in-memory blob store and a SQLite database in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.services.registry import RegistryService
from shipyard.storage.memory import MemoryBlobStore


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[MetadataStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'shipyard.db'}")
    migrate.upgrade(engine)
    yield MetadataStore(engine)
    engine.dispose()


@pytest.fixture
def store() -> MemoryBlobStore:
    return MemoryBlobStore()


@pytest.fixture
def service(metadata: MetadataStore, store: MemoryBlobStore) -> RegistryService:
    return RegistryService(metadata, store)
